"""Tenant transitions as the webhook runner runs them: one ansible-runner run of each lifecycle playbook.

For N tenants on each runtime (`none`: the database only; `process`: the stand-in Odoo under supervisord behind
nginx), the run time of provision, suspend, resume, an in-place plan change (basic-test-trial -> basic-monthly,
same db_type and modules) and terminate, p50/p95, beside ansible-runner's start-up with a one-task playbook
measured in the same run with the jobs' inventory (the registry's inventory plugin included): a playbook whose one
task, `ansible.builtin.ping`, runs on the platform host as a job's first task does, so it pays what any job that
touches a host pays (ansible-playbook's start, the inventory, the connection and its teardown); the start-up goals
read it. Beside it, for the record, the same with a `meta: noop` task, which Ansible's strategy handles without a
worker or a connection. The tenants are purged at the end.

A provision that finds every shared pool full brings up a new server first (placement's auto-grow: initdb, a
PgBouncer, the template), a one-off cost of the fleet rather than of the tenant: such runs are counted and shown
in a row of their own, and the provision goals are read from the others.

Usage: bench/lifecycle.py [--tenants N] [--quick]   (needs the local platform up: playbooks/site.yml)
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
from bench.runner import percentile, registry_conninfo, row  # noqa: E402
from tests.integration.conftest import remove_tenants  # noqa: E402
from webhook_runner.execution import job_environment  # noqa: E402

PLAYBOOK_COMMAND = REPO / "webhook_runner/ansible-playbook"  # the runner's own, as its jobs run
TRANSITIONS = (  # (label, playbook, extra vars)
    ("provision", "tenant_provision.yml", {"plan": "basic-test-trial"}),
    ("suspend", "tenant_suspend.yml", {}),
    ("resume", "tenant_resume.yml", {}),
    ("change plan, in place", "tenant_change_plan.yml", {"plan": "basic-monthly"}),
    ("terminate", "tenant_terminate.yml", {}),
)
GOALS = {  # (runtime, transition): p95 seconds
    ("none", "provision"): 5.0,
    ("process", "provision"): 10.0,
    ("none", "suspend"): 4.0,
    ("none", "resume"): 4.0,
    ("process", "suspend"): 4.0,
    ("process", "resume"): 4.0,
}
GOAL_STARTUP_FACTOR = 3.0  # suspend and resume within 3x ansible-runner's one-task start-up
REGISTRY_PORT = 55432  # inventories/local/host_vars/platform-db.yml


def server_count() -> int:
    with psycopg.connect(registry_conninfo(REGISTRY_PORT), autocommit=True) as conn:
        return conn.execute("SELECT count(*) FROM registry.db_servers").fetchone()[0]


def run(scratch: Path, playbook: Path, extravars: dict, inventory: str) -> float:
    """Seconds one ansible-runner run of `playbook` took; fails loudly with its output."""
    started = time.perf_counter()
    result = ansible_runner.run(
        private_data_dir=str(scratch), project_dir=str(REPO), binary=str(PLAYBOOK_COMMAND), cmdline=str(playbook),
        inventory=inventory, extravars=extravars, quiet=True, suppress_env_files=True,
        envvars=job_environment(REPO),  # the runner's jobs' own: the audit callback, no tenant hosts
    )  # fmt: skip
    seconds = time.perf_counter() - started
    if result.rc != 0:
        raise RuntimeError(f"{playbook.name} {extravars} failed (rc {result.rc}):\n{result.stdout.read()[-4000:]}")
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=10)
    parser.add_argument(
        "--quick", action="store_true", help="1 tenant per runtime, 1 start-up each (tests/integration)"
    )
    args = parser.parse_args()
    tenants = 1 if args.quick else args.tenants
    run_id = uuid.uuid4().hex[:6]
    inventory = str(REPO / "inventories/local")
    created: dict[str, list[str]] = {"none": [], "process": []}
    times: dict[tuple[str, str], list[float]] = {}
    startups: dict[str, list[float]] = {"one task": [], "noop": []}
    try:
        with tempfile.TemporaryDirectory(prefix="lifecycle-bench-") as scratch:
            one_task = Path(scratch) / "one_task.yml"
            one_task.write_text("- hosts: platform\n  gather_facts: false\n  tasks:\n    - ansible.builtin.ping:\n")
            noop = Path(scratch) / "noop.yml"
            noop.write_text("- hosts: platform\n  gather_facts: false\n  tasks:\n    - ansible.builtin.meta: noop\n")
            for _ in range(1 if args.quick else max(3, tenants)):  # alternated: the machine's speed wanders
                startups["one task"].append(run(Path(scratch), one_task, {}, inventory))
                startups["noop"].append(run(Path(scratch), noop, {}, inventory))
            for runtime in ("none", "process"):
                for n in range(tenants):
                    tenant = f"lc-{run_id}-{runtime[0]}{n}"
                    created[runtime].append(tenant)
                    for label, playbook, extra in TRANSITIONS:
                        extravars = {"tenant_id": tenant, "saasodoo_runtime_backend": runtime, **extra}
                        # Only its own provision grows the fleet (make integration runs other tests meanwhile).
                        servers = server_count() if label == "provision" else None
                        seconds = run(Path(scratch), REPO / "playbooks" / playbook, extravars, inventory)
                        if servers is not None and server_count() > servers:
                            label = f"{label}, with a new server"
                        times.setdefault((runtime, label), []).append(seconds)
                        print(f"  {tenant}: {label} {seconds:.1f} s", flush=True)
    finally:
        removed = all([remove_tenants(ids, runtime=runtime) for runtime, ids in created.items()])

    print(f"Tenant transitions, one ansible-runner run each, {tenants} tenant(s) per runtime")
    for (runtime, label), values in times.items():
        print(row(f"{label} (runtime {runtime})", values, "s", 1.0))
    print(row("baseline: one-task playbook (ping) start-up", startups["one task"], "s", 1.0))
    print(row("  a meta: noop task's (no connection)", startups["noop"], "s", 1.0))
    floor = percentile(startups["one task"], 0.5)
    noop = percentile(startups["noop"], 0.5)
    against_noop = ", ".join(
        f"{label}-{runtime} {percentile(times[(runtime, label)], 0.95) / noop:.1f}x"
        for runtime in ("none", "process") for label in ("suspend", "resume")
    )  # fmt: skip
    print(f"The start-up goals read the one-task playbook's p50 ({floor:.2f} s).")
    print(f"  For the record, p95 against the no-op's p50 ({noop:.2f} s): {against_noop}")
    for (runtime, label), goal in GOALS.items():
        if (runtime, label) not in times:  # every provision of the run brought up a server
            print(f"goal {label}-{runtime}-p95: no run without a new server — NOT met")
            continue
        p95 = percentile(times[(runtime, label)], 0.95)
        print(f"goal {label}-{runtime}-p95: {p95:.1f} s vs {goal:g} s — {'met' if p95 <= goal else 'NOT met'}")
    for runtime in ("none", "process"):
        for label in ("suspend", "resume"):
            factor = percentile(times[(runtime, label)], 0.95) / floor
            verdict = "met" if factor <= GOAL_STARTUP_FACTOR else "NOT met"
            print(f"goal {label}-{runtime}-vs-startup: {factor:.1f}x vs {GOAL_STARTUP_FACTOR:g}x — {verdict}")
    return 0 if removed else 1


if __name__ == "__main__":
    sys.exit(main())
