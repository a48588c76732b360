-- 0014_move_recovery: the webhook runner's recovery pass finds moves that no run finishes (a killed
-- tenant_change_plan.yml or pool_drain.yml) and queues the playbook that finishes or rolls them back. A move is
-- held by its run through a session advisory lock on this key (db_migrate takes it for as long as it runs); the
-- key has this one home, so the modules and the runner ask about the same lock.

CREATE FUNCTION registry.move_lock_key(tenant_id text) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp
RETURN hashtext('saasodoo.move:' || tenant_id);
COMMENT ON FUNCTION registry.move_lock_key(text) IS
    'The advisory lock key a run moving this tenant''s database holds (pg_try_advisory_lock(key)).';

-- Whether a run holds it, read from pg_locks without taking it (taking it, even for an instant, would make a
-- starting run refuse). A bigint key shows as classid (high 32 bits), objid (low 32 bits), objsubid 1.
CREATE FUNCTION registry.move_is_held(tenant_id text) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
RETURN EXISTS (
    SELECT 1 FROM pg_catalog.pg_locks AS l
     WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
       AND l.database = (SELECT d.oid FROM pg_catalog.pg_database AS d WHERE d.datname = current_database())
       AND l.classid = ((registry.move_lock_key(tenant_id) >> 32) & 4294967295)::oid
       AND l.objid = (registry.move_lock_key(tenant_id) & 4294967295)::oid);

INSERT INTO registry.schema_migrations (version, name) VALUES (14, '0014_move_recovery');
