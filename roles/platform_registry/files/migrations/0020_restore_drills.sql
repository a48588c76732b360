-- 0020_restore_drills: the restore drills (playbooks/backups_drill.yml, the runner's restore_drill schedule): a
-- tenant's newest backup restored into a scratch database beside its own, checked and dropped, and how it went.
CREATE TABLE registry.restore_drills (
    id         bigserial PRIMARY KEY,
    tenant_id  text NOT NULL REFERENCES registry.tenants (tenant_id),
    backup_id  text REFERENCES registry.backups (backup_id),  -- null: the tenant had no backup to restore
    drilled_at timestamptz NOT NULL DEFAULT now(),
    seconds    double precision NOT NULL CHECK (seconds >= 0),
    passed     boolean NOT NULL,
    detail     text NOT NULL  -- what was restored (its tables), or what failed
);
COMMENT ON TABLE registry.restore_drills IS
    'Restore drills: a backup restored into a scratch database and checked; whether it passed, how long it took.';
CREATE INDEX restore_drills_drilled_at_idx ON registry.restore_drills (drilled_at);

INSERT INTO registry.schema_migrations (version, name) VALUES (20, '0020_restore_drills');
