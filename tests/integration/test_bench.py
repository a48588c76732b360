"""The small real version of each benchmark, so `make bench` cannot rot between releases."""

from __future__ import annotations

import subprocess
import sys

from .conftest import LocalPlatform
from conftest import REPO


def test_placement_benchmark_quick_run_prints_both_approaches(local_platform: LocalPlatform):
    run = subprocess.run(
        [sys.executable, "bench/placement.py", "--quick", "--port", str(local_platform.servers["platform-db"].port)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "counters: place(), check mode" in run.stdout
    assert "baseline: lock + count scan + choose" in run.stdout


def test_runner_benchmark_quick_run_prints_both_latencies(local_platform: LocalPlatform):
    run = subprocess.run(
        [
            sys.executable,
            "bench/runner.py",
            "--quick",
            "--registry-port",
            str(local_platform.servers["platform-db"].port),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "POST /killbill/<token>: stored, committed, 202" in run.stdout
    assert "baseline: same POST, wrong token, 401, no write" in run.stdout
    assert "sign-up at Kill Bill -> tenant's credentials open its DB" in run.stdout
    assert "ansible-runner start-up" in run.stdout
