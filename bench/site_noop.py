"""Time a no-change `site.yml` run on inventories/local beside the floor Ansible itself sets.

Baseline, same run, same hosts: `ansible postgres_servers -m ansible.builtin.ping` (process start-up,
inventory, one module per host). The difference is what the roles' probes cost when nothing changes.
Usage: bench/site_noop.py [runs]   (needs the platform converged once: make demo)
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PATH": f"{REPO / '.venv/bin'}:{os.environ['PATH']}", "ANSIBLE_CONFIG": str(REPO / "ansible.cfg")}


def timed(argv: list[str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(argv, cwd=REPO, env=ENV, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed:\n{result.stdout[-3000:]}{result.stderr[-2000:]}")
    if "site.yml" in argv[-1] and " changed=0 " not in result.stdout:
        sys.exit("site.yml changed something: not a no-change run; converge first (make demo)")
    return elapsed


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    print("converging once so the timed runs change nothing ...", flush=True)
    subprocess.run(["ansible-playbook", "playbooks/site.yml"], cwd=REPO, env=ENV, capture_output=True, check=True)
    cases = {
        "site.yml, no change": ["ansible-playbook", "playbooks/site.yml"],
        "baseline: ansible -m ping": ["ansible", "postgres_servers", "-m", "ansible.builtin.ping"],
    }
    listed = subprocess.run(
        ["ansible", "postgres_servers", "--list-hosts"], cwd=REPO, env=ENV, capture_output=True, text=True, check=True
    ).stdout
    hosts = len(listed.splitlines()) - 1  # after the "hosts (N):" header
    print(f"{'case':32} {'median s':>9} {'min s':>7} {'max s':>7}   ({runs} runs each, {hosts} servers)")
    for name, argv in cases.items():
        times = []
        for i in range(runs):
            times.append(timed(argv))
            print(f"  {name}: run {i + 1}/{runs} {times[-1]:.2f} s", file=sys.stderr, flush=True)
        print(f"{name:32} {statistics.median(times):9.2f} {min(times):7.2f} {max(times):7.2f}")


if __name__ == "__main__":
    main()
