-- 0026_dedicated_host_reservations: a dedicated server made on one of the inventory's dedicated hosts holds its
-- tenant's plan's share of that host's CPU and memory while it is not retired; placement makes a new one only on a
-- host with that much left. Null for the servers made otherwise (the pools, a dedicated server on a host of its own).
ALTER TABLE registry.db_servers
    ADD COLUMN reserved_cpu numeric CONSTRAINT db_servers_reserved_cpu_check CHECK (reserved_cpu > 0),
    ADD COLUMN reserved_memory_mb integer CONSTRAINT db_servers_reserved_memory_mb_check CHECK (reserved_memory_mb > 0);
COMMENT ON COLUMN registry.db_servers.reserved_cpu IS
    'The cores of its host this dedicated server holds (its plan''s cpu) until it is retired.';
COMMENT ON COLUMN registry.db_servers.reserved_memory_mb IS
    'The memory of its host this dedicated server holds (its plan''s memory_mb) until it is retired.';

INSERT INTO registry.schema_migrations (version, name) VALUES (26, '0026_dedicated_host_reservations');
