-- 0011_audit_runs: every playbook run is audited as a run (plugins/callback/saasodoo_audit.py writes a `run` row
-- when it starts and one when it ends, subject 'run:<run id>'), and the rows a run's modules write name it.
-- A module's registry session carries the run id in the setting saasodoo.audit_run (module_utils/registry.py
-- sets it from the module's audit_run option); the chain's trigger copies it into the row's detail as 'run'
-- before hashing, so no writer has to remember to and the hash covers the link.

CREATE OR REPLACE FUNCTION registry.audit_chain() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    previous bytea;
    run text := nullif(current_setting('saasodoo.audit_run', true), '');
BEGIN
    -- One writer at a time until it commits; the key is the table's oid.
    PERFORM pg_advisory_xact_lock(TG_RELID::bigint);
    NEW.id := nextval('registry.audit_id_seq');
    NEW.at := now();
    IF run IS NOT NULL AND NOT NEW.detail ? 'run' THEN
        NEW.detail := NEW.detail || jsonb_build_object('run', run);
    END IF;
    SELECT a.hash INTO previous FROM registry.audit AS a ORDER BY a.id DESC LIMIT 1;
    NEW.prev_hash := previous;
    NEW.hash := sha256(coalesce(previous, ''::bytea) || convert_to(registry.audit_row_text(NEW), 'UTF8'));
    RETURN NEW;
END
$$;

-- A run's rows (registry_audit.yml); a tenant's last run comes from audit_tenant_idx.
CREATE INDEX audit_run_idx ON registry.audit ((detail ->> 'run'), id) WHERE detail ? 'run';

INSERT INTO registry.schema_migrations (version, name) VALUES (11, '0011_audit_runs');
