-- 0029_odoo_builds: which Odoo build each tenant's database was last updated by, and the updates that move the
-- fleet to a new build (playbooks/tenant_update.yml for one tenant; the webhook runner's rollout for all).
-- A tenant's Odoo runs the build its database is at: a new build (saasodoo_odoo_bin) reaches a tenant only through
-- its update (-u all), never by a restart. The platform_registry role records the inventory's build for the tenants
-- that were there before (NULL) in the run that applies this: apply it before naming a new build.
-- Words of path characters only: the command goes into supervisord's program file as it is (no newline, quote, %).
ALTER TABLE registry.tenants
    ADD COLUMN odoo_build text
        CONSTRAINT tenants_odoo_build_words CHECK (odoo_build ~ '^[A-Za-z0-9_./:=+@-]+( [A-Za-z0-9_./:=+@-]+)*$'),
    -- When it last changed (an update, a restore of a backup at another build): a point-in-time restore to a moment
    -- before it would bring back a database that build never ran on.
    ADD COLUMN odoo_build_since timestamptz,
    -- The backup an update under way goes back to, from its backup until its new build is recorded: a run that
    -- dies in between leaves it, and the next run updates from it (never from a second backup, of a database
    -- half-updated).
    ADD COLUMN odoo_update_backup text;
COMMENT ON COLUMN registry.tenants.odoo_build IS
    'The odoo-bin (saasodoo_odoo_bin) the tenant''s database was created or last updated by; its Odoo runs it.';

-- One rollout of a build to every tenant at a time: `canary` tenants first, then `batch` at a time, each a job of
-- its tenant's account (tenant_update.yml). A failed update pauses it, naming the failures (`acknowledged` from
-- then on: a resume goes on with the others, and a failure not named yet pauses it again).
CREATE TABLE registry.odoo_updates (
    id           bigserial PRIMARY KEY,
    canary       integer NOT NULL CHECK (canary >= 1),
    batch        integer NOT NULL CHECK (batch >= 1),
    state        text NOT NULL DEFAULT 'running' CHECK (state IN ('running', 'paused', 'finished')),
    reason       text NOT NULL DEFAULT '',
    acknowledged bigint[] NOT NULL DEFAULT '{}',  -- the failed jobs a pause has named
    build        text,  -- the build its canary was updated to, which every later batch is given
    created_at   timestamptz NOT NULL DEFAULT now(),
    state_since  timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz
);
CREATE UNIQUE INDEX odoo_updates_one_open ON registry.odoo_updates ((true)) WHERE state <> 'finished';
COMMENT ON TABLE registry.odoo_updates IS 'Rollouts of the platform''s Odoo build to its tenants (webhook runner).';
ALTER TABLE registry.jobs ADD COLUMN odoo_update bigint REFERENCES registry.odoo_updates (id);
CREATE INDEX jobs_odoo_update_idx ON registry.jobs (odoo_update) WHERE odoo_update IS NOT NULL;

INSERT INTO registry.schema_migrations (version, name) VALUES (29, '0029_odoo_builds');
