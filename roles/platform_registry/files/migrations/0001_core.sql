-- 0001_core: the migration ledger and the platform's core records.
--
-- House rules for every migration file (tasks/migrations.yml):
--   * it runs as the registry owner, inside the one transaction of its batch: no BEGIN/COMMIT,
--     nothing that cannot run in a transaction (CREATE INDEX CONCURRENTLY, ...);
--   * it ends by inserting its own row into registry.schema_migrations;
--   * it contains no percent sign (psycopg would read one as a placeholder).

-- The ledger is part of the first migration, so the whole schema history lives in these files.
CREATE TABLE registry.schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE registry.schema_migrations IS 'Ledger of applied schema migrations (roles/platform_registry/files/migrations).';

-- Keeps updated_at honest on tables whose rows change in place.
CREATE FUNCTION registry.touch_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END
$$;

CREATE TABLE registry.plans (
    name           text NOT NULL CHECK (name <> ''),
    version        integer NOT NULL CHECK (version > 0),
    effective_from timestamptz NOT NULL DEFAULT now(),
    db_type        text NOT NULL CHECK (db_type IN ('shared', 'dedicated')),
    entitlements   jsonb NOT NULL,
    PRIMARY KEY (name, version),
    -- db_type always comes from the entitlements, never from the plan's name.
    CONSTRAINT plans_db_type_from_entitlements CHECK (entitlements ->> 'db_type' = db_type)
);
COMMENT ON TABLE registry.plans IS 'Plan catalog: one row per version of a plan''s entitlements, synced from the inventory; never updated or deleted.';

CREATE TABLE registry.db_servers (
    name                text PRIMARY KEY CHECK (name <> ''),
    -- Owned by the inventory (platform_registry_db_servers):
    kind                text NOT NULL CHECK (kind IN ('shared', 'dedicated')),
    host                text NOT NULL,
    port                integer NOT NULL CHECK (port BETWEEN 1 AND 65535),
    pgbouncer_host      text,
    pgbouncer_port      integer CHECK (pgbouncer_port BETWEEN 1 AND 65535),
    pg_major            integer NOT NULL,
    capacity_tenants    integer NOT NULL CHECK (capacity_tenants > 0),
    capacity_storage_gb integer NOT NULL CHECK (capacity_storage_gb > 0),
    -- Owned by the platform (placement, pool_drain, health checks):
    status              text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'draining', 'retired')),
    health              text NOT NULL DEFAULT 'unknown' CHECK (health IN ('healthy', 'unhealthy', 'unknown')),
    health_checked_at   timestamptz,
    dedicated_to        text,  -- the tenant a dedicated server was made for; foreign key below
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    UNIQUE (host, port),
    CHECK ((pgbouncer_host IS NULL) = (pgbouncer_port IS NULL)),
    CHECK (dedicated_to IS NULL OR kind = 'dedicated')
);
COMMENT ON TABLE registry.db_servers IS 'PostgreSQL servers tenant databases live on: shared pools and dedicated servers.';
CREATE TRIGGER db_servers_touch BEFORE UPDATE ON registry.db_servers
    FOR EACH ROW EXECUTE FUNCTION registry.touch_updated_at();

CREATE TABLE registry.tenants (
    tenant_id          text PRIMARY KEY CHECK (tenant_id <> ''),
    customer_id        text,  -- Kill Bill account id
    subscription_id    text,  -- Kill Bill subscription id
    plan_name          text NOT NULL,
    plan_version       integer NOT NULL,
    -- Where the database is now; differs from the plan's db_type while a move is pending.
    db_type            text NOT NULL CHECK (db_type IN ('shared', 'dedicated')),
    db_server          text REFERENCES registry.db_servers (name),  -- NULL until placed
    db_name            text UNIQUE,  -- kept across moves: Odoo names the filestore after it
    db_role            text UNIQUE,
    status             text NOT NULL DEFAULT 'provisioning'
                       CHECK (status IN ('provisioning', 'active', 'suspended', 'terminated', 'purged', 'failed')),
    billing_status     text,
    storage_path       text,
    quotas             jsonb NOT NULL DEFAULT '{}',
    -- Input of the derived password; bumped to rotate it. No password is stored anywhere.
    credential_version integer NOT NULL DEFAULT 1 CHECK (credential_version > 0),
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    retain_until       timestamptz,  -- a terminated tenant's data is kept until then
    FOREIGN KEY (plan_name, plan_version) REFERENCES registry.plans (name, version)
);
COMMENT ON TABLE registry.tenants IS 'Odoo tenants: Kill Bill ids, plan version, where the database lives, lifecycle and billing status.';
CREATE INDEX tenants_db_server_idx ON registry.tenants (db_server);
CREATE INDEX tenants_subscription_idx ON registry.tenants (subscription_id);
CREATE INDEX tenants_customer_idx ON registry.tenants (customer_id);
CREATE TRIGGER tenants_touch BEFORE UPDATE ON registry.tenants
    FOR EACH ROW EXECUTE FUNCTION registry.touch_updated_at();

-- db_servers and tenants point at each other, so this key comes after both tables.
ALTER TABLE registry.db_servers
    ADD CONSTRAINT db_servers_dedicated_to_fkey FOREIGN KEY (dedicated_to) REFERENCES registry.tenants (tenant_id);

CREATE TABLE registry.placements (
    id            bigserial PRIMARY KEY,
    tenant_id     text NOT NULL REFERENCES registry.tenants (tenant_id),
    decided_at    timestamptz NOT NULL DEFAULT now(),
    policy        text NOT NULL,
    inputs        jsonb NOT NULL DEFAULT '{}',
    candidates    jsonb NOT NULL DEFAULT '[]',  -- every server considered, and why it was refused
    chosen_server text REFERENCES registry.db_servers (name),  -- NULL when nothing fitted
    reason        text NOT NULL
);
COMMENT ON TABLE registry.placements IS 'Every placement decision with its inputs, candidates and reason.';
CREATE INDEX placements_tenant_idx ON registry.placements (tenant_id, id);

INSERT INTO registry.schema_migrations (version, name) VALUES (1, '0001_core');
