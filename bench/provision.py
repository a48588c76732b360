"""Sign-up to a working Odoo: from the customer's sign-up at Kill Bill to the tenant's login page through nginx.

1. End to end, through the real path: the Kill Bill stand-in notifies the webhook runner (two workers,
   ansible-runner, tenant_provision.yml with the process runtime): the database is cloned from its golden
   template, Odoo is started under supervisord, and the clock stops when nginx serves the tenant's login form.
   The sign-ups come one after another, each as soon as the one before logs in, enough to fill pools: first with
   no headroom (the baseline: a sign-up that finds the pools full waits for a new pool's bring-up), then with the
   runner's pools_grow schedule keeping room ahead of them (playbooks/pools_grow.yml). p50/p95 of each, beside the
   provision jobs' own run times from the jobs table, and how many sign-ups were placed on a pool being
   brought up (and waited for it).
2. What the template saves: initialising a database the way a platform without templates must (odoo-bin -i with
   the plan's modules, into an empty database) against what a clone costs (CREATE DATABASE … TEMPLATE and the
   REASSIGN OWNED that gives it to its tenant), both on the same pool server, timed in the same run.

The Odoo is the local inventory's (the stand-in), or a real one when SAASODOO_ODOO_BIN is set (make bench runs
the stand-in; the goals below are for a real Odoo 18 on this machine).
Usage: bench/provision.py [--tenants N] [--headroom N] [--quick]   (needs the local platform up: playbooks/site.yml)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "collections"), str(REPO / "tests")]  # as pytest sees them
import psycopg  # noqa: E402
from psycopg.rows import dict_row  # noqa: E402

from bench.runner import KILLBILL, percentile, provision_job_seconds, registry_conninfo, row, start_stack  # noqa: E402
from tests.e2e.killbill_api import KillBillAPI  # noqa: E402
from tests.integration.conftest import remove_tenants, run_playbook, superuser  # noqa: E402
from tests.integration.runner_stack import pause_deployed_runner, resume_deployed_runner  # noqa: E402
from tests.standins.killbill.killbill_standin import KillBillStandin  # noqa: E402
from tests.tenant_web import opener, tenant_url  # noqa: E402

STANDIN = f"/usr/bin/python3 {REPO}/tests/standins/odoo/odoo-bin"
GOAL_P95_SECONDS = 15.0
GOAL_SPEEDUP = 4.0
GOAL_P95_OVER_P50 = 1.5  # no sign-up waits for a pool's bring-up


def login_form(tenant_id: str) -> bool:
    try:
        with opener().open(tenant_url(tenant_id), timeout=5) as response:
            return response.status == 200 and "oe_login_form" in response.read().decode(errors="replace")
    except (urllib.error.URLError, OSError):
        return False


def shared_pools(registry) -> dict[str, tuple[str, int, int]]:
    """The shared pools: name -> (status, tenants, capacity)."""
    rows = registry.execute(
        "SELECT name, status, tenant_count, capacity_tenants FROM registry.db_servers WHERE kind = 'shared'"
    ).fetchall()
    return {r["name"]: (r["status"], r["tenant_count"], r["capacity_tenants"]) for r in rows}


def free_slots(registry) -> int:
    return sum(max(capacity - tenants, 0) for status, tenants, capacity in shared_pools(registry).values()
               if status in ("active", "provisioning"))  # fmt: skip


WAITED = """SELECT count(*) FILTER (WHERE EXISTS (SELECT 1 FROM jsonb_array_elements(p.candidates) AS c
                                               WHERE c->>'name' = p.chosen_server AND c->>'ready' = 'false')) AS waited,
                   count(*) FILTER (WHERE p.reason LIKE 'grew the fleet%%') AS grew
              FROM registry.placements AS p WHERE p.tenant_id = ANY(%s)"""


def sign_ups(
    scratch: Path, standin: KillBillStandin, registry_port: int, tenants: int, headroom: int, created: list[str]
) -> tuple[list[float], int, int]:
    """`tenants` sign-ups one after another, each as soon as the one before it logs in, through a runner of two
    workers whose pools_grow schedule keeps `headroom` tenant slots free (run first to the end, then after each
    provision): the sign-up to login page times, the sign-ups placed on a pool still being brought up (theirs, or
    one grown ahead that was not up yet), and the pools grown ahead of need."""
    with psycopg.connect(registry_conninfo(registry_port), autocommit=True, row_factory=dict_row) as registry:
        pools_before = set(shared_pools(registry))
        jobs_before = registry.execute("SELECT coalesce(max(id), 0) AS id FROM registry.jobs").fetchone()["id"]
    if headroom:
        grown = run_playbook("pools_grow.yml", "-e", json.dumps({"saasodoo_pool_headroom_tenants": headroom}))
        assert grown.returncode == 0, grown.output[-3000:]
    extravars = {"saasodoo_pool_headroom_tenants": headroom}
    (scratch / f"headroom-{headroom}").mkdir()
    stack = start_stack(scratch / f"headroom-{headroom}", 58292, standin, registry_port, extravars, workers=2,
                        schedules={"pools_grow": 600})  # fmt: skip
    api = KillBillAPI(standin.url, **KILLBILL)
    api.register_callback(stack.callback)
    try:
        standin.wait_idle(timeout=30)
        stack.settle()
        ready = []
        run_id = uuid.uuid4().hex[:6]
        with stack.registry() as registry:
            for n in range(tenants):
                tenant = f"prov-{run_id}-{n}"
                created.append(tenant)
                started = time.perf_counter()
                api.sign_up(tenant, tenant, "basic-monthly", email=f"admin@{tenant}.example")
                while not login_form(tenant):
                    if time.perf_counter() - started > 600:
                        raise TimeoutError(f"{tenant}: no login page after 600 s")
                    time.sleep(0.05)  # the route appears at the end of the playbook: poll it as a browser would
                ready.append(time.perf_counter() - started)
                print(f"  {tenant}: login page after {ready[-1]:.1f} s ({free_slots(registry)} slots free)", flush=True)
            mine = created[-tenants:]
            after_last_provision(registry, mine[-1], jobs_before)
            runs = [provision_job_seconds(registry, tenant) for tenant in mine]
            counted = registry.execute(WAITED, (mine,)).fetchone()
            grown = len(set(shared_pools(registry)) - pools_before) - counted["grew"]
    finally:
        stack.stop()
    print(row(f"sign-up at Kill Bill -> login page through nginx, headroom {headroom}", ready, "s", 1.0))
    print(row("tenant_provision.yml job run time (jobs table)", runs, "s", 1.0))
    print(f"  sign-ups placed on a pool being brought up: {counted['waited']}; pools grown ahead of need: {grown}")
    return ready, counted["waited"], grown


def after_last_provision(registry, tenant: str, jobs_before: int, timeout: float = 600) -> None:
    """Until the pools_grow run the tenant's provision brought forward has ended, and no job of this pass (after
    jobs_before) is running or queued."""
    deadline = time.monotonic() + timeout
    while registry.execute(
        """SELECT NOT EXISTS (SELECT 1 FROM registry.jobs AS g, registry.jobs AS p
                               WHERE p.tenant_id = %s AND p.action = 'provision' AND p.state = 'succeeded'
                                 AND g.action = 'pools_grow' AND g.started_at >= p.finished_at
                                 AND g.state IN ('succeeded', 'failed'))
                   OR EXISTS (SELECT 1 FROM registry.jobs WHERE id > %s AND state IN ('queued', 'running')) AS busy""",
        (tenant, jobs_before),
    ).fetchone()["busy"]:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no pools_grow run ended after {tenant}'s provision within {timeout:.0f} s")
        time.sleep(0.2)  # the runner's workers are other processes: poll the registry they write


def template_against_init(odoo_bin: str, rounds: int) -> tuple[list[float], list[float]]:
    """On pool-shared-01, with its basic-monthly template: a clone given to a scratch role, and odoo-bin -i."""
    port = 55433
    with superuser("pool-shared-01", port) as conn:
        template, label = conn.execute(
            "SELECT datname, shobj_description(oid, 'pg_database') FROM pg_database"
            " WHERE datistemplate AND left(datname, 4) = 'tpl_' ORDER BY datname LIMIT 1"
        ).fetchone()
        conn.execute("DROP ROLE IF EXISTS bench_provision")
        conn.execute("CREATE ROLE bench_provision LOGIN PASSWORD 'bench-provision'")
    modules = ",".join(json.loads(label)["modules"])
    clones, inits = [], []
    for _ in range(rounds):
        with superuser("pool-shared-01", port) as conn:
            started = time.perf_counter()
            conn.execute(f"CREATE DATABASE bench_provision OWNER bench_provision TEMPLATE {template}")
            with superuser("pool-shared-01", port, "bench_provision") as clone:
                clone.execute(f"REASSIGN OWNED BY {template} TO bench_provision")
                clone.execute(f"ALTER DATABASE {template} OWNER TO {template}")
            clones.append(time.perf_counter() - started)
            conn.execute("DROP DATABASE bench_provision")
            conn.execute("CREATE DATABASE bench_provision OWNER bench_provision TEMPLATE template0")
        with tempfile.TemporaryDirectory(prefix="bench-provision-") as data_dir:
            started = time.perf_counter()
            subprocess.run(
                [*odoo_bin.split(), "-d", "bench_provision", "-r", "bench_provision", "-w", "bench-provision",
                 "--db_host", "127.0.0.1", "--db_port", str(port), "-i", modules, "--without-demo=all",
                 "--stop-after-init", "--data-dir", data_dir],
                check=True, capture_output=True, timeout=1800,
            )  # fmt: skip
            inits.append(time.perf_counter() - started)
        with superuser("pool-shared-01", port) as conn:
            conn.execute("DROP DATABASE bench_provision")
    with superuser("pool-shared-01", port) as conn:
        conn.execute("DROP ROLE bench_provision")
    print(row(f"clone of {template} + REASSIGN OWNED", clones, "s", 1.0))
    print(row(f"baseline: odoo-bin -i {modules} into an empty database", inits, "s", 1.0))
    return clones, inits


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3, help="-i initialisations timed against as many clones")
    parser.add_argument("--registry-port", type=int, default=55432)
    parser.add_argument(
        "--headroom",
        type=int,
        default=0,
        help="tenant slots the pools keep (default: two pools' worth; --quick: one more than free)",
    )
    parser.add_argument("--quick", action="store_true", help="1 tenant, 1 round (tests/integration)")
    args = parser.parse_args()
    if args.quick:
        args.tenants, args.rounds = 1, 1
    odoo_bin = os.environ.get("SAASODOO_ODOO_BIN") or STANDIN
    print(f"Odoo: {odoo_bin}{'' if os.environ.get('SAASODOO_ODOO_BIN') else ' (the stand-in)'}")

    deployed = pause_deployed_runner()
    standin = KillBillStandin(**KILLBILL, retries=[1, 2]).start()
    created: list[str] = []
    with tempfile.TemporaryDirectory(prefix="provision-bench-") as scratch:
        try:
            print("Baseline: no headroom (a pool is brought up when a sign-up finds the others full)")
            port = args.registry_port
            baseline, baseline_waited, _ = sign_ups(Path(scratch), standin, port, args.tenants, 0, created)
            with psycopg.connect(registry_conninfo(port), autocommit=True, row_factory=dict_row) as registry:
                capacity = max(c for _, _, c in shared_pools(registry).values())
                free = free_slots(registry)
            # Two pools' worth by default; the quick run's one more than there are, so one pool is grown.
            headroom = args.headroom or (free + 1 if args.quick else 2 * capacity)
            print(f"Headroom {headroom} (pools of {capacity}): pools grown ahead of need by the pools_grow schedule")
            ready, waited, grown = sign_ups(Path(scratch), standin, port, args.tenants, headroom, created)
        finally:
            standin.stop()
            resume_deployed_runner(deployed)
    print("Template clone against odoo-bin -i, same server, same modules")
    clones, inits = template_against_init(odoo_bin, args.rounds)
    removed = remove_tenants(created, runtime=None)

    p50, p95 = percentile(ready, 0.5), percentile(ready, 0.95)
    baseline_ratio = percentile(baseline, 0.95) / percentile(baseline, 0.5)
    print(f"  p95 / p50: {p95 / p50:.2f} with headroom {headroom}, {baseline_ratio:.2f} without; sign-ups placed on"
          f" a pool being brought up: {waited} of {len(ready)} with, {baseline_waited} of {len(baseline)} without;"
          f" pools grown ahead of need: {grown}")  # fmt: skip
    # The -i path end to end: the same sign-up, initialising by odoo-bin -i where the template path clones.
    with_init = percentile(ready, 0.5) - percentile(clones, 0.5) + percentile(inits, 0.5)
    speedup = with_init / percentile(ready, 0.5)
    print(f"  -i path, sign-up -> login page (p50, estimated): {with_init:.1f} s; the initialisation alone "
          f"{percentile(inits, 0.5) / max(percentile(clones, 0.5), 1e-6):.0f}x the clone")  # fmt: skip
    print(f"goal sign-up to login page p95: {p95:.1f} s vs {GOAL_P95_SECONDS:.0f} s — "
          f"{'met' if p95 <= GOAL_P95_SECONDS else 'NOT met'}")  # fmt: skip
    print(f"goal sign-up p95 within {GOAL_P95_OVER_P50:g}x its p50: {p95 / p50:.2f}x vs {GOAL_P95_OVER_P50:g}x — "
          f"{'met' if p95 <= GOAL_P95_OVER_P50 * p50 else 'NOT met'}")  # fmt: skip
    print(f"goal template path against the -i path: {speedup:.1f}x vs {GOAL_SPEEDUP:.0f}x — "
          f"{'met' if speedup >= GOAL_SPEEDUP else 'NOT met'}")  # fmt: skip
    return 0 if removed else 1


if __name__ == "__main__":
    sys.exit(main())
