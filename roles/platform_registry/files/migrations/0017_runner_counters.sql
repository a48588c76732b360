-- 0017_runner_counters: /metrics reads counters the registry keeps up to date as rows change, instead of counting
-- whole tables at each scrape (events and finished jobs grow until the housekeeping pass prunes them). Triggers
-- on events and jobs change the counters in the same transaction as the rows, so a scrape never sees one
-- without the other, and pruning deletes rows without touching what a counter counted (runner_totals, which
-- kept what pruned rows had counted, is folded in and dropped).

-- No write lands between the seeding below and the triggers: a runner still running the previous release keeps
-- writing while site.yml migrates (it is converged after the registry).
LOCK TABLE registry.events, registry.jobs, registry.runner_totals IN EXCLUSIVE MODE;

CREATE TABLE registry.runner_counters (
    metric text NOT NULL,  -- events_received (label: event type), events_pending (label ''), jobs (label: state)
    label  text NOT NULL,
    value  bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (metric, label)
);
COMMENT ON TABLE registry.runner_counters IS
    'The runner''s /metrics figures, kept by triggers on events and jobs: events_received only grows; events_pending and jobs (by state) are the rows there are now.';

-- The bounds of the job duration histogram, in seconds: its one home (webhook_runner/metrics.py reads them).
CREATE FUNCTION registry.job_duration_bounds() RETURNS float8[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp
RETURN '{1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800}'::float8[];

CREATE TABLE registry.job_durations (
    action  text PRIMARY KEY,
    count   bigint NOT NULL DEFAULT 0,  -- runs that succeeded
    seconds double precision NOT NULL DEFAULT 0,  -- their run time, summed
    at_most bigint[] NOT NULL  -- how many took at most each bound of registry.job_duration_bounds()
);
COMMENT ON TABLE registry.job_durations IS
    'Run time of jobs that succeeded, by action, as a histogram: counted when a job becomes succeeded, kept when it is pruned.';

-- Statement level with transition tables, so a pruning DELETE of many rows changes each counter once. PostgreSQL
-- allows one event per such trigger, and a statement may name only the transition tables its event has: one
-- branch per event. Counters are upserted in key order, so two writers never lock them in opposite orders.
CREATE FUNCTION registry.add_to_counters(metrics text[], labels text[], deltas bigint[]) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    INSERT INTO registry.runner_counters AS c (metric, label, value)
    SELECT change.metric, change.label, sum(change.delta)
      FROM unnest(metrics, labels, deltas) AS change(metric, label, delta)
     GROUP BY change.metric, change.label
    HAVING sum(change.delta) <> 0
     ORDER BY change.metric, change.label
    ON CONFLICT (metric, label) DO UPDATE SET value = c.value + EXCLUDED.value;
END;

CREATE FUNCTION registry.count_events() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM registry.add_to_counters(array_agg(c.metric), array_agg(c.label), array_agg(c.delta))
           FROM (SELECT 'events_received' AS metric, n.event_type AS label, 1::bigint AS delta FROM new_rows AS n
                 UNION ALL
                 SELECT 'events_pending', '', 1 FROM new_rows AS n WHERE n.processed_at IS NULL) AS c;
    ELSIF TG_OP = 'UPDATE' THEN
        PERFORM registry.add_to_counters(array_agg(c.metric), array_agg(c.label), array_agg(c.delta))
           FROM (SELECT 'events_pending' AS metric, '' AS label, 1::bigint AS delta
                   FROM new_rows AS n WHERE n.processed_at IS NULL
                 UNION ALL
                 SELECT 'events_pending', '', -1 FROM old_rows AS o WHERE o.processed_at IS NULL) AS c;
    ELSE
        PERFORM registry.add_to_counters(array_agg(c.metric), array_agg(c.label), array_agg(c.delta))
           FROM (SELECT 'events_pending' AS metric, '' AS label, -1::bigint AS delta
                   FROM old_rows AS o WHERE o.processed_at IS NULL) AS c;
    END IF;
    RETURN NULL;
END
$$;

CREATE FUNCTION registry.count_jobs() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM registry.add_to_counters(array_agg('jobs'::text), array_agg(n.state), array_agg(1::bigint))
           FROM new_rows AS n;
    ELSIF TG_OP = 'UPDATE' THEN
        PERFORM registry.add_to_counters(array_agg('jobs'::text), array_agg(c.state), array_agg(c.delta))
           FROM (SELECT n.state, 1::bigint AS delta FROM new_rows AS n
                 UNION ALL
                 SELECT o.state, -1 FROM old_rows AS o) AS c;
    ELSE
        PERFORM registry.add_to_counters(array_agg('jobs'::text), array_agg(o.state), array_agg(-1::bigint))
           FROM old_rows AS o;
    END IF;
    RETURN NULL;
END
$$;

-- A TRUNCATE (the owner's; the application role may not) leaves no row to count.
CREATE FUNCTION registry.count_nothing_left() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    UPDATE registry.runner_counters AS c SET value = 0
     WHERE (TG_TABLE_NAME = 'events' AND c.metric = 'events_pending') OR (TG_TABLE_NAME = 'jobs' AND c.metric = 'jobs');
    RETURN NULL;
END
$$;

-- Row level: a job is timed once, when it becomes succeeded (a replayed job that succeeds again ran again).
CREATE FUNCTION registry.time_job() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    took float8 := extract(epoch FROM NEW.finished_at - NEW.started_at);
BEGIN
    INSERT INTO registry.job_durations AS d (action, count, seconds, at_most)
    VALUES (NEW.action, 1, took,
            ARRAY(SELECT (took <= b.bound)::int::bigint
                    FROM unnest(registry.job_duration_bounds()) WITH ORDINALITY AS b(bound, n) ORDER BY b.n))
    ON CONFLICT (action) DO UPDATE SET
        count = d.count + 1,
        seconds = d.seconds + EXCLUDED.seconds,
        at_most = ARRAY(SELECT x.was + x.more
                          FROM unnest(d.at_most, EXCLUDED.at_most) WITH ORDINALITY AS x(was, more, n) ORDER BY x.n);
    RETURN NULL;
END
$$;

-- What the rows there are count now, plus what pruned rows counted (runner_totals), before the triggers exist:
-- the migration runs in one transaction.
INSERT INTO registry.runner_counters (metric, label, value)
SELECT 'events_received', t.event_type, sum(t.n)::bigint
  FROM (SELECT e.event_type, count(*)::float8 AS n FROM registry.events AS e GROUP BY 1
        UNION ALL
        SELECT r.label, r.value FROM registry.runner_totals AS r WHERE r.metric = 'events_received_by_type') AS t
 GROUP BY t.event_type
UNION ALL
SELECT 'events_pending', '', count(*) FROM registry.events AS e WHERE e.processed_at IS NULL
UNION ALL
SELECT 'jobs', j.state, count(*) FROM registry.jobs AS j GROUP BY j.state;

INSERT INTO registry.job_durations (action, count, seconds, at_most)
SELECT a.action,
       coalesce(live.n, 0) + coalesce((SELECT r.value FROM registry.runner_totals AS r
                                        WHERE r.metric = 'job_duration_count' AND r.label = a.action), 0),
       coalesce(live.total, 0) + coalesce((SELECT r.value FROM registry.runner_totals AS r
                                            WHERE r.metric = 'job_duration_sum' AND r.label = a.action), 0),
       ARRAY(SELECT coalesce((SELECT count(*) FROM registry.jobs AS j
                               WHERE j.action = a.action AND j.state = 'succeeded'
                                 AND extract(epoch FROM j.finished_at - j.started_at) <= b.bound), 0)
                    + coalesce((SELECT r.value FROM registry.runner_totals AS r
                                 WHERE r.metric = 'job_duration_le'  -- label '<action> <bound>'
                                   AND regexp_replace(r.label, ' [^ ]*$', '') = a.action
                                   AND substring(r.label FROM ' ([^ ]*)$')::float8 = b.bound), 0)
               FROM unnest(registry.job_duration_bounds()) WITH ORDINALITY AS b(bound, n) ORDER BY b.n)::bigint[]
  FROM (SELECT j.action FROM registry.jobs AS j WHERE j.state = 'succeeded' AND j.finished_at IS NOT NULL
           AND j.started_at IS NOT NULL
        UNION
        SELECT r.label FROM registry.runner_totals AS r WHERE r.metric = 'job_duration_count') AS a
  LEFT JOIN (SELECT j.action, count(*) AS n, sum(extract(epoch FROM j.finished_at - j.started_at)) AS total
               FROM registry.jobs AS j
              WHERE j.state = 'succeeded' AND j.finished_at IS NOT NULL AND j.started_at IS NOT NULL
              GROUP BY j.action) AS live ON live.action = a.action;

DROP TABLE registry.runner_totals;

CREATE TRIGGER count_inserted AFTER INSERT ON registry.events REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION registry.count_events();
CREATE TRIGGER count_updated AFTER UPDATE ON registry.events REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION registry.count_events();
CREATE TRIGGER count_deleted AFTER DELETE ON registry.events REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION registry.count_events();
CREATE TRIGGER count_inserted AFTER INSERT ON registry.jobs REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION registry.count_jobs();
CREATE TRIGGER count_updated AFTER UPDATE ON registry.jobs REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION registry.count_jobs();
CREATE TRIGGER count_deleted AFTER DELETE ON registry.jobs REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION registry.count_jobs();
CREATE TRIGGER count_truncated AFTER TRUNCATE ON registry.events
    FOR EACH STATEMENT EXECUTE FUNCTION registry.count_nothing_left();
CREATE TRIGGER count_truncated AFTER TRUNCATE ON registry.jobs
    FOR EACH STATEMENT EXECUTE FUNCTION registry.count_nothing_left();
CREATE TRIGGER time_succeeded AFTER INSERT ON registry.jobs FOR EACH ROW
    WHEN (NEW.state = 'succeeded' AND NEW.started_at IS NOT NULL AND NEW.finished_at IS NOT NULL)
    EXECUTE FUNCTION registry.time_job();
CREATE TRIGGER time_succeeded_now AFTER UPDATE OF state ON registry.jobs FOR EACH ROW
    WHEN (OLD.state <> 'succeeded' AND NEW.state = 'succeeded'
          AND NEW.started_at IS NOT NULL AND NEW.finished_at IS NOT NULL)
    EXECUTE FUNCTION registry.time_job();

INSERT INTO registry.schema_migrations (version, name) VALUES (17, '0017_runner_counters');
