-- 0006_runner: what the webhook runner (webhook_runner/, docs/runner.md) needs beyond the inbox and job tables
-- of 0002. Work is per Kill Bill account: every event of an account is a trigger to read that account
-- back from Kill Bill and converge its tenants, so events are queued by account_id, and a job remembers
-- the account it converges.

ALTER TABLE registry.events
    ADD COLUMN outcome text;  -- what the worker made of it: the jobs it led to, or why none
COMMENT ON COLUMN registry.events.outcome IS 'Set with processed_at: the jobs the event led to, or why it needed none.';
-- The worker's queue: unprocessed events in arrival order per account.
CREATE INDEX events_account_queue_idx ON registry.events (account_id, id) WHERE processed_at IS NULL;

ALTER TABLE registry.jobs
    ADD COLUMN account_id text,  -- the Kill Bill account the job converges
    ADD COLUMN worker text,  -- who ran (or is running) it: host and pid
    ADD COLUMN reason text;  -- why the job exists: the Kill Bill state that asked for it, or why it was skipped
-- 'skipped': stored and acknowledged with no action (unknown event type, unknown plan, superseded).
ALTER TABLE registry.jobs DROP CONSTRAINT jobs_state_check;
ALTER TABLE registry.jobs ADD CONSTRAINT jobs_state_check
    CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'parked', 'skipped'));
CREATE INDEX jobs_account_idx ON registry.jobs (account_id, id);
CREATE INDEX jobs_due_idx ON registry.jobs (run_after) WHERE state = 'queued';

INSERT INTO registry.schema_migrations (version, name) VALUES (6, '0006_runner');
