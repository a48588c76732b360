"""Ending everything a stopped tenant's OS user runs (module_utils/tenant_processes.py), on this machine's real
processes: uids no user has, so nothing else of the machine's is in reach."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time

import pytest

from ansible_collections.saasodoo.platform.plugins.module_utils.tenant_processes import (
    kill_all_of,
    processes_of,
    remove_files_of,
)

# A process whose name (prctl PR_SET_NAME) is no text and mimics a zombie's stat line, whose first thread exits
# (SYS_exit on x86-64, the thread's alone) while another runs on: its status says zombie.
HEADLESS = (
    'import ctypes, threading, time; libc = ctypes.CDLL(None); libc.prctl(15, bytes([255]) + b") Z", 0, 0, 0);'
    " threading.Thread(target=time.sleep, args=(300,)).start(); libc.syscall(60, 0)"
)
TENANT_UID = 64_990 + os.getpid() % 4  # no user of this machine's: a second test run in parallel takes another pair
NEIGHBOUR_UID = TENANT_UID + 4


def run_as(uid: int, script: str, processes: int = 64) -> subprocess.Popen:
    """`script` under sh as `uid`, in a session of its own (detached, as a tenant's daemon would be), at most
    `processes` processes of that uid at once (RLIMIT_NPROC)."""
    return subprocess.Popen(
        ["prlimit", f"--nproc={processes}", "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
         "setsid", "sh", "-c", script],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def wait_for(predicate, seconds: float = 10.0) -> None:
    """Until `predicate()` holds, polled (the processes start on their own time)."""
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "the processes under test did not start"
        time.sleep(0.02)


@pytest.fixture
def cleanup():
    yield
    for uid in (TENANT_UID, NEIGHBOUR_UID):
        subprocess.run(["pkill", "-KILL", "-U", str(uid)], check=False)


@pytest.mark.usefixtures("cleanup")
@pytest.mark.skipif(platform.machine() != "x86_64", reason="the headless process calls x86-64's exit(2) by number")
def test_every_process_of_the_tenants_uid_dies_a_forking_one_too_and_no_one_elses():
    # Detached children and grandchildren, and a loop that forks as fast as it can up to its process limit.
    started = [run_as(TENANT_UID, "sleep 300 & (setsid sleep 300 &) ; while :; do (sleep 300 &) ; done")]
    started.append(run_as(TENANT_UID, f"exec {sys.executable} -c '{HEADLESS}'"))
    neighbour = run_as(NEIGHBOUR_UID, "sleep 300")
    wait_for(lambda: len(processes_of(TENANT_UID)) >= 10 and processes_of(NEIGHBOUR_UID))
    assert kill_all_of(TENANT_UID, TENANT_UID) >= 10
    assert processes_of(TENANT_UID) == []
    assert neighbour.poll() is None and processes_of(NEIGHBOUR_UID)  # another uid's process is out of reach
    for process in started:
        process.wait(timeout=10)  # our child, reaped here


def test_nothing_to_kill_is_no_work_and_root_is_refused():
    assert processes_of(TENANT_UID) == [] and kill_all_of(TENANT_UID, TENANT_UID) == 0
    with pytest.raises(OSError, match="root"):
        kill_all_of(0, 0)


def test_a_removed_tenant_leaves_nothing_where_every_user_writes_and_no_link_leads_root_elsewhere(tmp_path):
    shared = tmp_path / "tmp"
    shared.mkdir(mode=0o1777)
    outside = tmp_path / "root-owned"
    outside.mkdir()
    (outside / "keep").write_text("root's")
    made = {
        "report.pdf": lambda p: p.write_text("x"),
        "work": lambda p: (p.mkdir(), (p / "inner").write_text("y")),
        "link-to-roots": lambda p: p.symlink_to(outside),
    }
    for name, make in made.items():
        make(shared / name)
        for path in (shared / name, *((shared / name).glob("*") if name == "work" else ())):
            os.lchown(path, TENANT_UID, TENANT_UID)
    (shared / "neighbours").write_text("z")
    os.chown(shared / "neighbours", NEIGHBOUR_UID, NEIGHBOUR_UID)

    assert sorted(remove_files_of(TENANT_UID, (str(shared),), check_mode=True)) == sorted(
        str(shared / name) for name in made
    )
    assert len(list(shared.iterdir())) == 4  # check mode: nothing removed
    remove_files_of(TENANT_UID, (str(shared),))
    assert [path.name for path in shared.iterdir()] == ["neighbours"]
    assert (outside / "keep").read_text() == "root's"  # the link went, not what it pointed at
    with pytest.raises(OSError, match="root"):
        remove_files_of(0, (str(shared),))
