-- 0012_moves_verified_after_switch: a logical move opens the target as soon as it has caught up and verifies
-- the two copies after the switch, while the tenant works on the target and replication carries its writes
-- back to the source (docs/moves.md). A mismatch, or a run killed before `verified`,
-- switches back: the phase `switching_back`, and what the tenant row held before the switch to put back.
-- And a move holds its place on its target from the placement on, and on its source until it is verified.

ALTER TABLE registry.migrations
    ADD COLUMN switched_from jsonb;  -- the tenant's db_server, db_type, plan and quotas before the repoint
ALTER TABLE registry.migrations DROP CONSTRAINT migrations_phase_check;
ALTER TABLE registry.migrations ADD CONSTRAINT migrations_phase_check
    CHECK (phase IN ('placed', 'copying', 'catching_up', 'cutover', 'verified', 'repointed', 'switching_back',
                     'done', 'rolled_back'));
COMMENT ON COLUMN registry.migrations.write_downtime_ms IS
    'From writes blocked on the source to the registry repointed at the target (its role already open); a logical'
    ' move verifies after this, a dump move before.';

-- A move counts on its target from the placement on: two moves placed at once cannot overfill a pool (the
-- tenants trigger counts the tenant on the target only from the repoint). The reservation (the plan's storage
-- with it) is released when the move is repointed or ends without. Likewise a logical move, from its repoint
-- until it is verified, keeps the tenant's place on its source, where a switch back would bring it.
ALTER TABLE registry.migrations
    ADD COLUMN reserved_storage_gb integer CHECK (reserved_storage_gb >= 0),  -- NULL: nothing held on the target
    ADD COLUMN source_held_storage_gb integer CHECK (source_held_storage_gb >= 0);  -- NULL: nothing on the source
COMMENT ON COLUMN registry.migrations.reserved_storage_gb IS
    'Set while the move holds a tenant''s place (and this storage) on its target: placed until repointed or ended.';
COMMENT ON COLUMN registry.migrations.source_held_storage_gb IS
    'Set while a logical move keeps the tenant''s place (and this storage) on its source: repointed until verified.';

-- A tenant's place (and its storage) taken on a server, or given back: delta +1 or -1.
CREATE FUNCTION registry.hold_place(server text, delta integer, storage_gb integer) RETURNS void
LANGUAGE sql AS $$
    UPDATE registry.db_servers
       SET tenant_count = tenant_count + delta, storage_committed_gb = storage_committed_gb + delta * storage_gb
     WHERE name = server;
$$;

CREATE FUNCTION registry.reserve_move_places() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' AND NEW.finished_at IS NULL AND NEW.phase = 'placed' THEN
        NEW.reserved_storage_gb := coalesce((
            SELECT (p.entitlements ->> 'storage_gb')::integer FROM registry.plans AS p
             WHERE p.name = NEW.plan_name ORDER BY p.version DESC LIMIT 1), 0);
        PERFORM registry.hold_place(NEW.target_server, 1, NEW.reserved_storage_gb);
    ELSIF TG_OP = 'UPDATE' AND OLD.reserved_storage_gb IS NOT NULL
          AND (NEW.phase IN ('repointed', 'done', 'rolled_back') OR NEW.finished_at IS NOT NULL) THEN
        PERFORM registry.hold_place(OLD.target_server, -1, OLD.reserved_storage_gb);
        NEW.reserved_storage_gb := NULL;
    END IF;
    IF TG_OP = 'UPDATE' AND NEW.phase = 'repointed' AND OLD.phase <> 'repointed' AND NEW.method = 'logical'
       AND NEW.finished_at IS NULL AND NEW.source_held_storage_gb IS NULL THEN
        NEW.source_held_storage_gb := coalesce((NEW.switched_from -> 'quotas' ->> 'storage_gb')::integer, 0);
        PERFORM registry.hold_place(NEW.source_server, 1, NEW.source_held_storage_gb);
    ELSIF TG_OP = 'UPDATE' AND OLD.source_held_storage_gb IS NOT NULL
          AND (NEW.phase IN ('verified', 'done', 'rolled_back') OR NEW.finished_at IS NOT NULL) THEN
        PERFORM registry.hold_place(OLD.source_server, -1, OLD.source_held_storage_gb);
        NEW.source_held_storage_gb := NULL;
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER migrations_reserve_places
    BEFORE INSERT OR UPDATE OF phase, finished_at ON registry.migrations
    FOR EACH ROW EXECUTE FUNCTION registry.reserve_move_places();

-- Moves open now, not yet repointed, hold their place from here on.
UPDATE registry.migrations AS m
   SET reserved_storage_gb = coalesce((
           SELECT (p.entitlements ->> 'storage_gb')::integer FROM registry.plans AS p
            WHERE p.name = m.plan_name ORDER BY p.version DESC LIMIT 1), 0)
 WHERE m.finished_at IS NULL AND m.phase IN ('placed', 'copying', 'catching_up', 'cutover');
UPDATE registry.db_servers AS s
   SET tenant_count = s.tenant_count + r.moves, storage_committed_gb = s.storage_committed_gb + r.storage_gb
  FROM (SELECT target_server, count(*) AS moves, sum(reserved_storage_gb) AS storage_gb FROM registry.migrations
         WHERE reserved_storage_gb IS NOT NULL GROUP BY target_server) AS r
 WHERE s.name = r.target_server;

INSERT INTO registry.schema_migrations (version, name) VALUES (12, '0012_moves_verified_after_switch');
