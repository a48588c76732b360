-- 0018_schedules: the runner's periodic jobs (webhook_runner/schedules.py). One row per schedule; a worker runs
-- a schedule's job when next_run_at has come, and claims it by moving next_run_at one interval past its own now in
-- the same UPDATE, so however many workers and hosts look at once, each due time gives one job. A run that
-- missed several intervals (the runner was down) runs once, and the next is one interval after it.

CREATE TABLE registry.schedules (
    name             text PRIMARY KEY,
    interval_seconds double precision NOT NULL CHECK (interval_seconds > 0),
    next_run_at      timestamptz NOT NULL,
    last_run_at      timestamptz,  -- the due time the last claim was made at (the claimer's now)
    last_job_id      bigint REFERENCES registry.jobs (id) ON DELETE SET NULL  -- what that claim ran or queued
);
COMMENT ON TABLE registry.schedules IS
    'The runner''s periodic jobs: each is run once per interval, by whichever worker claims its due time first.';

INSERT INTO registry.schema_migrations (version, name) VALUES (18, '0018_schedules');
