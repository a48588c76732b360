-- 0016_run_liveness: a playbook run's holder session (0015) is named by registry.run_holder_name, and whether the
-- run is alive has one home, registry.run_is_alive, used by registry_tenant's hold and by the runner's recovery pass (a move whose tenant a live
-- run holds is that run's to finish, however long it rests between steps: pool_drain.yml places every tenant
-- before it moves the first).
-- And the lease fence locks the lease row FOR KEY SHARE instead of FOR SHARE: a takeover changes the token (a
-- key) and still waits for writes in flight under the old one, while the holder's renewals (expires_at only) no
-- longer wait behind its own playbook's open transactions.

CREATE FUNCTION registry.run_holder_name(run_id text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp
RETURN left('saasodoo-run ' || run_id, 63);  -- PostgreSQL keeps 63 bytes of an application_name
COMMENT ON FUNCTION registry.run_holder_name(text) IS
    'The application_name of a playbook run''s holder session (set by the saasodoo_audit callback).';

CREATE FUNCTION registry.run_is_alive(holder_pid integer, run_id text) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
RETURN EXISTS (
    SELECT 1 FROM pg_catalog.pg_stat_activity AS a
     WHERE a.pid = holder_pid AND a.application_name = registry.run_holder_name(run_id));
COMMENT ON FUNCTION registry.run_is_alive(integer, text) IS
    'Whether the run''s holder session (application_name ''saasodoo-run <run id>'') is still this backend.';

CREATE FUNCTION registry.tenant_run_is_alive(tenant_id text) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
RETURN EXISTS (
    SELECT 1 FROM registry.tenant_runs AS r
     WHERE r.tenant_id = tenant_run_is_alive.tenant_id AND registry.run_is_alive(r.holder_pid, r.run_id));
COMMENT ON FUNCTION registry.tenant_run_is_alive(text) IS 'Whether a live playbook run has the tenant now.';

CREATE OR REPLACE FUNCTION registry.lease_fence() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    held text := nullif(current_setting('saasodoo.lease', true), '');
BEGIN
    IF held IS NULL THEN
        RETURN NULL;  -- not a leased session: an operator's playbook, the webhook, a periodic pass
    END IF;
    PERFORM 1 FROM registry.account_leases AS l WHERE l.token = held::bigint FOR KEY SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'fenced: lease % is no longer held (another worker took the account over); % not written',
            held, TG_TABLE_NAME
            USING ERRCODE = 'SAF01',
                  HINT = 'The worker that holds the account now decides again from Kill Bill; nothing to do by hand.';
    END IF;
    RETURN NULL;
END
$$;

INSERT INTO registry.schema_migrations (version, name) VALUES (16, '0016_run_liveness');
