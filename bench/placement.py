"""Time one shared-pool placement decision on a registry of realistic size, beside the naive way to decide.

Measured: PlacementStore.place as db_placement runs it (autocommit connection, no prepared statements,
no live probe), in check mode (locks the pools' rows, reads the counters migration 0004 keeps, decides,
records, rolls back) and, fewer times, in write mode (the same, committed). Baseline, same run, same
registry: the naive decision, which locks the same rows, then counts each pool's tenants and committed
storage with a GROUP BY over registry.tenants before the same choose_shared. The "lock + read + choose"
row takes the baseline's steps but reads the counters, so those two differ by the scan alone (place()
also records the tenant, the placement and an audit row, all rolled back in check mode).
The registry is a throwaway database on platform-db (every migration applied), dropped at the end.
Usage: bench/placement.py [--tenants N] [--servers N] [--decisions N] [--writes N] [--quick]
(needs platform-db up: ansible-playbook playbooks/site.yml)
"""

from __future__ import annotations

import argparse
import json
import math
import random
import secrets
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "collections"))  # as pytest's pythonpath does, for the collection's module_utils
from ansible_collections.saasodoo.platform.plugins.module_utils.placement import (  # noqa: E402
    Needs,
    Server,
    choose_shared,
)
from ansible_collections.saasodoo.platform.plugins.module_utils.placement_store import (  # noqa: E402
    SERVER_COLUMNS,
    PlacementConfig,
    PlacementRequest,
    PlacementStore,
)

MIGRATIONS = REPO / "roles/platform_registry/files/migrations"
PLAN = "bench-shared"
ENTITLEMENTS = {
    "db_type": "shared",
    "storage_gb": 1,
    "odoo_version": "18.0",
    "db_connection_limit": 5,
    "odoo_workers": 1,
}
CONFIG = PlacementConfig(policy="fill_first", odoo_pg_majors={"18.0": [15]}, probe_health=False)
NEEDS = Needs(storage_gb=ENTITLEMENTS["storage_gb"], pg_majors=(15,))
FULL = {"tenants": 10000, "servers": 200, "decisions": 1000, "writes": 200}
QUICK = {"tenants": 1000, "servers": 50, "decisions": 100, "writes": 20}
WARMUP = 20  # untimed runs per approach: first-use costs (catalog caches, plan) are not a decision's
GOAL_P99_MS = 10.0

COPY_TENANTS = (
    "COPY registry.tenants (tenant_id, plan_name, plan_version, db_type, db_server, db_name, db_role, status, quotas)"
    " FROM STDIN"
)
LOCK_POOLS = "SELECT name FROM registry.db_servers WHERE kind = 'shared' ORDER BY name FOR UPDATE"
COUNTERS = sql.SQL("SELECT {} FROM registry.db_servers WHERE kind = 'shared' ORDER BY name FOR UPDATE").format(
    sql.SQL(SERVER_COLUMNS)  # the module's own column list
)
# FOR UPDATE cannot go with GROUP BY: the naive way locks the rows first (LOCK_POOLS), then counts.
COUNT_SCAN = (
    "SELECT s.name, s.kind, s.status, s.health, s.pg_major, s.capacity_tenants, s.capacity_storage_gb,"
    " count(t.tenant_id) AS tenant_count,"
    " coalesce(sum((t.quotas ->> 'storage_gb')::integer), 0) AS storage_committed_gb"
    " FROM registry.db_servers s"
    " LEFT JOIN registry.tenants t ON t.db_server = s.name AND t.status <> 'purged'"
    " WHERE s.kind = 'shared' GROUP BY s.name ORDER BY s.name"
)


@dataclass
class Result:
    approach: str
    times: list[float] = field(default_factory=list)  # seconds
    chosen: set[str | None] = field(default_factory=set)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times) * 1000

    @property
    def p99_ms(self) -> float:
        ordered = sorted(self.times)
        return ordered[math.ceil(0.99 * len(ordered)) - 1] * 1000  # nearest rank


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, help=f"tenants in the registry (default {FULL['tenants']})")
    parser.add_argument("--servers", type=int, help=f"shared pools (default {FULL['servers']})")
    parser.add_argument("--decisions", type=int, help=f"timed check-mode decisions (default {FULL['decisions']})")
    parser.add_argument("--writes", type=int, help=f"timed write-mode placements (default {FULL['writes']})")
    parser.add_argument("--quick", action="store_true", help=f"a fast sanity run: {QUICK}")
    parser.add_argument("--seed", type=int, default=42, help="seed of the tenants' spread over the pools")
    parser.add_argument("--port", type=int, default=55432, help="platform-db's port")
    parser.add_argument("--socket-dir", default=".state/local/pg/platform-db/run", help="relative to the repo")
    args = parser.parse_args()
    for name, value in (QUICK if args.quick else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    # libpq takes a host for a socket directory only when it is an absolute path.
    args.socket_dir = str(REPO / args.socket_dir)
    return args


# -- the throwaway registry ---------------------------------------------------------------------------


@contextmanager
def throwaway_database(args: argparse.Namespace) -> Iterator[str]:
    name = f"saasodoo_bench_{secrets.token_hex(4)}"
    try:
        admin = connect(args, "postgres")
    except psycopg.OperationalError as e:
        sys.exit(
            f"cannot reach platform-db at {args.socket_dir}:{args.port}: {e}\nUp? ansible-playbook playbooks/site.yml"
        )
    with admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            yield name
        finally:
            # FORCE: a run stopped mid-phase may leave its connection behind.
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            progress(f"dropped {name}")


def connect(args: argparse.Namespace, dbname: str) -> psycopg.Connection:
    # As db_placement connects: autocommit (place() opens its own transaction), no prepared statements.
    return psycopg.connect(
        host=args.socket_dir, port=args.port, user="postgres", dbname=dbname, autocommit=True, prepare_threshold=None
    )


def apply_migrations(conn: psycopg.Connection) -> list[str]:
    files = sorted(MIGRATIONS.glob("*.sql"))
    # One transaction for the batch, as the platform_registry role applies them; each file writes its ledger row.
    with conn.transaction():
        conn.execute("CREATE SCHEMA registry")
        for path in files:
            conn.execute(path.read_text())
    return [p.stem for p in files]


def spread(tenants: int, servers: int, capacity: int, rng: random.Random) -> list[int]:
    """Tenants per pool: uneven (random weights), none over capacity, so some pools are full and some not."""
    weights = [rng.uniform(0.2, 3.0) for _ in range(servers)]
    counts = [0] * servers
    for i in rng.choices(range(servers), weights=weights, k=tenants):
        counts[i] += 1
    # The draw can overfill a pool; its excess goes to pools with room, as placement would have sent it.
    excess = sum(max(0, c - capacity) for c in counts)
    counts = [min(c, capacity) for c in counts]
    for _ in range(excess):
        counts[rng.choice([i for i, c in enumerate(counts) if c < capacity])] += 1
    return counts


def pool_name(i: int, servers: int) -> str:
    return f"bench-pool-{i:0{max(3, len(str(servers)))}d}"


def load(conn: psycopg.Connection, args: argparse.Namespace) -> None:
    capacity = args.tenants // args.servers + 10  # the fleet has room for every timed placement
    # Seeded, so every run loads the same registry (not a secret: S311 does not apply).
    rng = random.Random(args.seed)  # noqa: S311
    counts = spread(args.tenants, args.servers, capacity, rng)
    # Tenants arrive over time, not pool by pool: interleave them in the table as the trigger sees them.
    homes = [pool_name(i, args.servers) for i, n in enumerate(counts, 1) for _ in range(n)]
    rng.shuffle(homes)
    quotas = json.dumps({"storage_gb": ENTITLEMENTS["storage_gb"]})
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(
            "INSERT INTO registry.plans (name, version, db_type, entitlements) VALUES (%s, 1, 'shared', %s)",
            (PLAN, json.dumps(ENTITLEMENTS)),
        )
        cur.executemany(
            "INSERT INTO registry.db_servers (name, kind, host, port, pg_major, capacity_tenants, capacity_storage_gb)"
            " VALUES (%s, 'shared', '127.0.0.1', %s, 15, %s, 1000000)",
            [(pool_name(i, args.servers), 20000 + i, capacity) for i in range(1, args.servers + 1)],
        )
        with cur.copy(COPY_TENANTS) as copy:
            for n, home in enumerate(homes, 1):
                db = f"t_tenant_{n:06d}"
                copy.write_row((f"tenant-{n:06d}", PLAN, 1, "shared", home, db, db, "active", quotas))
    # The load updated each pool's counters ~tenants/servers times in one transaction; a registry that grew
    # over months is compact (autovacuum), so compact it and give the planner statistics.
    conn.execute("VACUUM (FULL, ANALYZE) registry.db_servers")
    conn.execute("VACUUM (ANALYZE)")


def check_counters(conn: psycopg.Connection, args: argparse.Namespace) -> int:
    """The trigger's counters add up to the load; returns how many pools are full."""
    counted, committed, full = conn.execute(
        "SELECT sum(tenant_count), sum(storage_committed_gb), count(*) FILTER (WHERE tenant_count >= capacity_tenants)"
        " FROM registry.db_servers"
    ).fetchone()
    if (counted, committed) != (args.tenants, args.tenants * ENTITLEMENTS["storage_gb"]):
        sys.exit(f"counters after the load: {counted} tenants, {committed} GB; expected {args.tenants} of each")
    return full


# -- the approaches: each takes a fresh tenant id and returns the pool chosen ------------------------------


def place(conn: psycopg.Connection, tenant_id: str, check_mode: bool) -> str | None:
    return PlacementStore(conn, CONFIG).place(PlacementRequest(tenant_id, PLAN), check_mode=check_mode).server["name"]


def to_server(row: dict) -> Server:
    return Server(**{f.name: row[f.name] for f in fields(Server)})


def decide_with_counters(conn: psycopg.Connection) -> str | None:
    with conn.transaction(force_rollback=True), conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(COUNTERS).fetchall()
        return choose_shared([to_server(r) for r in rows], NEEDS, CONFIG.policy).chosen


def decide_with_scan(conn: psycopg.Connection) -> str | None:
    with conn.transaction(force_rollback=True), conn.cursor(row_factory=dict_row) as cur:
        cur.execute(LOCK_POOLS)
        rows = cur.execute(COUNT_SCAN).fetchall()
        return choose_shared([to_server(r) for r in rows], NEEDS, CONFIG.policy).chosen


def run(approach: str, count: int, decide: Callable[[str], str | None], prefix: str, warmup: int = WARMUP) -> Result:
    """Time `count` decisions for fresh tenants `<prefix><i>` (the load's tenants are tenant-NNNNNN)."""
    result = Result(approach)
    for i in range(warmup):
        decide(f"warmup-{i}")
    step = max(1, count // 4)
    for i in range(count):
        started = time.perf_counter()
        result.chosen.add(decide(f"{prefix}{i}"))
        result.times.append(time.perf_counter() - started)
        if (i + 1) % step == 0 or i + 1 == count:
            progress(f"  {approach}: {i + 1}/{count}")
    return result


def measure(conn: psycopg.Connection, args: argparse.Namespace) -> list[Result]:
    # place() in check mode is what db_placement --check does; the decision-only row takes the baseline's
    # steps but reads the counters, so it and the baseline differ by the scan alone.
    check_mode: list[tuple[str, Callable[[str], str | None]]] = [
        ("counters: place(), check mode", lambda t: place(conn, t, True)),
        ("counters: lock + read + choose", lambda _: decide_with_counters(conn)),
        ("baseline: lock + count scan + choose", lambda _: decide_with_scan(conn)),
    ]
    results = []
    for approach, decide in check_mode:
        progress(f"timing {approach} ...")
        results.append(run(approach, args.decisions, decide, "bench-"))
    # All of the above ran on the same unchanged registry: they must have agreed on one pool.
    chosen = {name for r in results for name in r.chosen}
    if len(chosen) != 1:
        sys.exit(f"the approaches disagree on the pool: {sorted(map(str, chosen))}")
    # Last, because it grows the registry: real placements, each committed (no warm-up: it would insert too).
    approach = "counters: place(), write mode"
    progress(f"timing {approach} (real placements, each committed) ...")
    results.append(run(approach, args.writes, lambda t: place(conn, t, False), "bench-write-", warmup=0))
    return results


def report(results: list[Result], args: argparse.Namespace, full_pools: int) -> None:
    print(f"registry: {args.tenants} tenants on {args.servers} shared pools ({full_pools} full); policy fill_first")
    print(f"{'approach':38} {'median ms':>9} {'p99 ms':>8} {'decisions':>9}")
    for r in results:
        print(f"{r.approach:38} {r.median_ms:9.2f} {r.p99_ms:8.2f} {len(r.times):9d}")
    print(f"goal: p99 <= {GOAL_P99_MS:.0f} ms per decision. Check-mode approaches all chose {min(results[0].chosen)}")


def main() -> None:
    args = parse_args()
    with throwaway_database(args) as dbname:
        progress(f"created {dbname}; migrating, loading {args.tenants} tenants on {args.servers} pools ...")
        with connect(args, dbname) as conn:
            started = time.perf_counter()
            applied = apply_migrations(conn)
            load(conn, args)
            full_pools = check_counters(conn, args)
            progress(f"  applied {', '.join(applied)}; loaded in {time.perf_counter() - started:.1f} s")
            results = measure(conn, args)
    report(results, args, full_pools)


if __name__ == "__main__":
    main()
