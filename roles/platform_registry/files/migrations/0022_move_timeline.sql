-- 0022_move_timeline: where a move's held window went. write_downtime_ms is how long the tenant was held (from the
-- block of its writes to the target letting it in); held_timeline is each step of that window, in ms since the
-- block ({"sessions ended": 41, "caught up": 212, ...}), so a slow switch names its slow step.
ALTER TABLE registry.migrations ADD COLUMN held_timeline jsonb;

INSERT INTO registry.schema_migrations (version, name) VALUES (22, '0022_move_timeline');
