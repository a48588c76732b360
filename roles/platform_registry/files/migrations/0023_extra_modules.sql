-- 0023_extra_modules: a plan change never uninstalls an Odoo module (Odoo deletes an uninstalled module's data). A
-- tenant that moves to a plan without some of the modules its earlier plans gave it keeps them installed, and the
-- registry records them: extra_modules, what its Odoo has beyond its plan's odoo_modules.
ALTER TABLE registry.tenants ADD COLUMN extra_modules text[] NOT NULL DEFAULT '{}';
COMMENT ON COLUMN registry.tenants.extra_modules IS
    'Odoo modules of the tenant''s earlier plans that its plan lacks: kept installed with their data, never uninstalled.';

-- The one home of the rule, for every write of a new plan (registry_tenant, and a move's repoint): what the tenant had
-- (its plan's modules and its extra ones) less what the new plan has.
CREATE FUNCTION registry.extra_modules_after(
    plan_name text, plan_version integer, extra_modules text[], new_plan_name text, new_plan_version integer
) RETURNS text[]
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
RETURN (
    SELECT coalesce(pg_catalog.array_agg(had.module ORDER BY had.module), '{}')
      FROM (SELECT pg_catalog.jsonb_array_elements_text(coalesce(p.entitlements -> 'odoo_modules', '[]'))
              FROM registry.plans AS p
             WHERE p.name = extra_modules_after.plan_name AND p.version = extra_modules_after.plan_version
            UNION
            SELECT pg_catalog.unnest(extra_modules_after.extra_modules)) AS had (module)
     WHERE had.module IS NOT NULL
       AND NOT EXISTS (
               SELECT FROM registry.plans AS n,
                           pg_catalog.jsonb_array_elements_text(coalesce(n.entitlements -> 'odoo_modules', '[]')) AS kept
                WHERE n.name = new_plan_name AND n.version = new_plan_version AND kept = had.module));
COMMENT ON FUNCTION registry.extra_modules_after(text, integer, text[], text, integer) IS
    'A tenant''s extra_modules once it moves from its plan (with these extra modules) to the new plan.';

INSERT INTO registry.schema_migrations (version, name) VALUES (23, '0023_extra_modules');
