"""The old copies tenant moves kept, in the registry (module registry_move).

db_migrate renames a moved tenant's source database <db>_old<move id> and records it in registry.migrations
(retained_db, retain_until); playbooks/moves_cleanup.yml drops those whose retention is over and records them
dropped (retained_dropped_at). Which copies are due, and whether the tenant's role goes with them, is decided
by due_copies (pure, unit-tested); the rest is the registry's reads and writes.
"""

from __future__ import annotations

try:
    from psycopg.rows import dict_row
except ImportError:  # reported by the module with missing_required_lib
    dict_row = None

# Every copy kept and not dropped yet, with its tenant's role and current server and the server that keeps it.
KEPT_COPIES_QUERY = """
SELECT m.id, m.tenant_id, m.retained_db, m.retain_until::text AS retain_until,
       coalesce(m.retain_until < now(), false) AS retention_over,
       t.db_role, t.db_server AS tenant_server,
       s.name AS server, s.host, s.port, s.pgbouncer_port, s.kind
FROM registry.migrations AS m
JOIN registry.tenants AS t USING (tenant_id)
JOIN registry.db_servers AS s ON s.name = m.source_server
WHERE m.retained_db IS NOT NULL AND m.retained_dropped_at IS NULL
ORDER BY m.id
"""

# What each due copy tells its playbook.
COPY_FIELDS = (
    "id",
    "tenant_id",
    "retained_db",
    "retain_until",
    "db_role",
    "server",
    "host",
    "port",
    "pgbouncer_port",
    "kind",
    "role_unused",
)


def due_copies(kept: list[dict], tenant_id: str | None = None) -> list[dict]:
    """The kept copies to drop now, in move order: those whose retention is over, and with tenant_id every copy of
    that tenant. Each says in role_unused whether the tenant's role goes with it from its server: when the
    tenant's database is elsewhere and no copy of that tenant stays kept there."""

    def due(copy: dict) -> bool:
        return bool(copy["retention_over"]) or (bool(tenant_id) and copy["tenant_id"] == tenant_id)

    staying = {(copy["tenant_id"], copy["server"]) for copy in kept if not due(copy)}

    def role_unused(copy: dict) -> bool:
        return copy["tenant_server"] != copy["server"] and (copy["tenant_id"], copy["server"]) not in staying

    return [
        {**{field: copy[field] for field in COPY_FIELDS if field != "role_unused"}, "role_unused": role_unused(copy)}
        for copy in sorted(kept, key=lambda copy: copy["id"])
        if due(copy)
    ]


def kept_copies(conn) -> list[dict]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(KEPT_COPIES_QUERY).fetchall()


def mark_dropped(conn, ids: list[int]) -> list[int]:
    """Records the copies of these moves as dropped; the ids newly recorded."""
    if not ids:
        return []
    rows = conn.execute(
        "UPDATE registry.migrations SET retained_dropped_at = now()"
        " WHERE id = ANY(%s::bigint[]) AND retained_db IS NOT NULL AND retained_dropped_at IS NULL RETURNING id",
        (list(ids),),
    ).fetchall()
    return sorted(row[0] for row in rows)
