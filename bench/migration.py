"""Moving a tenant's database between servers: client-seen write downtime and copy time, beside the baseline.

A tenant with an Odoo-shaped database of --size-mb (bench/odoo_tenant.py) on a shared pool and a client
committing every 100 ms through PgBouncer (bench/odoo_tenant.py TenantWriter: it finds the tenant's server in
the registry, as Odoo finds it in its config). In one run, on the same data:
1. logical: --moves plan changes with tenant_change_plan.yml, db_migrate method logical, alternating basic ->
   premium (shared pool -> dedicated server) and premium -> basic (back to a shared pool).
2. baseline: stop, pg_dump -Fc, pg_restore, start, the way a hand-written script moves a database: the tenant's
   role refused on its server for the whole of a custom-format dump and its restore into a scratch database on
   another server, then allowed again (the registry is not repointed, which flatters it). On a shared pool (an
   even number of logical moves brought the tenant back to one) the writer reaches it through the pool's
   PgBouncer, which after a refused login waits server_login_retry (15 s by default) before it tries the server
   again: the client-seen gap can exceed stop -> start (its total) by up to that.
3. dump: one more plan change with migration_method=dump (db_migrate, parallel directory-format dump/restore
   with writes blocked throughout), to the other kind of server.
Each move's row: the client-seen write downtime (the writer's longest gap between successful commits), the one
db_migrate recorded (registry.migrations.write_downtime_ms), copy (copy_ms), verification (verification's
seconds, if recorded) and total time (the playbook's wall time, and db_migrate's total_ms); the baseline's where
they apply; then p50/p95 over the logical moves. Goals: client-seen downtime p95 <= 1.5 s up to 1 GB (<= 2 s
above) and >= 50x below the baseline's; copy (the logical moves' median) >= 3x faster than the baseline's.
4. (with --quick, only if --drains is given: a drain moves every tenant of a pool, so make test drains in its pass
   alone, --quick --moves 0 --drains 3, and moves beside other tests with --quick) a tenant on the process
   runtime (the stand-in Odoo under supervisord, its own PgBouncer) whose pool is drained --drains times, each
   time the pool it is on: whether its Odoo kept its process (goal: the same pid), and per drain the longest gap
   between good answers of its login page, which reads its database through its PgBouncer, polled every 50 ms
   (what its users see; goal: p95 within the client-seen 1.5 s), with that gap's ends on the move's timeline and
   the requests that got no answer within 5 s (goal: none). The pools are put back in placement.
Usage: bench/migration.py [--size-mb 1024] [--moves 5] [--drains 5] [--quick]
(needs the local platform up: ansible-playbook playbooks/site.yml; the tenant is purged afterwards)
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "collections"), str(REPO / "tests")]  # as pytest sees them
from ansible_collections.saasodoo.platform.plugins.module_utils.secrets import derive_password  # noqa: E402
from bench.odoo_tenant import TenantWriter, WriterReport, generate  # noqa: E402
from bench.runner import goal, percentile, row  # noqa: E402
from tests.integration.conftest import odoo_url, remove_tenants, run_playbook, superuser  # noqa: E402

STATE = REPO / ".state/local"
PG_BIN = Path("/usr/lib/postgresql/15/bin")
RUNTIME_NONE = ("-e", "saasodoo_runtime_backend=none")
PLANS = {"shared": "basic-monthly", "dedicated": "premium-monthly"}  # the plan that puts the tenant on each kind
GOAL_DOWNTIME_S = 1.5  # client-seen downtime p95, up to 1 GB
GOAL_DOWNTIME_LARGE_S = 2.0  # and above 1 GB
GOAL_DOWNTIME_FACTOR = 50.0  # the baseline's client-seen downtime over the logical moves' p95
GOAL_COPY_FACTOR = 3.0  # the baseline's copy over the logical moves' median


@dataclass
class Result:
    label: str
    writer: WriterReport
    copy_s: float
    total_s: float  # wall time: the playbook run, or the baseline's stop -> start
    recorded_downtime_s: float | None = None  # db_migrate's: writes blocked -> the registry repointed
    verification_s: float | None = None  # db_migrate's verification, if it recorded its time
    recorded_total_s: float | None = None  # db_migrate's total_ms


class Tenant:
    def __init__(self, tenant_id: str, registry_port: int):
        self.tenant_id, self.db = tenant_id, "t_" + tenant_id.lower().replace("-", "_")
        self.secret = (STATE / "secrets/platform_secret").read_text().strip()
        self.registry_conninfo = {
            "host": "127.0.0.1",
            "port": registry_port,
            "dbname": "saasodoo_registry",
            "user": "saasodoo_registry",
            "password": derive_password(self.secret, "registry@saasodoo_registry"),
            "autocommit": True,
        }

    def provision(self, kind: str) -> None:
        """tenant_provision.yml on the plan of that kind of server (PLANS), runtime none."""
        run = run_playbook(
            "tenant_provision.yml", "-e", f"tenant_id={self.tenant_id}", "-e", f"plan={PLANS[kind]}", *RUNTIME_NONE
        )
        if run.returncode != 0:
            raise RuntimeError(f"provisioning the bench tenant failed:\n{run.output[-3000:]}")

    @property
    def password(self) -> str:
        return derive_password(self.secret, f"tenant:{self.tenant_id}:v1")

    def server(self) -> dict:
        with psycopg.connect(**self.registry_conninfo) as conn:
            name, kind, port, pgbouncer_port = conn.execute(
                "SELECT s.name, s.kind, s.port, s.pgbouncer_port FROM registry.tenants t"
                " JOIN registry.db_servers s ON s.name = t.db_server WHERE t.tenant_id = %s",
                (self.tenant_id,),
            ).fetchone()
        return {"name": name, "kind": kind, "port": port, "pgbouncer_port": pgbouncer_port}

    def shared_servers(self) -> dict[str, int]:
        with psycopg.connect(**self.registry_conninfo) as conn:
            rows = conn.execute(
                "SELECT name, port FROM registry.db_servers WHERE kind = 'shared' AND status = 'active' ORDER BY name"
            )
            return dict(rows.fetchall())

    def last_move(self) -> dict | None:
        """The tenant's latest registry.migrations row, its times in seconds (None where not recorded)."""
        with psycopg.connect(**self.registry_conninfo) as conn:
            move = conn.execute(
                "SELECT id, method, phase, held_timeline, copy_ms, total_ms, write_downtime_ms,"
                " (verification ->> 'seconds')::float,"
                " (SELECT extract(epoch FROM (entry ->> 'at')::timestamptz) FROM jsonb_array_elements(phase_history)"
                "  AS entry WHERE entry ->> 'phase' = 'cutover' ORDER BY 1 DESC LIMIT 1)"
                " FROM registry.migrations WHERE tenant_id = %s ORDER BY id DESC LIMIT 1",
                (self.tenant_id,),
            ).fetchone()
        if move is None:
            return None
        move_id, method, phase, held_timeline, *times, blocked_at = move
        copy_s, total_s, downtime_s = (None if ms is None else ms / 1000 for ms in times[:3])
        return {"id": move_id, "method": method, "phase": phase, "copy_s": copy_s, "total_s": total_s,
                "downtime_s": downtime_s, "verification_s": times[3], "held_timeline": held_timeline or {},
                "blocked_at": None if blocked_at is None else float(blocked_at)}  # fmt: skip

    def writer(self) -> TenantWriter:
        def locate() -> tuple[str, int]:
            server = self.server()
            return "127.0.0.1", server["pgbouncer_port"] or server["port"]

        return TenantWriter(locate, self.db, self.db, self.password)


def move(tenant: Tenant, label: str, kind: str, method: str) -> Result:
    """tenant_change_plan.yml to the plan of the other kind of server, the writer committing throughout."""
    before = tenant.last_move()
    extra = ("-e", "migration_method=dump") if method == "dump" else ()
    writer = tenant.writer()
    writer.start()
    started = time.monotonic()
    run = run_playbook(
        "tenant_change_plan.yml",
        "-e", f"tenant_id={tenant.tenant_id}", "-e", f"plan={PLANS[kind]}", *RUNTIME_NONE, *extra,
    )  # fmt: skip
    total = time.monotonic() - started
    report = writer.stop()
    if run.returncode != 0:
        raise RuntimeError(f"{label} failed:\n{run.output[-3000:]}")
    recorded = tenant.last_move()
    if (
        recorded is None
        or (before is not None and recorded["id"] == before["id"])
        or (recorded["phase"], recorded["method"]) != ("done", method)
        or recorded["copy_s"] is None
        or recorded["total_s"] is None
    ):
        raise RuntimeError(f"{label}: no finished {method} move with its copy and total time recorded: {recorded}")
    if tenant.server()["kind"] != kind:
        raise RuntimeError(f"{label}: the tenant is not on a {kind} server after the move")
    return Result(
        label, report, recorded["copy_s"], total, recorded["downtime_s"], recorded["verification_s"],
        recorded["total_s"],
    )  # fmt: skip


def baseline(tenant: Tenant) -> Result:
    """Stop (the role refused, its sessions ended), pg_dump -Fc, pg_restore into another server, start."""
    source = tenant.server()
    scratch_server, scratch_port = next(
        (name, port) for name, port in tenant.shared_servers().items() if name != source["name"]
    )
    scratch_db = f"bench_baseline_{uuid.uuid4().hex[:6]}"
    role = sql.Identifier(tenant.db)
    writer = tenant.writer()
    writer.start()
    with (
        tempfile.TemporaryDirectory(prefix="bench-baseline-") as scratch,
        superuser(source["name"], source["port"]) as source_admin,
        superuser(scratch_server, scratch_port) as target_admin,
    ):
        dump = Path(scratch) / "tenant.dump"
        wait_for_commits(writer, 10)  # the writer at its pace before the stop: its gap is the downtime
        started = time.monotonic()
        source_admin.execute(sql.SQL("ALTER ROLE {} NOLOGIN").format(role))
        source_admin.execute(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE usename = %s", (tenant.db,)
        )
        # pg_dump and pg_restore go through the superuser connections' own sockets (conftest's superuser).
        subprocess.run(
            [
                PG_BIN / "pg_dump",
                "-h",
                source_admin.info.host,
                "-p",
                str(source["port"]),
                "-U",
                "postgres",
                "-Fc",
                "-f",
                dump,
                tenant.db,
            ],
            check=True,
        )
        target_admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(scratch_db)))
        subprocess.run(
            [
                PG_BIN / "pg_restore",
                "-h",
                target_admin.info.host,
                "-p",
                str(scratch_port),
                "-U",
                "postgres",
                "--no-owner",
                "--exit-on-error",
                "-d",
                scratch_db,
                dump,
            ],
            check=True,
        )
        copy = time.monotonic() - started
        source_admin.execute(sql.SQL("ALTER ROLE {} LOGIN").format(role))
        total = time.monotonic() - started
        wait_for_commits(writer, writer.committed_count + 10)  # and after the start
        report = writer.stop()
        target_admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(scratch_db)))
    return Result("baseline: stop, pg_dump -Fc, pg_restore, start", report, copy, total)


def wait_for_commits(writer: TenantWriter, count: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while writer.committed_count < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the writer committed {writer.committed_count} rows, not {count}, in {timeout:.0f} s")
        time.sleep(0.05)  # the writer is another thread committing every 100 ms: poll its count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument(
        "--moves", type=int, default=5, help="logical moves, alternating shared <-> dedicated; 0: sections 1-3 skipped"
    )
    parser.add_argument(
        "--drains", type=int, help="drains under a running Odoo (section 4; default 5, with --quick 0); 0: none"
    )
    parser.add_argument("--registry-port", type=int, default=55432)
    parser.add_argument(
        "--quick", action="store_true",
        help="1 logical move (or --moves 0) of a 40 MB tenant with Odoo's own tables and no custom models, no drain"
        " unless --drains is given (tests/integration)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.quick:
        args.size_mb, args.moves = 40, min(args.moves, 1)
    if args.drains is None:
        args.drains = 0 if args.quick else 5
    if args.moves < 0 or args.drains < 0:
        parser.error("--moves and --drains must be 0 or more")
    if args.moves == 0 and args.drains == 0:
        parser.error("nothing to measure: --moves 0 and --drains 0")
    removed = moves_beside_a_writer(args) if args.moves else True
    if args.drains:
        removed = drain_under_odoo(args.registry_port, args.drains) and removed
    return 0 if removed else 1


def moves_beside_a_writer(args: argparse.Namespace) -> bool:
    """Sections 1-3 of the docstring; whether the tenant was removed."""

    tenant = Tenant(f"bench-move-{uuid.uuid4().hex[:6]}", args.registry_port)
    try:
        tenant.provision("shared")
        server = tenant.server()
        started = time.monotonic()
        with psycopg.connect(
            host="127.0.0.1",
            port=server["port"],
            dbname=tenant.db,
            user=tenant.db,
            password=tenant.password,
            autocommit=True,
        ) as conn:
            shape = generate(
                conn, args.size_mb, progress=lambda message: print(f"  generating: {message}", flush=True),
                custom_models=not args.quick,
            )  # fmt: skip
        tenant.writer().prepare()
        print(
            f"Tenant database: {shape['size_bytes'] / 2**20:.0f} MB, {shape['tables']} tables, {shape['indexes']} "
            f"indexes, {shape['rows']:,} rows (generated in {time.monotonic() - started:.0f} s)",
            flush=True,
        )

        print(
            f"Moving {args.size_mb} MB: {args.moves} logical move(s), the baseline, a dump move; a writer commits "
            "every 100 ms through PgBouncer"
        )
        print(HEADER, flush=True)
        logical, kind = [], "shared"
        for n in range(1, args.moves + 1):
            source, kind = kind, other(kind)
            logical.append(move(tenant, f"logical (db_migrate) {n}: {source} -> {kind}", kind, "logical"))
            print_result(logical[-1])
        base = baseline(tenant)
        print_result(base)
        dumped = move(tenant, f"dump (db_migrate -Fd -j2): {kind} -> {other(kind)}", other(kind), "dump")
        print_result(dumped)
        print(LEGEND)
        print_summary(args.size_mb, logical, base)
    finally:
        removed = remove_tenants([tenant.tenant_id])
    return removed


def drain_under_odoo(registry_port: int, drains: int) -> bool:
    """Section 4 of the docstring: `drains` drains, one after another, of the pool the tenant is on; whether the
    tenant was removed."""
    tenant = Tenant(f"bench-odoo-{uuid.uuid4().hex[:6]}", registry_port)
    supervisorctl = ["supervisorctl", "-c", str(STATE / "runtime/supervisor/supervisord.conf"), "pid"]
    drained_pools: set[str] = set()
    try:
        run = run_playbook(
            "tenant_provision.yml", "-e", f"tenant_id={tenant.tenant_id}", "-e", f"plan={PLANS['shared']}",
            "-e", "saasodoo_runtime_backend=process",
        )  # fmt: skip
        if run.returncode != 0:
            raise RuntimeError(f"provisioning the Odoo tenant failed:\n{run.output[-3000:]}")
        pid = subprocess.run([*supervisorctl, f"odoo-{tenant.tenant_id}"], capture_output=True, text=True).stdout
        print(f"Drains of the pool a tenant on the process runtime is on, under its running Odoo: {drains}")
        gaps, helds, timeouts = [], [], 0
        for n in range(1, drains + 1):
            pool = tenant.server()["name"]
            drained_pools.add(pool)
            poller = LoginPoller(odoo_url(tenant.tenant_id))
            poller.start()
            started = time.monotonic()
            drained = run_playbook("pool_drain.yml", "-e", f"server={pool}", "-e", "saasodoo_runtime_backend=process")
            seconds = time.monotonic() - started
            gap, answers, failures = poller.stop()
            if drained.returncode != 0:
                raise RuntimeError(f"draining {pool} failed:\n{drained.output[-3000:]}")
            gaps.append(gap)
            timeouts += poller.timeouts
            moved = tenant.last_move()  # the registry's record of the held window: block -> let in, step by step
            helds.append(moved["downtime_s"] or 0.0)
            # One timeline, in ms after the block: the move's steps, then the gap Odoo's users saw around them.
            steps = dict(moved["held_timeline"])
            if moved["blocked_at"] is not None:
                last_good, next_good = (round((at - moved["blocked_at"]) * 1000) for at in poller.gap_between)
                steps |= {"last good answer": last_good, "next good answer": next_good}
            timeline = ", ".join(f"{step} {ms}" for step, ms in sorted(steps.items(), key=lambda s: s[1]))
            print(f"  drain {n} of {pool}: {seconds:.1f} s; its login page answered {answers} times, {failures} failed,"
                  f" {poller.timeouts} timed out ({poller.TIMEOUT_S:.0f} s), longest gap between good answers"
                  f" {gap:.2f} s; held {helds[-1]:.2f} s (ms after the block: {timeline})", flush=True)  # fmt: skip
            set_active(registry_port, pool)  # drained again later, as the tenant comes back to it
        same = subprocess.run([*supervisorctl, f"odoo-{tenant.tenant_id}"], capture_output=True, text=True).stdout
        print(row("Odoo-seen downtime (the login page's longest gap)", gaps, "s", 1.0))
        print(row("held window (the move's write_downtime_ms)", helds, "s", 1.0))
        print(f"  Odoo pid {pid.strip()} before the first drain, {same.strip()} after the last")
        verdict = "met" if int(pid or 0) > 0 and same == pid else "NOT met"  # supervisorctl says 0 when stopped
        print(f"goal Odoo not restarted by a move: pid {pid.strip()} vs {same.strip()} — {verdict}")
        p95 = percentile(gaps, 0.95)
        seen = "met" if p95 <= GOAL_DOWNTIME_S else "NOT met"
        print(f"goal Odoo-seen downtime of a drain (its login page), p95: {p95:.2f} s vs {GOAL_DOWNTIME_S} s — {seen}")
        hung = "met" if timeouts == 0 else "NOT met"
        print(f"goal no login-page request timed out during the drains: {timeouts} vs 0 — {hung}")
    finally:
        removed = remove_tenants([tenant.tenant_id], runtime="process")
        for pool in drained_pools:
            set_active(registry_port, pool)
    return removed


def set_active(registry_port: int, pool: str) -> None:
    """A drained pool back in placement, as the bench found it (a drain has no undo: an operator's would be an edit)."""
    with superuser("platform-db", registry_port, "saasodoo_registry") as conn:
        conn.execute("UPDATE registry.db_servers SET status = 'active' WHERE name = %s", (pool,))


class LoginPoller(threading.Thread):
    """GET a login page every 50 ms until stopped: the longest time between two good answers (200 with the form),
    when it began and ended (wall clock), and how many requests got no answer within TIMEOUT_S."""

    TIMEOUT_S = 5.0

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url, self.halt = url, threading.Event()
        self.answers = self.failures = self.timeouts = 0
        self.gap_between: tuple[float, float] = (0.0, 0.0)  # time.time() of the good answers around the longest gap

    @property
    def gap(self) -> float:
        return self.gap_between[1] - self.gap_between[0]

    def _answered_well(self, last_good: float, now: float) -> float:
        """`now` is a good answer's time (or the end): the gap since `last_good` is kept if the longest; `now`."""
        if now - last_good > self.gap:
            self.gap_between = (last_good, now)
        return now

    def run(self) -> None:
        last_good = time.time()
        while not self.halt.wait(0.05):
            try:
                with urllib.request.urlopen(self.url, timeout=self.TIMEOUT_S) as page:  # noqa: S310 - http, loopback
                    good = page.status == 200 and b"oe_login_form" in page.read()
            except TimeoutError:
                good, self.timeouts = False, self.timeouts + 1
            except urllib.error.URLError as e:
                good = False
                self.timeouts += isinstance(e.reason, TimeoutError)
            except OSError:
                good = False
            self.answers += 1
            if good:
                last_good = self._answered_well(last_good, time.time())
            else:
                self.failures += 1
        self._answered_well(last_good, time.time())  # a gap still open when stopped counts up to now

    def stop(self) -> tuple[float, int, int]:
        self.halt.set()
        self.join()
        return self.gap, self.answers, self.failures


def other(kind: str) -> str:
    return "dedicated" if kind == "shared" else "shared"


HEADER = (
    f"  {'seconds':<48} {'client-seen':>11} {'recorded':>9} {'copy':>7} {'verification':>12} {'total':>7}"
    f" {'recorded total':>14} {'commits':>7} {'failed':>6}"
)
LEGEND = (
    "  client-seen: the writer's longest gap between commits; recorded: db_migrate's write_downtime_ms;"
    " total: the playbook's wall time (the baseline's: stop -> start); recorded total: db_migrate's total_ms"
)


def seconds(value: float | None, width: int, decimals: int = 1) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:{width}.{decimals}f}"


def print_result(result: Result) -> None:
    w = result.writer
    print(
        f"  {result.label:<48} {w.longest_gap_s:11.2f} {seconds(result.recorded_downtime_s, 9, 2)}"
        f" {result.copy_s:7.1f} {seconds(result.verification_s, 12)} {result.total_s:7.1f}"
        f" {seconds(result.recorded_total_s, 14)} {w.commits:7} {w.errors:6}",
        flush=True,
    )


def print_summary(size_mb: int, logical: list[Result], base: Result) -> None:
    downtimes = [r.writer.longest_gap_s for r in logical]
    copies = [r.copy_s for r in logical]
    print(f"Over the {len(logical)} logical move(s)")
    print(row("client-seen write downtime", downtimes, "s", 1.0))
    recorded = [r.recorded_downtime_s for r in logical if r.recorded_downtime_s is not None]
    if recorded:
        print(row("recorded write downtime (write_downtime_ms)", recorded, "s", 1.0))
    print(row("copy (copy_ms)", copies, "s", 1.0))
    verification = [r.verification_s for r in logical if r.verification_s is not None]
    if verification:
        print(row("verification (verification's seconds)", verification, "s", 1.0))
    print(row("total (the playbook's wall time)", [r.total_s for r in logical], "s", 1.0))
    downtime_p95, copy_median = percentile(downtimes, 0.95), percentile(copies, 0.5)
    downtime_factor = base.writer.longest_gap_s / max(downtime_p95, 1e-3)
    copy_factor = base.copy_s / max(copy_median, 1e-3)
    print(
        f"  logical vs baseline: downtime p95 {downtime_p95:.2f} s vs {base.writer.longest_gap_s:.2f} s"
        f" ({downtime_factor:.1f}x lower), copy median {copy_median:.1f} s vs {base.copy_s:.1f} s"
        f" ({copy_factor:.1f}x faster)"
    )
    downtime_goal = GOAL_DOWNTIME_S if size_mb <= 1024 else GOAL_DOWNTIME_LARGE_S
    print(goal(f"client-seen downtime p95 at {size_mb} MB", downtime_p95, downtime_goal, "s"))
    for name, factor, target in (
        ("downtime below the dump baseline", downtime_factor, GOAL_DOWNTIME_FACTOR),
        ("copy faster than the baseline", copy_factor, GOAL_COPY_FACTOR),
    ):
        factor = round(factor, 1)  # judged as printed
        print(f"goal {name}: {factor:.1f}x vs {target:g}x — {'met' if factor >= target else 'NOT met'}")


if __name__ == "__main__":
    sys.exit(main())
