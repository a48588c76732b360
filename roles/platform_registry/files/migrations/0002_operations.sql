-- 0002_operations: tenant database moves, the Kill Bill inbox and the runner's jobs.

CREATE TABLE registry.migrations (
    id                bigserial PRIMARY KEY,
    tenant_id         text NOT NULL REFERENCES registry.tenants (tenant_id),
    source_server     text NOT NULL REFERENCES registry.db_servers (name),
    target_server     text REFERENCES registry.db_servers (name),  -- NULL until preflight placed it
    method            text NOT NULL CHECK (method IN ('logical', 'dump')),
    phase             text NOT NULL,
    phase_history     jsonb NOT NULL DEFAULT '[]',  -- one entry per phase entered, with its time
    started_at        timestamptz NOT NULL DEFAULT now(),
    finished_at       timestamptz,
    write_downtime_ms integer CHECK (write_downtime_ms >= 0),
    verification      jsonb,
    error             text,
    CHECK (target_server IS DISTINCT FROM source_server)
);
COMMENT ON TABLE registry.migrations IS 'Moves of a tenant database between servers: phases, timings, verification (not schema migrations).';
-- At most one unfinished move per tenant: a killed run resumes it instead of starting another.
CREATE UNIQUE INDEX migrations_one_open_per_tenant ON registry.migrations (tenant_id) WHERE finished_at IS NULL;

CREATE TABLE registry.events (
    id           bigserial PRIMARY KEY,
    received_at  timestamptz NOT NULL DEFAULT now(),
    -- The five fields of Kill Bill's notification body; metaData arrives as JSON inside a string.
    event_type   text NOT NULL,
    object_type  text NOT NULL,
    object_id    text,
    account_id   text,
    meta_data    jsonb,
    -- The platform tenant the event concerns, once the runner resolved it (NULL for account-wide events).
    tenant_id    text,
    body         jsonb NOT NULL,
    processed_at timestamptz
);
COMMENT ON TABLE registry.events IS 'Kill Bill inbox: every accepted notification, stored before the webhook answers.';
-- Workers take events in order per tenant; the unprocessed ones are the work queue.
CREATE INDEX events_tenant_idx ON registry.events (tenant_id, id);
CREATE INDEX events_unprocessed_idx ON registry.events (id) WHERE processed_at IS NULL;

CREATE TABLE registry.jobs (
    id            bigserial PRIMARY KEY,
    -- No foreign key: the job that provisions a tenant comes before its tenants row.
    tenant_id     text,
    event_id      bigint REFERENCES registry.events (id),
    action        text NOT NULL,
    playbook      text NOT NULL,
    extravars     jsonb NOT NULL DEFAULT '{}',  -- never secrets: playbooks derive credentials themselves
    state         text NOT NULL DEFAULT 'queued'
                  CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'parked')),
    attempts      integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    run_after     timestamptz NOT NULL DEFAULT now(),  -- backoff: not picked up before this
    created_at    timestamptz NOT NULL DEFAULT now(),
    started_at    timestamptz,
    finished_at   timestamptz,
    rc            integer,
    error         text,
    artifacts_dir text
);
COMMENT ON TABLE registry.jobs IS 'Runner jobs: one playbook run per row, retried with backoff, parked when it keeps failing.';
CREATE INDEX jobs_runnable_idx ON registry.jobs (state, run_after);
CREATE INDEX jobs_tenant_idx ON registry.jobs (tenant_id, id);
CREATE INDEX jobs_event_idx ON registry.jobs (event_id);
-- One job at a time per tenant, whichever worker runs it.
CREATE UNIQUE INDEX jobs_one_running_per_tenant ON registry.jobs (tenant_id) WHERE state = 'running';

INSERT INTO registry.schema_migrations (version, name) VALUES (2, '0002_operations');
