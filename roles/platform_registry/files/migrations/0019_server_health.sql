-- 0019_server_health: the servers' health as the runner's servers_probe schedule finds it (playbooks/servers_probe.yml
-- every 5 minutes: the server and its PgBouncer each answer a login), with why a server is unhealthy. A recent
-- verdict is what placement goes by (module_utils/placement_store.py). A probe is not a change to the server:
-- updated_at, which says how long a dedicated server has been idle (servers_retire.yml), moves only when
-- something else in the row does.

ALTER TABLE registry.db_servers ADD COLUMN health_detail text;  -- why it is unhealthy: what failed, as the probe saw it
COMMENT ON COLUMN registry.db_servers.health_detail IS 'With health unhealthy: what the last probe found failing.';

CREATE FUNCTION registry.touch_server_updated_at() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF (to_jsonb(NEW) - ARRAY['health', 'health_checked_at', 'health_detail', 'updated_at'])
       IS DISTINCT FROM (to_jsonb(OLD) - ARRAY['health', 'health_checked_at', 'health_detail', 'updated_at']) THEN
        NEW.updated_at := now();
    END IF;
    RETURN NEW;
END
$$;
DROP TRIGGER db_servers_touch ON registry.db_servers;
CREATE TRIGGER db_servers_touch BEFORE UPDATE ON registry.db_servers
    FOR EACH ROW EXECUTE FUNCTION registry.touch_server_updated_at();

INSERT INTO registry.schema_migrations (version, name) VALUES (19, '0019_server_health');
