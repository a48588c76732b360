-- 0007_moves: what db_migrate (docs/moves.md) records about a move beyond 0002's phases and timings.
-- A move is placed (target chosen), copied, cut over, verified, repointed, cleaned up; an interrupted
-- or failed one is rolled back. The phases a run went through are in phase_history.

ALTER TABLE registry.migrations
    ADD COLUMN plan_name text,  -- the plan the tenant moves to (its db_type needs the new server)
    ADD COLUMN source_could_login boolean,  -- the tenant role's LOGIN on the source before writes were blocked
    ADD COLUMN copy_ms integer CHECK (copy_ms >= 0),  -- copy start to the target in sync (logical) or restored (dump)
    ADD COLUMN total_ms integer CHECK (total_ms >= 0),
    ADD COLUMN retained_db text,  -- the old copy on the source, renamed, kept until retain_until
    ADD COLUMN retain_until timestamptz,
    ADD COLUMN retained_dropped_at timestamptz;  -- when playbooks/moves_cleanup.yml dropped the old copy
ALTER TABLE registry.migrations ADD CONSTRAINT migrations_phase_check
    CHECK (phase IN ('placed', 'copying', 'catching_up', 'cutover', 'verified', 'repointed', 'done',
                     'rolled_back'));
COMMENT ON COLUMN registry.migrations.write_downtime_ms IS
    'From writes blocked on the source to the registry repointed at the target (its role already open).';

INSERT INTO registry.schema_migrations (version, name) VALUES (7, '0007_moves');
