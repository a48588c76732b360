-- 0004_placement: what db_placement needs to decide fast and never overfill a server.
--
-- tenant_count and storage_committed_gb are kept by a trigger on registry.tenants, so placement
-- reads one row per server (locked FOR UPDATE) instead of counting tenants on every decision.
-- A tenant occupies its server until it is purged.

-- A server placement has just created (a grown pool, a dedicated server) until it is up.
ALTER TABLE registry.db_servers DROP CONSTRAINT db_servers_status_check;
ALTER TABLE registry.db_servers ADD CONSTRAINT db_servers_status_check
    CHECK (status IN ('provisioning', 'active', 'draining', 'retired'));

ALTER TABLE registry.db_servers
    ADD COLUMN tenant_count integer NOT NULL DEFAULT 0 CHECK (tenant_count >= 0),
    ADD COLUMN storage_committed_gb integer NOT NULL DEFAULT 0 CHECK (storage_committed_gb >= 0);
COMMENT ON COLUMN registry.db_servers.tenant_count IS 'Tenants placed here and not purged; kept by registry.count_tenants_on_servers().';
COMMENT ON COLUMN registry.db_servers.storage_committed_gb IS 'Sum of those tenants'' storage quotas (quotas.storage_gb).';

CREATE FUNCTION registry.count_tenants_on_servers() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') AND OLD.db_server IS NOT NULL AND OLD.status <> 'purged' THEN
        UPDATE registry.db_servers
           SET tenant_count = tenant_count - 1,
               storage_committed_gb = storage_committed_gb - coalesce((OLD.quotas ->> 'storage_gb')::integer, 0)
         WHERE name = OLD.db_server;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') AND NEW.db_server IS NOT NULL AND NEW.status <> 'purged' THEN
        UPDATE registry.db_servers
           SET tenant_count = tenant_count + 1,
               storage_committed_gb = storage_committed_gb + coalesce((NEW.quotas ->> 'storage_gb')::integer, 0)
         WHERE name = NEW.db_server;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER tenants_count_on_servers
    AFTER INSERT OR DELETE OR UPDATE OF db_server, status, quotas ON registry.tenants
    FOR EACH ROW EXECUTE FUNCTION registry.count_tenants_on_servers();

UPDATE registry.db_servers AS s
   SET tenant_count = c.tenants, storage_committed_gb = c.storage_gb
  FROM (SELECT db_server,
               count(*) AS tenants,
               coalesce(sum((quotas ->> 'storage_gb')::integer), 0) AS storage_gb
          FROM registry.tenants
         WHERE db_server IS NOT NULL AND status <> 'purged'
         GROUP BY db_server) AS c
 WHERE s.name = c.db_server;

INSERT INTO registry.schema_migrations (version, name) VALUES (4, '0004_placement');
