-- 0009_retention: the runner's housekeeping pass deletes old, finished work (events, jobs, placements older
-- than its retention_days). What deleted rows counted in /metrics is kept here, so the counters Prometheus
-- scrapes never go down: a metric's value is these totals plus what the live rows count.

CREATE TABLE registry.runner_totals (
    metric text NOT NULL,  -- events_received_by_type, job_duration_count, job_duration_sum, job_duration_le
    label  text NOT NULL,  -- the event type; the action; for job_duration_le, '<action> <bucket bound>'
    value  double precision NOT NULL DEFAULT 0 CHECK (value >= 0),
    PRIMARY KEY (metric, label)
);
COMMENT ON TABLE registry.runner_totals IS 'What the rows the runner pruned counted in its /metrics counters.';

-- The pass finds old rows by these.
CREATE INDEX events_received_idx ON registry.events (received_at) WHERE processed_at IS NOT NULL;
CREATE INDEX jobs_finished_idx ON registry.jobs (finished_at) WHERE state IN ('succeeded', 'skipped', 'failed');
CREATE INDEX placements_decided_idx ON registry.placements (decided_at);

INSERT INTO registry.schema_migrations (version, name) VALUES (9, '0009_retention');
