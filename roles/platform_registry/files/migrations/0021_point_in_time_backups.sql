-- 0021_point_in_time_backups: a tenant's database as it was at a moment (tenant_restore.yml -e at=…), recovered
-- from its server's base backup and archived WAL and dumped; recorded like any backup, so a restore of it is
-- audited and running the same restore again changes nothing. It holds the database only (no filestore), so a
-- plain restore or a drill never picks one by itself.
ALTER TABLE registry.backups
    DROP CONSTRAINT backups_kind_check,
    ADD CONSTRAINT backups_kind_check CHECK (kind IN ('manual', 'final', 'point_in_time'));

INSERT INTO registry.schema_migrations (version, name) VALUES (21, '0021_point_in_time_backups');
