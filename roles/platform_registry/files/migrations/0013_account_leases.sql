-- 0013_account_leases: a worker takes a Kill Bill account with a lease row instead of a session advisory lock.
-- A session lock lives on one connection: a registry restart (or a dropped connection) frees it while the
-- worker's playbook still runs, and a second worker then runs the same job. A lease lives in a table: it survives
-- restarts, its holder renews it (a heartbeat) before expires_at, and a worker may take it over only once it has
-- expired. Each take draws a new fencing token; the holder's sessions carry it in the setting saasodoo.lease
-- (the worker's own, and every module session of the playbook it runs), and registry.lease_fence() refuses any
-- write from a session whose token is no longer the account's. So a worker that lost its lease, and the playbook
-- it started, cannot write what the new holder is deciding.

CREATE SEQUENCE registry.lease_token_seq;

CREATE TABLE registry.account_leases (
    account_id text PRIMARY KEY,  -- the Kill Bill account ('' for events that name none)
    worker     text NOT NULL,
    token      bigint NOT NULL UNIQUE,  -- from lease_token_seq: each take has a new, larger one
    taken_at   timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);
COMMENT ON TABLE registry.account_leases IS
    'Which worker handles a Kill Bill account now, until when, and the fencing token its writes must carry.';

-- Statement level, before the write: one indexed lookup per statement. FOR SHARE holds the lease row until the
-- writing transaction ends, so a takeover (an UPDATE of that row) waits for it: no write lands after the token
-- changed.
CREATE FUNCTION registry.lease_fence() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    held text := nullif(current_setting('saasodoo.lease', true), '');
BEGIN
    IF held IS NULL THEN
        RETURN NULL;  -- not a leased session: an operator's playbook, the webhook, a periodic pass
    END IF;
    PERFORM 1 FROM registry.account_leases AS l WHERE l.token = held::bigint FOR SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'fenced: lease % is no longer held (another worker took the account over); % not written',
            held, TG_TABLE_NAME
            USING ERRCODE = 'SAF01',
                  HINT = 'The worker that holds the account now decides again from Kill Bill; nothing to do by hand.';
    END IF;
    RETURN NULL;
END
$$;

DO $$
DECLARE
    fenced text;
BEGIN
    FOREACH fenced IN ARRAY ARRAY['tenants', 'placements', 'migrations', 'backups', 'restores', 'db_servers',
                                  'events', 'jobs', 'audit']
    LOOP
        EXECUTE format('CREATE TRIGGER lease_fence BEFORE INSERT OR UPDATE OR DELETE ON registry.%I'
                       ' FOR EACH STATEMENT EXECUTE FUNCTION registry.lease_fence()', fenced);
    END LOOP;
END
$$;

INSERT INTO registry.schema_migrations (version, name) VALUES (13, '0013_account_leases');
