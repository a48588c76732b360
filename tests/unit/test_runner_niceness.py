"""The schedules' jobs run niced (webhook_runner/execution.py niceness_environment, through the runner's
ansible-playbook wrapper), a customer's at the worker's own priority; a run that starts servers only in its session,
which the servers leave."""

import os
import subprocess
from pathlib import Path

import pytest

from webhook_runner.execution import BACKGROUND_NICENESS, PLAYBOOK_COMMAND, niceness_environment

# Stands for ansible-playbook on PATH: prints the niceness and the session's scheduling group it was started with,
# then those of a server it starts, which (as pg_ctl's postmaster and PgBouncer's --daemon do) begins a session.
# A process in the kernel's default group (init's session, where a CI job may run) reads /proc/self/autogroup empty.
FAKE_PLAYBOOK = """#!/bin/sh
report='echo "nice $(nice)"; echo "group $(cat /proc/self/autogroup 2>/dev/null)"'
sh -c "$report"
setsid --wait sh -c "$report"
"""
AUTOGROUP = Path("/proc/self/autogroup")
NICED = str(BACKGROUND_NICENESS)
BACKUP = {"action": "backup", "account_id": "account-1"}  # queued by the tenant_backups schedule
SIGN_UP = {"action": "provision", "account_id": "account-1"}
POOLS_GROW = {"action": "pools_grow", "account_id": None}


@pytest.mark.parametrize(
    ("action", "account_id", "environment"),
    [
        ("servers_probe", None, {"SAASODOO_SESSION_NICENESS": NICED, "SAASODOO_NICENESS": NICED}),
        ("base_backups", None, {"SAASODOO_SESSION_NICENESS": NICED, "SAASODOO_NICENESS": NICED}),
        ("backup", "account-1", {"SAASODOO_SESSION_NICENESS": NICED, "SAASODOO_NICENESS": NICED}),  # tenant_backups'
        ("purge", "account-1", {"SAASODOO_SESSION_NICENESS": NICED, "SAASODOO_NICENESS": NICED}),
        ("pools_grow", None, {"SAASODOO_SESSION_NICENESS": NICED}),  # its servers must not inherit a niceness
        ("provision", "account-1", {}),
        ("change_plan", "account-1", {}),
        ("resume", "account-1", {}),
    ],
)
def test_the_schedules_jobs_are_niced_and_the_customers_are_not(action, account_id, environment):
    assert niceness_environment({"action": action, "account_id": account_id}) == environment


def run_wrapper(tmp_path: Path, env: dict[str, str], new_session: bool = True) -> str:
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


def niceness_and_group(output: str) -> tuple[int, str]:
    first, second = output.splitlines()[:2]
    return int(first.removeprefix("nice ")), second.removeprefix("group ")


def group_niceness(group: str) -> int:
    assert group.startswith("/autogroup-"), group
    return int(group.rsplit(" nice ", 1)[1])


def test_a_background_run_is_niced_and_so_is_its_session(tmp_path):
    niceness, group = niceness_and_group(run_wrapper(tmp_path, niceness_environment(BACKUP)))
    assert niceness == min(19, os.nice(0) + BACKGROUND_NICENESS)
    if AUTOGROUP.exists() and os.geteuid() == 0:  # root's writes are not rate-limited
        assert group_niceness(group) == BACKGROUND_NICENESS


def test_a_run_that_starts_servers_is_niced_in_its_session_only_which_its_servers_leave(tmp_path):
    output = run_wrapper(tmp_path, niceness_environment(POOLS_GROW))
    niceness, group = niceness_and_group(output)
    server_niceness, server_group = niceness_and_group("\n".join(output.splitlines()[2:]))
    assert niceness == server_niceness == os.nice(0), "a niceness of the run's processes would pass to its servers"
    if AUTOGROUP.exists() and os.geteuid() == 0:
        assert group_niceness(group) == BACKGROUND_NICENESS
        assert group_niceness(server_group) == 0 and server_group != group


def test_a_customers_job_keeps_the_workers_priority(tmp_path):
    niceness, group = niceness_and_group(run_wrapper(tmp_path, niceness_environment(SIGN_UP)))
    assert niceness == os.nice(0)
    if AUTOGROUP.exists():
        assert group_niceness(group) == 0


def test_a_wrapper_outside_a_session_of_its_own_leaves_the_callers_group_alone(tmp_path):
    if not AUTOGROUP.exists():
        pytest.skip("no scheduling groups by session on this kernel")
    before = AUTOGROUP.read_text()
    output = run_wrapper(tmp_path, niceness_environment(BACKUP), new_session=False)
    assert AUTOGROUP.read_text() == before
    assert niceness_and_group(output)[1] == before.strip()
