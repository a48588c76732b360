-- 0030_dedicated_spares: a dedicated server brought up ahead of need (playbooks/pools_grow.yml, the inventory's
-- saasodoo_dedicated_spares) is kept for a plan until a tenant of that plan is placed: placement gives it to the
-- tenant (spare_for cleared, dedicated_to set, in one transaction) instead of making it wait for a bring-up. It
-- holds the plan's share of its host meanwhile, and servers_retire.yml leaves it.
ALTER TABLE registry.db_servers
    ADD COLUMN spare_for text,
    ADD CONSTRAINT db_servers_spare_check
        CHECK (spare_for IS NULL OR (kind = 'dedicated' AND dedicated_to IS NULL));
COMMENT ON COLUMN registry.db_servers.spare_for IS
    'The plan this dedicated server is kept for, unused, until a tenant of it is placed (NULL: not a spare).';

INSERT INTO registry.schema_migrations (version, name) VALUES (30, '0030_dedicated_spares');
