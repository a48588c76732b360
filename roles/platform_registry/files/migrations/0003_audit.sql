-- 0003_audit: the append-only, hash-chained audit trail (event -> decision -> job -> result).
--
-- Each row stores the hash of the row before it (prev_hash) and its own
--   hash = sha256(prev_hash || convert_to(registry.audit_row_text(row), 'UTF8'))
-- with an empty prev_hash for the first row. Changing or removing any row breaks every hash after it;
-- registry.audit_chain_breaks() recomputes the chain and lists where it breaks.
--
-- The chain order is the id order. The insert trigger takes a transaction-scoped advisory lock, then
-- draws the id and reads the latest row: writers queue on the lock until the previous one commits,
-- so ids and links agree. This is why id has no column default (a default would draw the id before
-- the lock). The unique indexes are a backstop: a writer that read a stale head (e.g. in a
-- REPEATABLE READ transaction that started before the previous writer committed) fails instead of
-- forking the chain.

CREATE SEQUENCE registry.audit_id_seq AS bigint;

CREATE TABLE registry.audit (
    id        bigint PRIMARY KEY,  -- set by the trigger from registry.audit_id_seq
    at        timestamptz NOT NULL DEFAULT now(),  -- set by the trigger: when it was recorded
    actor     text NOT NULL,  -- who acted: webhook, worker name, ops user, module
    tenant_id text,
    kind      text NOT NULL,  -- event, decision, job, result, ...
    subject   text,  -- what it is about, e.g. 'event:42', 'job:7'
    detail    jsonb NOT NULL DEFAULT '{}',
    prev_hash bytea,  -- set by the trigger
    hash      bytea NOT NULL  -- set by the trigger
);
ALTER SEQUENCE registry.audit_id_seq OWNED BY registry.audit.id;
COMMENT ON TABLE registry.audit IS 'Append-only, hash-chained audit trail; registry.audit_chain_breaks() checks it.';
CREATE INDEX audit_tenant_idx ON registry.audit (tenant_id, id);
CREATE UNIQUE INDEX audit_prev_hash_key ON registry.audit (prev_hash);
CREATE UNIQUE INDEX audit_one_first_row ON registry.audit ((true)) WHERE prev_hash IS NULL;

-- The canonical text a row is hashed over: jsonb's text form (keys in a fixed order, fixed spacing),
-- with the time in UTC so the session's TimeZone does not change it.
CREATE FUNCTION registry.audit_row_text(a registry.audit) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'id', a.id,
        'at', to_char(a.at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
        'actor', a.actor,
        'tenant_id', a.tenant_id,
        'kind', a.kind,
        'subject', a.subject,
        'detail', a.detail)::text
$$;

CREATE FUNCTION registry.audit_chain() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    previous bytea;
BEGIN
    -- One writer at a time until it commits; the key is the table's oid.
    PERFORM pg_advisory_xact_lock(TG_RELID::bigint);
    NEW.id := nextval('registry.audit_id_seq');
    NEW.at := now();
    SELECT a.hash INTO previous FROM registry.audit AS a ORDER BY a.id DESC LIMIT 1;
    NEW.prev_hash := previous;
    NEW.hash := sha256(coalesce(previous, ''::bytea) || convert_to(registry.audit_row_text(NEW), 'UTF8'));
    RETURN NEW;
END
$$;

CREATE TRIGGER audit_chain BEFORE INSERT ON registry.audit
    FOR EACH ROW EXECUTE FUNCTION registry.audit_chain();

-- Statement-level, so an UPDATE or DELETE that matches no row is refused too.
CREATE FUNCTION registry.audit_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING
        ERRCODE = 'insufficient_privilege',
        MESSAGE = 'registry.audit is append-only: ' || TG_OP || ' refused';
END
$$;

CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON registry.audit
    FOR EACH STATEMENT EXECUTE FUNCTION registry.audit_refuse_change();

-- Rows whose link or hash does not match a recomputation of the chain; none on an intact trail.
CREATE FUNCTION registry.audit_chain_breaks() RETURNS TABLE (audit_id bigint, problem text)
LANGUAGE sql STABLE AS $$
    SELECT a.id,
           CASE WHEN a.prev_hash IS DISTINCT FROM l.expected_prev THEN 'prev_hash is not the previous row''s hash'
                ELSE 'hash does not match the row' END
    FROM registry.audit AS a
    JOIN (SELECT id, lag(hash) OVER (ORDER BY id) AS expected_prev FROM registry.audit) AS l USING (id)
    WHERE a.prev_hash IS DISTINCT FROM l.expected_prev
       OR a.hash <> sha256(coalesce(a.prev_hash, ''::bytea) || convert_to(registry.audit_row_text(a), 'UTF8'))
    ORDER BY a.id
$$;

INSERT INTO registry.schema_migrations (version, name) VALUES (3, '0003_audit');
