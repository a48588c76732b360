"""Time a no-change `site.yml` run on inventories/local, before and after N tenants, beside Ansible's own floor.

A no-change run must cost the same whatever the number of tenants: the tenants' hosts (the registry inventory
plugin lists them) add no task. So the run is timed, and its tasks counted, with the fleet as it is, then again
with N more tenants (runtime none, provisioned in parallel; pools sized for them with
saasodoo_pool_capacity_tenants, set back at the end; --quick leaves the pools as they are). A fleet smaller than the
goal's five servers is first brought to five, a dedicated tenant's server at a time (not --quick). Baseline, same run,
same hosts: `ansible postgres_servers -m ansible.builtin.ping` (process start-up, inventory, one module per host).
Usage: bench/site_noop.py [--runs N] [--tenants N] [--quick]   (needs the platform converged once: make demo)
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "collections"), str(REPO / "tests")]  # as pytest sees them
from tests.integration.conftest import PlaybookRun, remove_tenants  # noqa: E402

ENV = {**os.environ, "PATH": f"{REPO / '.venv/bin'}:{os.environ['PATH']}", "ANSIBLE_CONFIG": str(REPO / "ansible.cfg")}
GOAL_SECONDS, GOAL_SERVERS, GOAL_TENANTS = 10.0, 5, 50
TASKS = re.compile(r"\sok=(\d+)\s.*\sskipped=(\d+)\s")  # a recap line's tasks run and skipped on one host


def run(argv: list[str]) -> tuple[float, PlaybookRun]:
    started = time.perf_counter()
    result = subprocess.run(argv, cwd=REPO, env=ENV, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed:\n{result.stdout[-3000:]}{result.stderr[-2000:]}")
    return elapsed, PlaybookRun(result.returncode, result.stdout)


def no_change_site(capacity: list[str], runs: int, label: str) -> tuple[list[float], int]:
    """Seconds of each no-change site.yml run, and the tasks one run went through (ok + skipped, every host)."""
    times, tasks = [], 0
    for i in range(runs):
        seconds, result = run(["ansible-playbook", "playbooks/site.yml", *capacity])
        recap = result.recap
        if any(stats["changed"] for stats in recap.values()):
            sys.exit(f"site.yml changed something ({label}): not a no-change run")
        times.append(seconds)
        tasks = sum(int(ok) + int(skipped) for ok, skipped in TASKS.findall(result.output))
        print(f"  site.yml, {label}: run {i + 1}/{runs} {seconds:.2f} s, {tasks} tasks", file=sys.stderr, flush=True)
    return times, tasks


def server_count() -> int:
    return len(run(["ansible", "postgres_servers", "--list-hosts"])[1].output.splitlines()) - 1


def provision(tenant: str, capacity: list[str], plan: str = "basic-monthly") -> None:
    run(["ansible-playbook", "playbooks/tenant_provision.yml", "-e", f"tenant_id={tenant}", "-e", f"plan={plan}",
         "-e", "saasodoo_runtime_backend=none", *capacity])  # fmt: skip


def line(label: str, times: list[float], tasks: int | str) -> str:
    return f"{label:44} {statistics.median(times):9.2f} {min(times):7.2f} {max(times):7.2f} {tasks:>7}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tenants", type=int, default=GOAL_TENANTS)
    parser.add_argument("--quick", action="store_true", help="1 run each, 2 tenants (tests/integration)")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.tenants = 1, 2
    # Every pool sized to fit them, so none grows the fleet: the servers stay the same. Not in a quick run, which
    # proves the benchmark, not the figure: the pools as they are (a server grown meanwhile is converged by then).
    capacity = [] if args.quick else ["-e", f"saasodoo_pool_capacity_tenants={args.tenants + 3}"]
    run_id = uuid.uuid4().hex[:6]
    created: list[str] = []  # removed at the end, whichever provisions got anywhere
    tenants = [f"site-{run_id}-{n}" for n in range(args.tenants)]
    try:
        # The goal's fleet: a dedicated tenant's provision brings up a server of its own (not --quick: a fresh local
        # platform has three). The servers stay up after the benchmark, as placement's do; their tenants go.
        missing = 0 if args.quick else GOAL_SERVERS - server_count()
        for n in range(missing):
            print(
                f"bringing the fleet to {GOAL_SERVERS} servers: a dedicated tenant, {n + 1}/{missing} ...", flush=True
            )
            created.append(f"site-{run_id}-dedicated-{n}")
            provision(created[-1], capacity, plan="premium-monthly")
        if capacity:
            print("converging once (pools sized for the tenants) so the timed runs change nothing ...", flush=True)
            run(["ansible-playbook", "playbooks/site.yml", *capacity])
        servers = server_count()
        before, tasks_before = no_change_site(capacity, args.runs, "the fleet as it is")
        print(f"provisioning {args.tenants} tenants (runtime none, 2 at a time) ...", flush=True)
        created += tenants
        with ThreadPoolExecutor(max_workers=2) as pool:
            list(pool.map(lambda t: provision(t, capacity), tenants))
        grown = server_count()  # placing the tenants may have made a server: its tasks are not the tenants'
        after, tasks_after = no_change_site(capacity, args.runs, f"{args.tenants} more tenants")
        pings = [run(["ansible", "postgres_servers", "-m", "ansible.builtin.ping"])[0] for _ in range(args.runs)]
    finally:
        removed = remove_tenants(created, parallel=2)
        if capacity:
            run(["ansible-playbook", "playbooks/site.yml"])  # the pools' capacity back to the inventory's
    print(f"{'case':44} {'median s':>9} {'min s':>7} {'max s':>7} {'tasks':>7}   ({args.runs} runs, {servers} servers)")
    print(line("site.yml, no change, the fleet as it is", before, tasks_before))
    print(line(f"site.yml, no change, {args.tenants} more tenants", after, tasks_after))
    print(line("baseline: ansible postgres_servers -m ping", pings, "-"))
    seconds = statistics.median(after)
    verdict = "met" if seconds <= GOAL_SECONDS else "NOT met"
    print(f"goal no-change site.yml ({servers} servers, {args.tenants} more tenants): {seconds:.1f} s vs "
          f"{GOAL_SECONDS:.0f} s ({GOAL_SERVERS} servers, {GOAL_TENANTS} tenants) — {verdict}")  # fmt: skip
    added = tasks_after - tasks_before
    grew = f" (not like for like: placing the tenants took the fleet from {servers} to {grown} servers)"
    print(f"goal tasks the tenants add to a no-change site.yml: {added} vs 0 — {'met' if added <= 0 else 'NOT met'}"
          f"{grew if grown != servers else ''}")  # fmt: skip
    return 0 if removed else 1


if __name__ == "__main__":
    sys.exit(main())
