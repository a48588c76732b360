"""The schedules' jobs run niced (webhook_runner/execution.py BACKGROUND_NICENESS, through the runner's
ansible-playbook wrapper), a customer's at the worker's own priority."""

import os
import subprocess
from pathlib import Path

import pytest

from webhook_runner.execution import BACKGROUND_NICENESS, PLAYBOOK_COMMAND, is_background

# Stands for ansible-playbook on PATH: prints the niceness and the session's scheduling group it was started with.
FAKE_PLAYBOOK = '#!/bin/sh\necho "nice $(nice)"; cat /proc/self/autogroup 2>/dev/null || echo "no autogroup"\n'


@pytest.mark.parametrize(
    ("action", "account_id", "background"),
    [
        ("pools_grow", None, True),
        ("servers_probe", None, True),
        ("backup", "account-1", True),  # queued by the tenant_backups schedule
        ("purge", "account-1", True),
        ("provision", "account-1", False),
        ("change_plan", "account-1", False),
        ("resume", "account-1", False),
    ],
)
def test_the_schedules_jobs_are_the_background(action, account_id, background):
    assert is_background({"action": action, "account_id": account_id}) is background


def run_wrapper(tmp_path: Path, env: dict[str, str], new_session: bool) -> str:
    fake = tmp_path / "ansible-playbook"
    fake.write_text(FAKE_PLAYBOOK)
    fake.chmod(0o755)
    return subprocess.run(
        ["sh", str(PLAYBOOK_COMMAND), "site.yml"],
        env={**os.environ, **env, "PATH": f"{tmp_path}:{os.environ['PATH']}"},
        start_new_session=new_session,  # as ansible-runner (pexpect) starts it
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def test_a_background_job_runs_niced_in_a_scheduling_group_niced_too(tmp_path):
    output = run_wrapper(tmp_path, {"SAASODOO_NICENESS": str(BACKGROUND_NICENESS)}, new_session=True)
    assert f"nice {os.nice(0) + BACKGROUND_NICENESS}" in output
    if Path("/proc/self/autogroup").exists():
        assert output.rstrip().endswith(f"nice {BACKGROUND_NICENESS}"), output


def test_a_customers_job_keeps_the_workers_priority(tmp_path):
    output = run_wrapper(tmp_path, {}, new_session=True)
    assert f"nice {os.nice(0)}\n" in output
    if Path("/proc/self/autogroup").exists():
        assert output.rstrip().endswith("nice 0"), output


def test_a_wrapper_outside_a_session_of_its_own_leaves_the_callers_group_alone(tmp_path):
    autogroup = Path("/proc/self/autogroup")
    if not autogroup.exists():
        pytest.skip("no scheduling groups by session on this kernel")
    before = autogroup.read_text()
    run_wrapper(tmp_path, {"SAASODOO_NICENESS": str(BACKGROUND_NICENESS)}, new_session=False)
    assert autogroup.read_text() == before
