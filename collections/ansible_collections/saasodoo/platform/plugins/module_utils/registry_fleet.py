"""What the registry records about the fleet, read-only (module registry_info): its servers with the tenants
each holds, its tenants, and the current version of every plan."""

from __future__ import annotations

try:
    from psycopg.rows import dict_row
except ImportError:  # reported by the module with missing_required_lib
    dict_row = None

# tenants counts the tenants not purged whose database the registry places there (a purged one left nothing there),
# as registry.db_servers.tenant_count does but for the places open moves hold; point_in_time_days is the longest
# window the plans (versions) of those tenants ask for (servers_base_backup.yml keeps the server's backups for it),
# null when none asks.
SERVERS_QUERY = """
SELECT s.name, s.kind, s.status, s.health,
       to_char(s.health_checked_at, 'YYYY-MM-DD HH24:MI:SS TZ') AS health_checked_at, s.health_detail,
       s.host, s.port, s.pgbouncer_host, s.pgbouncer_port, s.pg_major,
       s.capacity_tenants, s.capacity_storage_gb, s.storage_committed_gb, s.dedicated_to,
       s.reserved_cpu::float AS reserved_cpu, s.reserved_memory_mb, s.spare_for,
       (SELECT count(*) FROM registry.tenants AS t WHERE t.db_server = s.name AND t.status <> 'purged')::int AS tenants,
       (SELECT max((p.entitlements ->> 'point_in_time_days')::int)
          FROM registry.tenants AS t JOIN registry.plans AS p ON (p.name, p.version) = (t.plan_name, t.plan_version)
         WHERE t.db_server = s.name AND t.status <> 'purged') AS point_in_time_days
FROM registry.db_servers AS s
ORDER BY s.name
"""

# No secret is stored in a tenant's row.
TENANTS_QUERY = """
SELECT tenant_id, customer_id, subscription_id, plan_name, plan_version, db_type, db_server, db_name, db_role,
       status, billing_status, storage_path, http_port, credential_version, created_at::text AS created_at,
       retain_until::text AS retain_until, extra_modules
FROM registry.tenants
ORDER BY tenant_id
"""

PLANS_QUERY = """
SELECT DISTINCT ON (name) name, version, db_type, effective_from::text AS effective_from, entitlements
FROM registry.plans
ORDER BY name, version DESC
"""

# The newest restore drill (backups_drill.yml), as platform_status.yml shows it.
DRILLS_QUERY = """
SELECT id, tenant_id, backup_id, to_char(drilled_at, 'YYYY-MM-DD HH24:MI:SS TZ') AS drilled_at, seconds, passed, detail
FROM registry.restore_drills
ORDER BY id DESC LIMIT 1
"""

# The ten latest moves, with how long each held its tenant (block -> let in) and where that time went.
MOVES_QUERY = """
SELECT id, tenant_id, source_server, target_server, method, phase,
       to_char(started_at, 'YYYY-MM-DD HH24:MI:SS TZ') AS started_at, write_downtime_ms, held_timeline
FROM registry.migrations
ORDER BY id DESC LIMIT 10
"""

QUERIES = {"servers": SERVERS_QUERY, "tenants": TENANTS_QUERY, "plans": PLANS_QUERY, "drills": DRILLS_QUERY,
           "moves": MOVES_QUERY}  # fmt: skip


def read_fleet(conn, subsets: list[str]) -> dict[str, list[dict]]:
    """Each asked subset (servers, tenants, plans, drills, moves) as a list of rows, read in one snapshot."""
    unknown = set(subsets) - set(QUERIES)
    if unknown:
        raise ValueError(f"unknown subsets {sorted(unknown)}: choose among {sorted(QUERIES)}")
    fleet = {}
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        for subset in QUERIES:
            if subset in subsets:
                fleet[subset] = cur.execute(QUERIES[subset]).fetchall()
    return fleet
