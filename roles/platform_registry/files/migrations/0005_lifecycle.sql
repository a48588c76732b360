-- 0005_lifecycle: what the tenant lifecycle playbooks record beyond the status: where a tenant's Odoo
-- listens (process runtime), its backups with their manifests, and the restores made from them.

ALTER TABLE registry.tenants
    ADD COLUMN http_port integer UNIQUE CHECK (http_port BETWEEN 1 AND 65535);
COMMENT ON COLUMN registry.tenants.http_port IS 'Port of the tenant''s Odoo on its runtime host (process runtime); allocated once, kept until purge.';

CREATE TABLE registry.backups (
    backup_id       text PRIMARY KEY CHECK (backup_id <> ''),  -- <tenant_id>-<UTC time>, also its directory name
    tenant_id       text NOT NULL REFERENCES registry.tenants (tenant_id),
    kind            text NOT NULL CHECK (kind IN ('manual', 'final')),
    taken_at        timestamptz NOT NULL DEFAULT now(),
    location        text NOT NULL,  -- directory holding the parts and manifest.json
    db_name         text NOT NULL,
    plan_name       text NOT NULL,
    bytes           bigint NOT NULL CHECK (bytes >= 0),
    manifest_sha256 text NOT NULL,  -- sha256 of manifest.json, which holds the sha256 of every part
    removed_at      timestamptz  -- set when retention (or purge) deleted its files
);
COMMENT ON TABLE registry.backups IS 'Tenant backups: directory-format dump + filestore archive + manifest; retention per plan.';
CREATE INDEX backups_tenant_idx ON registry.backups (tenant_id, taken_at);

CREATE TABLE registry.restores (
    id          bigserial PRIMARY KEY,
    tenant_id   text NOT NULL REFERENCES registry.tenants (tenant_id),  -- the tenant restored into
    backup_id   text NOT NULL REFERENCES registry.backups (backup_id),
    restored_at timestamptz NOT NULL DEFAULT now(),
    forced      boolean NOT NULL DEFAULT false
);
COMMENT ON TABLE registry.restores IS 'Every restore: which backup went into which tenant.';
CREATE INDEX restores_tenant_idx ON registry.restores (tenant_id, id);

INSERT INTO registry.schema_migrations (version, name) VALUES (5, '0005_lifecycle');
