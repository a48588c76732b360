"""Queries on registry.db_servers: the inventory's record of a server, its bring-up, its draining, its retirement."""

from __future__ import annotations

# The columns the inventory owns (platform_registry_db_servers); status, health, dedicated_to and the bring-up
# claim are the platform's and no sync touches them. ha too when the inventory does not say it (a dedicated
# server placement made under its plan's ha keeps it).
INVENTORY_COLUMNS = (
    "kind",
    "host",
    "port",
    "pgbouncer_host",
    "pgbouncer_port",
    "pg_major",
    "capacity_tenants",
    "capacity_storage_gb",
    "ha",
)

SERVER_QUERY = """
SELECT name, kind, host, port, pgbouncer_host, pgbouncer_port, pg_major, capacity_tenants, capacity_storage_gb, ha,
       status, health, health_checked_at::text AS health_checked_at, health_detail, dedicated_to, tenant_count,
       bring_up_by, bring_up_until::text AS bring_up_until
FROM registry.db_servers WHERE name = %s
"""

# The WHERE makes an unchanged server update nothing, so the row's updated_at only moves on a real change.
RECORD_QUERY = """
INSERT INTO registry.db_servers AS s
    (name, kind, host, port, pgbouncer_host, pgbouncer_port, pg_major, capacity_tenants, capacity_storage_gb, ha)
VALUES (%(name)s, %(kind)s, %(host)s, %(port)s, %(pgbouncer_host)s, %(pgbouncer_port)s, %(pg_major)s,
        %(capacity_tenants)s, %(capacity_storage_gb)s, coalesce(%(ha)s, 'none'))
ON CONFLICT (name) DO UPDATE
SET kind = excluded.kind,
    host = excluded.host,
    port = excluded.port,
    pgbouncer_host = excluded.pgbouncer_host,
    pgbouncer_port = excluded.pgbouncer_port,
    pg_major = excluded.pg_major,
    capacity_tenants = excluded.capacity_tenants,
    capacity_storage_gb = excluded.capacity_storage_gb,
    ha = coalesce(%(ha)s, s.ha)
WHERE (s.kind, s.host, s.port, s.pgbouncer_host, s.pgbouncer_port,
       s.pg_major, s.capacity_tenants, s.capacity_storage_gb, s.ha)
      IS DISTINCT FROM
      (excluded.kind, excluded.host, excluded.port, excluded.pgbouncer_host, excluded.pgbouncer_port,
       excluded.pg_major, excluded.capacity_tenants, excluded.capacity_storage_gb, coalesce(%(ha)s, s.ha))
"""

# Those whose move a killed drain left open count too: after the repoint they already point elsewhere.
TENANTS_TO_MOVE_QUERY = """
SELECT t.tenant_id, t.plan_name FROM registry.tenants t
WHERE t.status IN ('active', 'suspended')
  AND (t.db_server = %(name)s OR EXISTS (
        SELECT 1 FROM registry.migrations m
        WHERE m.tenant_id = t.tenant_id AND m.source_server = %(name)s AND m.finished_at IS NULL))
ORDER BY t.tenant_id
"""


def read_server(conn, name: str, lock: bool = False) -> dict | None:
    from psycopg.rows import dict_row

    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(SERVER_QUERY + (" FOR UPDATE" if lock else ""), (name,)).fetchone()


def record_server(conn, name: str, inventory: dict) -> bool:
    """Insert the server or update the columns the inventory owns; whether a row was written."""
    values = {column: inventory.get(column) for column in INVENTORY_COLUMNS}
    return conn.execute(RECORD_QUERY, {"name": name, **values}).rowcount > 0


def claim_bring_up(conn, name: str, claimant: str, minutes: int) -> bool:
    """Claim a provisioning server's bring-up for minutes: free, already this claimant's, or expired."""
    return (
        conn.execute(
            "UPDATE registry.db_servers SET bring_up_by = %(by)s,"
            " bring_up_until = now() + make_interval(mins => %(minutes)s::integer)"
            " WHERE name = %(name)s AND status = 'provisioning'"
            " AND (bring_up_by IS NULL OR bring_up_by = %(by)s OR bring_up_until < now())",
            {"name": name, "by": claimant, "minutes": minutes},
        ).rowcount
        > 0
    )


def mark_brought_up(conn, name: str, claimant: str | None) -> bool:
    """Record a provisioning server active and healthy, if claimant (still) holds its bring-up."""
    return (
        conn.execute(
            "UPDATE registry.db_servers SET status = 'active', health = 'healthy', health_detail = NULL,"
            " health_checked_at = now(), bring_up_by = NULL, bring_up_until = NULL"
            " WHERE name = %s AND status = 'provisioning' AND bring_up_by IS NOT DISTINCT FROM %s",
            (name, claimant),
        ).rowcount
        > 0
    )


def record_health(conn, server: dict, health: str, detail: str | None) -> bool:
    """Record a probe's verdict on the server (its row, read locked): healthy, or unhealthy and why, and when it was
    made (every probe: placement goes by a recent verdict only). Whether the verdict changed."""
    detail = detail if health == "unhealthy" else None
    if server["status"] == "provisioning":
        return False  # not up yet: its bring-up records it healthy (mark_brought_up)
    conn.execute(
        "UPDATE registry.db_servers SET health = %s, health_detail = %s, health_checked_at = now() WHERE name = %s",
        (health, detail, server["name"]),
    )
    return (server["health"], server["health_detail"]) != (health, detail)


def mark_draining(conn, name: str) -> bool:
    """Take an active shared pool out of placement; a pool in any other state stays as it is."""
    return (
        conn.execute(
            "UPDATE registry.db_servers SET status = 'draining'"
            " WHERE name = %s AND kind = 'shared' AND status = 'active'",
            (name,),
        ).rowcount
        > 0
    )


def tenants_to_move(conn, name: str) -> list[dict]:
    """The active and suspended tenants on the server, and those with a move from it still open."""
    from psycopg.rows import dict_row

    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(TENANTS_TO_MOVE_QUERY, {"name": name}).fetchall()


# What still holds a dedicated server: a tenant's database (terminated ones keep theirs until purged), a move to or
# from it, an old copy a move kept there (moves_cleanup.yml drops it when its retention ends), a change within
# idle_hours (its last tenant left since: updated_at moves with its tenant count). Read after the row lock, so a
# placement that chose the server first has committed its move by then.
HOLDS_QUERY = """
SELECT concat_ws('; ',
    (SELECT 'tenants ' || string_agg(t.tenant_id || ' (' || t.status || ')', ', ' ORDER BY t.tenant_id)
       FROM registry.tenants AS t WHERE t.db_server = %(name)s AND t.status <> 'purged'),
    (SELECT 'moves of ' || string_agg(m.tenant_id, ', ' ORDER BY m.id) FROM registry.migrations AS m
      WHERE %(name)s IN (m.source_server, m.target_server) AND m.finished_at IS NULL),
    (SELECT 'old copies ' || string_agg(m.retained_db, ', ' ORDER BY m.id) FROM registry.migrations AS m
      WHERE m.source_server = %(name)s AND m.retained_db IS NOT NULL AND m.retained_dropped_at IS NULL),
    (SELECT 'kept as a warm spare for plan ' || s.spare_for FROM registry.db_servers AS s
      WHERE s.name = %(name)s AND s.spare_for IS NOT NULL),
    (SELECT 'a change at ' || s.updated_at::text FROM registry.db_servers AS s
      WHERE s.name = %(name)s AND s.updated_at > now() - make_interval(secs => %(idle_hours)s::double precision * 3600))
) AS holds
"""


def retire(conn, name: str, idle_hours: float) -> str:
    """Retire the active dedicated server (locked by the caller) if nothing holds it: '' once retired, else what
    holds it. Placement never chooses a retired server, and the registry inventory plugin lists none."""
    holds = conn.execute(HOLDS_QUERY, {"name": name, "idle_hours": idle_hours}).fetchone()[0]
    if not holds:
        conn.execute("UPDATE registry.db_servers SET status = 'retired' WHERE name = %s AND status = 'active'", (name,))
    return holds
