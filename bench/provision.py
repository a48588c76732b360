"""Sign-up to a working Odoo: from the customer's sign-up at Kill Bill to the tenant's login page through nginx.

1. End to end, through the real path: the Kill Bill stand-in notifies the webhook runner (one worker,
   ansible-runner, tenant_provision.yml with the process runtime): the database is cloned from its golden
   template, Odoo is started under supervisord, and the clock stops when nginx serves the tenant's login form.
   p50/p95 over N tenants, beside the provision job's own run time from the jobs table.
2. What the template saves: initialising a database the way a platform without templates must (odoo-bin -i with
   the plan's modules, into an empty database) against what a clone costs (CREATE DATABASE … TEMPLATE and the
   REASSIGN OWNED that gives it to its tenant), both on the same pool server, timed in the same run.

The Odoo is the local inventory's (the stand-in), or a real one when SAASODOO_ODOO_BIN is set (make bench runs
the stand-in; the goals below are for a real Odoo 18 on this machine).
Usage: bench/provision.py [--tenants N] [--quick]   (needs the local platform up: playbooks/site.yml)
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
from bench.runner import KILLBILL, percentile, provision_job_seconds, row, start_stack  # noqa: E402
from tests.e2e.killbill_api import KillBillAPI  # noqa: E402
from tests.integration.conftest import remove_tenants, superuser  # noqa: E402
from tests.integration.runner_stack import RunnerStack, pause_deployed_runner, resume_deployed_runner  # noqa: E402
from tests.standins.killbill.killbill_standin import KillBillStandin  # noqa: E402
from tests.tenant_web import opener, tenant_url  # noqa: E402

STANDIN = f"/usr/bin/python3 {REPO}/tests/standins/odoo/odoo-bin"
GOAL_P95_SECONDS = 15.0
GOAL_SPEEDUP = 4.0


def login_form(tenant_id: str) -> bool:
    try:
        with opener().open(tenant_url(tenant_id), timeout=5) as response:
            return response.status == 200 and "oe_login_form" in response.read().decode(errors="replace")
    except (urllib.error.URLError, OSError):
        return False


def sign_up_to_login_page(stack: RunnerStack, standin: KillBillStandin, tenants: int, created: list[str]) -> list:
    api = KillBillAPI(standin.url, **KILLBILL)
    api.register_callback(stack.callback)
    standin.wait_idle(timeout=30)
    stack.settle()
    ready, runs = [], []
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
            stack.settle()
            runs.append(provision_job_seconds(registry, tenant))
            print(f"  {tenant}: login page after {ready[-1]:.1f} s", flush=True)
    print(row("sign-up at Kill Bill -> login page through nginx", ready, "s", 1.0))
    print(row("tenant_provision.yml job run time (jobs table)", runs, "s", 1.0))
    return ready


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
        stack = start_stack(Path(scratch), 58292, standin, args.registry_port, {})
        try:
            print("Sign-up -> login page, process runtime, template clone")
            ready = sign_up_to_login_page(stack, standin, args.tenants, created)
        finally:
            stack.stop()
            standin.stop()
            resume_deployed_runner(deployed)
    print("Template clone against odoo-bin -i, same server, same modules")
    clones, inits = template_against_init(odoo_bin, args.rounds)
    removed = remove_tenants(created, runtime=None)

    p95 = percentile(ready, 0.95)
    # The -i path end to end: the same sign-up, initialising by odoo-bin -i where the template path clones.
    with_init = percentile(ready, 0.5) - percentile(clones, 0.5) + percentile(inits, 0.5)
    speedup = with_init / percentile(ready, 0.5)
    print(f"  -i path, sign-up -> login page (p50, estimated): {with_init:.1f} s; the initialisation alone "
          f"{percentile(inits, 0.5) / max(percentile(clones, 0.5), 1e-6):.0f}x the clone")  # fmt: skip
    print(f"goal sign-up to login page p95: {p95:.1f} s vs {GOAL_P95_SECONDS:.0f} s — "
          f"{'met' if p95 <= GOAL_P95_SECONDS else 'NOT met'}")  # fmt: skip
    print(f"goal template path against the -i path: {speedup:.1f}x vs {GOAL_SPEEDUP:.0f}x — "
          f"{'met' if speedup >= GOAL_SPEEDUP else 'NOT met'}")  # fmt: skip
    return 0 if removed else 1


if __name__ == "__main__":
    sys.exit(main())
