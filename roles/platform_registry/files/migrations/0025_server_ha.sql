-- 0025_server_ha: a server may outlive its primary. ha says how: 'none' (one PostgreSQL), 'async' (Patroni with a
-- streaming replica that takes over when the primary is lost) or 'sync' (the same, each commit confirmed by the
-- replica first, so none acknowledged is lost). Placement gives a new dedicated server its plan's ha; a server's ha
-- is fixed when it is made.
ALTER TABLE registry.db_servers
    ADD COLUMN ha text NOT NULL DEFAULT 'none' CONSTRAINT db_servers_ha_check CHECK (ha IN ('none', 'async', 'sync'));
COMMENT ON COLUMN registry.db_servers.ha IS
    'none: one PostgreSQL; async or sync: Patroni with a replica (sync: each commit confirmed by it).';

INSERT INTO registry.schema_migrations (version, name) VALUES (25, '0025_server_ha');
