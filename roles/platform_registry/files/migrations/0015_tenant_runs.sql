-- 0015_tenant_runs: one playbook run per tenant at a time, for the whole run. A tenant playbook's first registry
-- read (saasodoo.platform.registry_tenant, hold_seconds) takes its tenant for the run; another run's waits until
-- that run ends. A run is alive while its holder session is: the saasodoo_audit callback keeps one registry
-- session open for each run (application_name 'saasodoo-run <run id>'), in the ansible-playbook
-- process itself, so the session ends when the run ends, however it ends (a killed run's is closed by the kernel).
-- A row whose holder session is gone is free: there is nothing to release by hand.

CREATE TABLE registry.tenant_runs (
    tenant_id      text PRIMARY KEY,
    run_id         text NOT NULL,  -- the audit trail's run (registry.audit subject 'run:<run id>')
    -- The holder session's backend. It is alive while pg_stat_activity shows this pid with the run's
    -- application_name (its backend_start is hidden from other roles; a pid used again is another run's).
    holder_pid     integer NOT NULL,
    taken_at       timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE registry.tenant_runs IS
    'The playbook run that has each tenant now (while its holder session lives: pg_stat_activity).';
CREATE INDEX tenant_runs_run_idx ON registry.tenant_runs (run_id);

INSERT INTO registry.schema_migrations (version, name) VALUES (15, '0015_tenant_runs');
