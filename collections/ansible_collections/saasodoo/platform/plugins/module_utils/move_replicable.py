"""What logical replication can carry of a tenant's database, and what of the tenant's own code its apply would run
(a logical move refuses both; method dump moves such a database)."""

from __future__ import annotations

try:
    import psycopg
except ImportError:  # reported by the module with missing_required_lib
    psycopg = None

# What the apply of a logical move would run of the tenant's own making: triggers set to fire in
# replication (ENABLE ALWAYS / REPLICA), row-level security forced on the owner, and functions or operators
# written by a non-superuser in CHECK and domain constraints, defaults (a domain's too) and generated columns, index
# expressions, and types (a range's subtype_diff, which a GiST index on it calls for every row) (pg_depend names
# them). Also built-ins that run SQL given as text or read a relation, which may be the
# tenant's view (query_to_xml('SELECT its_function()', ...), ts_stat, table_to_xml of a view): pg_depend records no
# dependency on a built-in, so the expressions' stored trees are searched for them, called or behind an operator.
# PostgreSQL 15 runs all of it as the subscription's owner, which may ALTER its subscription (its connection, its
# slot): a logical move refuses them, and method dump (its restore runs as an unprivileged role) moves such a
# database.
TENANT_CODE_IN_APPLY = """
SELECT pg_catalog.format('trigger %s on %s', t.tgname, t.tgrelid::pg_catalog.regclass)
  FROM pg_catalog.pg_trigger t WHERE NOT t.tgisinternal AND t.tgenabled IN ('A', 'R')
UNION
SELECT pg_catalog.format('row-level security forced on %s', c.oid::pg_catalog.regclass)
  FROM pg_catalog.pg_class c WHERE c.relforcerowsecurity
UNION
SELECT pg_catalog.format('function %s', p.oid::pg_catalog.regprocedure)
  FROM pg_catalog.pg_depend d
  LEFT JOIN pg_catalog.pg_operator o
         ON d.refclassid = 'pg_catalog.pg_operator'::pg_catalog.regclass AND o.oid = d.refobjid
  JOIN pg_catalog.pg_proc p
    ON p.oid = CASE WHEN d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass THEN d.refobjid
                    ELSE o.oprcode::pg_catalog.oid END
  JOIN pg_catalog.pg_roles r ON r.oid = p.proowner
 WHERE d.classid IN ('pg_catalog.pg_constraint'::pg_catalog.regclass, 'pg_catalog.pg_attrdef'::pg_catalog.regclass,
                     'pg_catalog.pg_class'::pg_catalog.regclass, 'pg_catalog.pg_type'::pg_catalog.regclass)
   AND NOT r.rolsuper
UNION
SELECT pg_catalog.format('function %s in %s', p.oid::pg_catalog.regprocedure, e.what)
  FROM (SELECT pg_catalog.format('constraint %s', c.conname), c.conbin::pg_catalog.text
          FROM pg_catalog.pg_constraint c WHERE c.conbin IS NOT NULL
        UNION ALL
        SELECT pg_catalog.format('the default of %s column %s', a.adrelid::pg_catalog.regclass, a.adnum),
               a.adbin::pg_catalog.text
          FROM pg_catalog.pg_attrdef a
        UNION ALL
        SELECT pg_catalog.format('the default of domain %s', t.oid::pg_catalog.regtype),
               t.typdefaultbin::pg_catalog.text
          FROM pg_catalog.pg_type t WHERE t.typdefaultbin IS NOT NULL
        UNION ALL
        SELECT pg_catalog.format('index %s', i.indexrelid::pg_catalog.regclass),
               pg_catalog.concat(i.indexprs::pg_catalog.text, ' ', i.indpred::pg_catalog.text)
          FROM pg_catalog.pg_index i WHERE i.indexprs IS NOT NULL OR i.indpred IS NOT NULL) AS e (what, tree)
  JOIN pg_catalog.pg_proc p ON p.proname OPERATOR(pg_catalog.=) ANY ('{query_to_xml, query_to_xmlschema,
         query_to_xml_and_xmlschema, cursor_to_xml, cursor_to_xmlschema, table_to_xml, table_to_xmlschema,
         table_to_xml_and_xmlschema, schema_to_xml, schema_to_xmlschema, schema_to_xml_and_xmlschema, database_to_xml,
         database_to_xmlschema, database_to_xml_and_xmlschema, ts_stat, ts_rewrite}'::pg_catalog.name[])
 WHERE e.tree OPERATOR(pg_catalog.~) pg_catalog.format(':funcid %s ', p.oid)
    OR EXISTS (SELECT 1 FROM pg_catalog.pg_operator o WHERE o.oprcode OPERATOR(pg_catalog.=) p.oid
                  AND e.tree OPERATOR(pg_catalog.~) pg_catalog.format(':opno %s ', o.oid))
ORDER BY 1
"""


def replication_problems(conn: psycopg.Connection) -> list[str]:
    """What in the tenant's database (conn: a superuser session in it) logical replication cannot carry, or must
    not run: large objects, tables without a key, unlogged tables, the tenant's own code in the apply."""
    objects = conn.execute("SELECT pg_catalog.count(*) FROM pg_catalog.pg_largeobject_metadata").fetchone()[0]
    keyless = [
        r[0]
        for r in conn.execute(
            """SELECT c.oid::pg_catalog.regclass::pg_catalog.text
                 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
            WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
              AND (c.relreplident = 'n' OR c.relreplident = 'd' AND NOT EXISTS (
                    SELECT 1 FROM pg_catalog.pg_index i WHERE i.indrelid = c.oid AND i.indisprimary))
            ORDER BY 1"""
        )
    ]
    tenant_code = [r[0] for r in conn.execute(TENANT_CODE_IN_APPLY)]
    unlogged = [
        r[0]
        for r in conn.execute(
            "SELECT c.oid::pg_catalog.regclass::pg_catalog.text FROM pg_catalog.pg_class c"
            " WHERE c.relkind IN ('r', 'p') AND c.relpersistence = 'u' ORDER BY 1"
        )
    ]
    problems = []
    if objects:
        problems.append(f"{objects} large objects (logical replication does not carry them)")
    if keyless:
        problems.append(f"tables without a primary key or replica identity: {', '.join(keyless[:10])}")
    if unlogged:
        problems.append(f"unlogged tables (logical replication does not carry them): {', '.join(unlogged[:10])}")
    if tenant_code:
        problems.append(
            "the tenant's own code would run as the subscription's owner while rows are applied: "
            + ", ".join(tenant_code[:10])
        )
    return problems
