-- 0028_tenant_os_ids: each tenant's OS user and group id (process runtime), given by the registry and never again:
-- a purged tenant's id is no later tenant's (what it left anywhere stays nobody's), and a tenant has one id on
-- every runtime host and on the shared CephFS. Above the ids Debian hands out (system users below 1000, people
-- below 60000) and its first subordinate ranges (from 100000, 65536 per user: a runtime host keeps those below
-- 2000000). A purged tenant's new life gets a new one (placement).
CREATE SEQUENCE registry.tenant_os_id_seq AS integer START WITH 2000000 NO CYCLE;
ALTER TABLE registry.tenants ADD COLUMN os_id integer UNIQUE DEFAULT nextval('registry.tenant_os_id_seq');
ALTER SEQUENCE registry.tenant_os_id_seq OWNED BY registry.tenants.os_id;
COMMENT ON COLUMN registry.tenants.os_id IS
    'The uid and gid of the tenant''s OS user and group on the runtime hosts (process runtime); never reused.';

INSERT INTO registry.schema_migrations (version, name) VALUES (28, '0028_tenant_os_ids');
