"""The webhook runner's two latencies, each beside a baseline from the same run.

1. Acknowledgement: Kill Bill's POST to /killbill/<token> answered by gunicorn after the durable write to the
   registry inbox (INSERT + NOTIFY, committed), p50/p99 over N notifications posted the way Kill Bill does
   (a new connection each). Baseline: the same POST with a wrong token (HTTP, gunicorn, Flask, no write).
2. Event -> tenant database ready, runtime none: from the customer's sign-up at Kill Bill to the tenant's own
   credentials opening its database through its pool's PgBouncer (stand-in sends the notifications, one
   worker, ansible-runner, tenant_provision.yml). Beside it: ansible-runner's start-up cost (a playbook with
   one no-op task through ansible_runner.run), and the bare provision playbook run time from the job rows.
3. Throughput: N sign-ups posted at once to a runner with the deployed shape (2 workers, the default job
   limits), time until all N tenants are active, beside N x one provision job run alone (from 2.).
Both 2. and 3. run on pools with room for every sign-up, as production's pools of 150 tenants have: the local
inventory's pools hold 3, and then two sign-ups in three would bring up a server of their own (about 10 s each).
The pools are sized with saasodoo_pool_capacity_tenants and set back at the end; the servers brought up during
the burst are counted and printed. --quick leaves the pools as they are (it proves the benchmark, not the figure).
Usage: bench/runner.py [--notifications N] [--tenants N] [--burst N] [--quick]
(needs the local platform up: ansible-playbook playbooks/site.yml; stops the deployed runner while it runs)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from pathlib import Path

import ansible_runner
import psycopg

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "collections"), str(REPO / "tests")]  # as pytest sees them
from ansible_collections.saasodoo.platform.plugins.module_utils.secrets import derive_password  # noqa: E402
from tests.e2e.killbill_api import KillBillAPI  # noqa: E402
from tests.integration.conftest import remove_tenants, run_playbook  # noqa: E402
from tests.integration.runner_stack import (  # noqa: E402
    ADMIN_TOKEN,
    INBOUND_TOKEN,
    METRICS_TOKEN,
    RunnerStack,
    pause_deployed_runner,
    resume_deployed_runner,
    write_settings,
)
from tests.standins.killbill.killbill_standin import (  # noqa: E402
    KillBillStandin,
    encode_notification,
    post_notification,
)
from webhook_runner.schedules import SCHEDULES  # noqa: E402

STATE = REPO / ".state/local"
KILLBILL = {"username": "admin", "password": "bench-password", "api_key": "saasodoo", "api_secret": "bench-secret"}


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def row(label: str, values: list[float], unit: str = "ms", scale: float = 1000.0) -> str:
    p50, p95, p99 = (percentile(values, p) * scale for p in (0.5, 0.95, 0.99))
    return f"  {label:<52} n={len(values):<5} p50 {p50:8.1f} {unit}  p95 {p95:8.1f} {unit}  p99 {p99:8.1f} {unit}"


def registry_conninfo(port: int) -> str:
    secret = (STATE / "secrets/platform_secret").read_text().strip()
    password = derive_password(secret, "registry@saasodoo_registry")
    return f"host=127.0.0.1 port={port} dbname=saasodoo_registry user=saasodoo_registry password={password}"


def start_stack(
    state: Path,
    port: int,
    standin: KillBillStandin,
    registry_port: int,
    extravars: dict,
    workers: int = 1,
    schedules: dict | None = None,
) -> RunnerStack:
    """A runner of the benchmark's own on port, against the Kill Bill stand-in, started; no periodic job within the
    figures but `schedules`."""
    settings = {
        "registry_conninfo": registry_conninfo(registry_port), "inbound_token": INBOUND_TOKEN,
        "admin_token": ADMIN_TOKEN, "metrics_token": METRICS_TOKEN, "killbill": {"url": standin.url, **KILLBILL},
        "project_dir": str(REPO), "inventory": str(REPO / "inventories/local"),
        "artifacts_dir": str(state / "artifacts"), "playbook_extravars": extravars, "reconcile_interval_seconds": 0,
        "poll_seconds": 1, "schedules": {**dict.fromkeys(SCHEDULES, 0), **(schedules or {})},
    }  # fmt: skip
    write_settings(state / "settings.json", settings)
    stack = RunnerStack(state / "settings.json", port, workers=workers, registry_conninfo=settings["registry_conninfo"],
                        log_dir=state)  # fmt: skip
    stack.start()
    return stack


def provision_job_seconds(registry, tenant: str) -> float:
    """How long the tenant's succeeded provision job ran, from the jobs table."""
    job = registry.execute(
        """SELECT extract(epoch FROM finished_at - started_at) AS s FROM registry.jobs
            WHERE tenant_id = %s AND action = 'provision' AND state = 'succeeded'""",
        (tenant,),
    ).fetchone()
    return float(job["s"])


def goal(name: str, figure: float, target: float, unit: str) -> str:
    figure = round(figure, 1)  # judged as printed
    return f"goal {name}: {figure:.1f} {unit} vs {target:g} {unit} — {'met' if figure <= target else 'NOT met'}"


def ack_latency(stack: RunnerStack, notifications: int) -> str:
    # TENANT_CONFIG_CHANGE has no account: whatever worker picks these up later discards them.
    body = encode_notification("TENANT_CONFIG_CHANGE", None, "TENANT_KVS", str(uuid.uuid4()), {"key": "CATALOG"})
    wrong = f"{stack.url}/killbill/not-the-token"
    for _ in range(20):  # warm both paths (gunicorn workers, the pool's connection)
        post_notification(stack.callback, body)
        post_notification(wrong, body)
    stored, refused = [], []
    for _ in range(notifications):
        started = time.perf_counter()
        assert post_notification(stack.callback, body) == 202
        stored.append(time.perf_counter() - started)
        started = time.perf_counter()
        assert post_notification(wrong, body) == 401
        refused.append(time.perf_counter() - started)
    print("Acknowledgement latency (goal: p99 <= 50 ms with the durable write)")
    print(row("POST /killbill/<token>: stored, committed, 202", stored))
    print(row("baseline: same POST, wrong token, 401, no write", refused))
    return goal("acknowledgement-p99", percentile(stored, 0.99) * 1000, 50, "ms")


def database_ready(
    stack: RunnerStack, standin: KillBillStandin, tenants: int, created: list[str]
) -> tuple[list[float], str]:
    api = KillBillAPI(standin.url, **KILLBILL)
    api.register_callback(stack.callback)
    standin.wait_idle(timeout=30)
    stack.settle()
    secret = (STATE / "secrets/platform_secret").read_text().strip()
    ready, runs = [], []
    run_id = uuid.uuid4().hex[:6]
    with stack.registry() as registry:
        for n in range(tenants):
            tenant = f"bench-{run_id}-{n}"
            created.append(tenant)
            started = time.perf_counter()
            api.sign_up(tenant, tenant, "basic-monthly")
            password = derive_password(secret, f"tenant:{tenant}:v1")
            while True:
                server = registry.execute(
                    """SELECT t.db_name, t.db_role, s.pgbouncer_port FROM registry.tenants t
                         JOIN registry.db_servers s ON s.name = t.db_server WHERE t.tenant_id = %s""",
                    (tenant,),
                ).fetchone()
                if server:
                    try:
                        psycopg.connect(
                            host="127.0.0.1", port=server["pgbouncer_port"], dbname=server["db_name"],
                            user=server["db_role"], password=password, connect_timeout=2, prepare_threshold=None,
                        ).close()  # fmt: skip
                        break
                    except psycopg.OperationalError:
                        pass
                if time.perf_counter() - started > 300:
                    raise TimeoutError(f"{tenant} not ready after 300 s")
                time.sleep(0.05)  # the database appears mid-playbook: poll it as a client would
            ready.append(time.perf_counter() - started)
            stack.settle()
            runs.append(provision_job_seconds(registry, tenant))

    with tempfile.TemporaryDirectory() as scratch:
        playbook = Path(scratch) / "noop.yml"
        playbook.write_text("- hosts: localhost\n  gather_facts: false\n  tasks:\n    - ansible.builtin.meta: noop\n")
        startups = []
        for _ in range(max(3, tenants)):
            started = time.perf_counter()
            result = ansible_runner.run(
                private_data_dir=scratch, playbook=str(playbook), inventory="localhost,", quiet=True,
                envvars={"ANSIBLE_CONFIG": str(REPO / "ansible.cfg")},
            )  # fmt: skip
            assert result.rc == 0, result.stdout.read()
            startups.append(time.perf_counter() - started)
    print("Event -> tenant database ready, runtime none (goal: p95 <= 5 s)")
    print(row("sign-up at Kill Bill -> tenant's credentials open its DB", ready, "s", 1.0))
    print(row("tenant_provision.yml job run time (jobs table)", runs, "s", 1.0))
    print(row("ansible-runner start-up: a one no-op task playbook", startups, "s", 1.0))
    return runs, goal("event-to-database-ready-p95", percentile(ready, 0.95), 5, "s")


def converge(*args: str) -> int:
    """site.yml, here to size the pools (or set them back): it records each server's capacity in the registry."""
    result = run_playbook("site.yml", *args)
    if result.returncode != 0:
        print(f"site.yml {' '.join(args)} failed:\n{result.output[-3000:]}", file=sys.stderr)
    return result.returncode


def database_servers(stack: RunnerStack) -> int:
    with stack.registry() as registry:
        return registry.execute("SELECT count(*) AS n FROM registry.db_servers").fetchone()["n"]


def burst(stack: RunnerStack, standin: KillBillStandin, sign_ups: int, one_provision: float, created: list[str]) -> str:
    """sign_ups customers sign up at once; seconds until every one's tenant is active."""
    api = KillBillAPI(standin.url, **KILLBILL)
    api.register_callback(stack.callback)
    run_id = uuid.uuid4().hex[:6]
    tenants = [f"bench-{run_id}-b{n}" for n in range(sign_ups)]
    created += tenants
    servers_before = database_servers(stack)
    started = time.perf_counter()
    for tenant in tenants:
        api.sign_up(tenant, tenant, "basic-monthly")
    last_report = 0.0
    with stack.registry() as registry:
        while True:
            rows = registry.execute(
                "SELECT status, count(*) AS n FROM registry.tenants WHERE tenant_id = ANY(%s) GROUP BY 1", (tenants,)
            ).fetchall()
            counts = {r["status"]: r["n"] for r in rows}
            elapsed = time.perf_counter() - started
            if counts.get("active", 0) == sign_ups:
                break
            if elapsed - last_report >= 30:
                last_report = elapsed
                print(f"  ... {elapsed:.0f} s: {counts.get('active', 0)} of {sign_ups} active", flush=True)
            if elapsed > 60 * sign_ups:
                raise TimeoutError(
                    f"only {counts.get('active', 0)} of {sign_ups} sign-ups active after {elapsed:.0f} s"
                )
            time.sleep(0.2)  # the workers are other processes: poll the registry they write
    brought_up = database_servers(stack) - servers_before
    print(f"Throughput: {sign_ups} sign-ups at once, 2 workers, default job limits (goal: 40 in <= 3 min)")
    print(f"{'all ' + str(sign_ups) + ' tenants active after the sign-ups':<58} {elapsed:8.1f} s")
    print(f"{'  database servers brought up meanwhile':<58} {brought_up:8d}")
    print(f"{'baseline: ' + str(sign_ups) + ' x one provision job run alone':<58} {sign_ups * one_provision:8.1f} s")
    return goal(f"{sign_ups} sign-ups all active", elapsed, 180 * sign_ups / 40, "s")  # 40 in 3 minutes, scaled


def run_benchmarks(args: argparse.Namespace, extravars: dict) -> tuple[list[str], bool]:
    """The three benchmarks on a runner of the benchmark's own; their goal lines, and whether the tenants went."""
    deployed = pause_deployed_runner()
    standin = KillBillStandin(**KILLBILL, retries=[1, 2]).start()
    with tempfile.TemporaryDirectory(prefix="runner-bench-") as scratch:
        stack = start_stack(Path(scratch), 58291, standin, args.registry_port, extravars)
        created: list[str] = []
        goals = []
        try:
            goals.append(ack_latency(stack, args.notifications))
            runs, ready_goal = database_ready(stack, standin, args.tenants, created)
            goals.append(ready_goal)
            stack.stop()
            stack = start_stack(Path(scratch), 58291, standin, args.registry_port, extravars, workers=2)
            goals.append(burst(stack, standin, args.burst, percentile(runs, 0.5), created))
        finally:
            stack.stop()
            standin.stop()
            removed = remove_tenants(created, parallel=2)
            resume_deployed_runner(deployed)
    return goals, removed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notifications", type=int, default=1000)
    parser.add_argument("--tenants", type=int, default=10)
    parser.add_argument("--registry-port", type=int, default=55432)
    parser.add_argument("--burst", type=int, default=40, help="sign-ups posted at once (throughput)")
    parser.add_argument("--quick", action="store_true", help="100 notifications, 1 tenant, a burst of 2")
    args = parser.parse_args()
    if args.quick:
        args.notifications, args.tenants, args.burst = 100, 1, 2

    extravars = {"saasodoo_runtime_backend": "none"}
    if not args.quick:
        extravars["saasodoo_pool_capacity_tenants"] = args.tenants + args.burst + 3
        print(f"converging once, every pool sized for {extravars['saasodoo_pool_capacity_tenants']} tenants ...")
        if converge("-e", f"saasodoo_pool_capacity_tenants={extravars['saasodoo_pool_capacity_tenants']}") != 0:
            return 1
    try:
        goals, removed = run_benchmarks(args, extravars)
    finally:
        if not args.quick and converge() != 0:  # the pools' capacity back to the inventory's
            print("site.yml did not set the pools' capacity back: run playbooks/site.yml", file=sys.stderr)
    print("\n".join(goals))
    return 0 if removed else 1


if __name__ == "__main__":
    sys.exit(main())
