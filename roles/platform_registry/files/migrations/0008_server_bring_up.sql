-- 0008_server_bring_up: one run at a time brings a new server up.
-- Two provisions placed on one new pool would otherwise converge it at once (and build its golden templates
-- twice, one dropping the other's unfinished build). The first run claims the bring-up for a while; the others
-- wait until the server is active. A claim that outlived its run (a killed job) is taken over when it expires,
-- or at once by the same claimant's next run.

ALTER TABLE registry.db_servers
    ADD COLUMN bring_up_by text,  -- who is bringing the server up: a tenant id, or pool_drain:<pool>
    ADD COLUMN bring_up_until timestamptz;  -- when the claim lapses if that run never finishes
COMMENT ON COLUMN registry.db_servers.bring_up_by IS 'The run converging this provisioning server (tasks/server_up.yml).';

INSERT INTO registry.schema_migrations (version, name) VALUES (8, '0008_server_bring_up');
