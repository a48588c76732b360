"""Queries on registry.plans: the versions of each plan's entitlements."""

from __future__ import annotations

# A plan whose latest version already has these entitlements (jsonb equality) inserts nothing; any change becomes
# the next version. Versions are never updated or deleted: tenants point at them.
NEW_VERSION_QUERY = """
INSERT INTO registry.plans (name, version, db_type, entitlements)
SELECT %(name)s,
       coalesce((SELECT max(p.version) FROM registry.plans AS p WHERE p.name = %(name)s), 0) + 1,
       %(entitlements)s::jsonb ->> 'db_type',
       %(entitlements)s::jsonb
WHERE NOT EXISTS (
    SELECT FROM registry.plans AS latest
    WHERE latest.name = %(name)s
      AND latest.entitlements = %(entitlements)s::jsonb
      AND latest.version = (SELECT max(p.version) FROM registry.plans AS p WHERE p.name = %(name)s))
RETURNING name, version, db_type, entitlements, effective_from::text AS effective_from
"""


def latest_plan(conn, name: str) -> dict | None:
    from psycopg.rows import dict_row

    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT name, version, db_type, entitlements, effective_from::text AS effective_from"
            " FROM registry.plans WHERE name = %s ORDER BY version DESC LIMIT 1",
            (name,),
        ).fetchone()


def record_plan_version(conn, name: str, entitlements: dict) -> dict | None:
    """The new version if the entitlements differ from the latest version's (or the plan is new), else None."""
    from psycopg.rows import dict_row
    from psycopg.types.json import Jsonb

    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(NEW_VERSION_QUERY, {"name": name, "entitlements": Jsonb(entitlements)}).fetchone()
