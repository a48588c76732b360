-- 0010_job_limits: the runner's per-server limits (settings job_limits, e.g. at most 2 plan changes at once per
-- PostgreSQL server). A job starts only while fewer jobs of its action run on its tenant's server; otherwise it
-- waits in the queue, and /metrics shows it waiting by limit.

ALTER TABLE registry.jobs
    ADD COLUMN db_server text,     -- the tenant's database server when the job started (null: a new tenant)
    ADD COLUMN waiting_for text,   -- set while a limit holds the queued job back: which one
    ADD COLUMN waits integer NOT NULL DEFAULT 0;  -- how many times a limit held it back
COMMENT ON COLUMN registry.jobs.db_server IS 'The tenant''s server when the job started: what job_limits count.';
COMMENT ON COLUMN registry.jobs.waiting_for IS 'The limit holding this queued job back (null when none does).';
COMMENT ON COLUMN registry.jobs.waits IS 'How many times a job limit held this job back.';

-- The count each start makes: the jobs running, by action and server.
CREATE INDEX jobs_running_idx ON registry.jobs (action, db_server) WHERE state = 'running';

INSERT INTO registry.schema_migrations (version, name) VALUES (10, '0010_job_limits');
