"""A process-runtime tenant's CPU and memory ceiling (module_utils/tenant_limits.py): its names, and its control group
made, changed live and removed in this machine's own cgroup file system."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from ansible_collections.saasodoo.platform.plugins.module_utils.tenant_limits import (
    CGROUP_ROOT,
    MIB,
    CgroupError,
    empty_group,
    ensure_group,
    layout,
    limits_names,
    remove_group,
)


def test_names_come_from_the_port_and_the_runtime_never_the_tenant_id():
    names = limits_names(20069, "/var/lib/saasodoo/runtime")
    assert names["cgroup"].startswith("saasodoo/") and names["cgroup"].endswith("-20069")
    assert names["slice"].startswith("saasodoo-tenants-") and names["slice"].endswith("_20069.slice")
    assert limits_names(20069, "/srv/other-runtime") != names  # two runtimes on one machine stay apart
    with pytest.raises(ValueError, match="not a TCP port"):
        limits_names(0, "/var/lib/saasodoo/runtime")


@pytest.fixture
def group():
    """A group of this test's own in the machine's cgroup file system (v1 here: a cpu and a memory hierarchy)."""
    try:
        version = layout()
    except CgroupError as error:
        pytest.skip(f"this host has no cgroup controllers to try: {error}")
    # A parent of this process's own: two test processes (pytest -n 2) would remove a shared one under each other.
    parent_name = f"saasodoo-unit-test-{os.getpid()}"
    name = f"{parent_name}/group"
    yield name, version
    remove_group(name)
    for controller in ("cpu", "memory") if version == "v1" else ("",):
        parent = Path(CGROUP_ROOT, controller, parent_name)
        if parent.is_dir():
            parent.rmdir()


def value(name: str, version: str, controller: str, file: str) -> str:
    return Path(CGROUP_ROOT, controller if version == "v1" else "", name, file).read_text().strip()


def test_a_group_gets_the_plans_ceiling_changes_it_live_and_goes(group):
    name, version = group
    assert ensure_group(name, 1, 512)
    cpu = ("cpu", "cpu.cfs_quota_us") if version == "v1" else ("cpu", "cpu.max")
    memory = ("memory", "memory.limit_in_bytes") if version == "v1" else ("memory", "memory.max")
    assert value(name, version, *cpu).split()[0] == "100000"  # one core of each 100 ms
    assert value(name, version, *memory) == str(512 * MIB)
    assert value(name, version, "cpu", "cpu.shares" if version == "v1" else "cpu.weight") in ("1024", "100")
    assert ensure_group(name, 1, 512) == []  # nothing to do the second time
    leaf = Path(CGROUP_ROOT, "cpu" if version == "v1" else "", name)
    assert (leaf.stat().st_mode & 0o777, leaf.parent.stat().st_mode & 0o777) == (0o700, 0o700)  # no tenant looks in

    # A process in it stays in it as the ceiling changes, up and down.
    sleeper = subprocess.Popen(
        ["cgexec", "-g", f"cpu,memory:{name}", "sh", "-c", "cat /proc/$$/cgroup; echo in; exec sleep 30"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        lines = list(iter(sleeper.stdout.readline, "in\n"))
        assert sum(line.rstrip().endswith(f":/{name}") for line in lines) == (2 if version == "v1" else 1), lines
        assert ensure_group(name, 2, 2048)
        assert value(name, version, *cpu).split()[0] == "200000"
        assert value(name, version, *memory) == str(2048 * MIB)
        # Before a restart, a lower memory ceiling waits (the running Odoo may hold more); CPU follows at once.
        assert ensure_group(name, 0.5, 256, lower_memory=False)
        assert value(name, version, *cpu).split()[0] == "50000"
        assert value(name, version, *memory) == str(2048 * MIB)
        assert ensure_group(name, 0.5, 256)
        assert value(name, version, *memory) == str(256 * MIB)
        # What is left in a group that goes is killed first.
        assert remove_group(name)
        assert sleeper.wait(timeout=10) == -9
    finally:
        sleeper.kill()
        sleeper.wait()
    assert not leaf.exists()
    assert remove_group(name) == []


def test_a_stopped_tenants_group_is_emptied_of_what_it_left_running(group):
    """A process the tenant detached from its programs (a new session, its parent gone) is still in its group, and
    is killed when the group is emptied; the group stays, with its ceiling."""
    name, version = group
    ensure_group(name, 1, 512)
    detached = subprocess.Popen(
        ["cgexec", "-g", f"cpu,memory:{name}", "setsid", "sh", "-c", "echo in; exec sleep 30"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert detached.stdout.readline() == "in\n"  # in its group: cgexec moves itself, then execs
        procs = Path(CGROUP_ROOT, "cpu" if version == "v1" else "", name, "cgroup.procs")
        assert procs.read_text().split() == [str(detached.pid)]
        assert empty_group(name) and procs.read_text().split() == []
        assert detached.wait(timeout=10) == -9
    finally:
        detached.kill()
        detached.wait()
    assert empty_group(name) == [] and value(name, version, "memory", "memory.limit_in_bytes" if version == "v1"
                                                else "memory.max") == str(512 * MIB)  # fmt: skip


def test_check_mode_says_what_it_would_do_and_does_nothing(group):
    name, version = group
    assert ensure_group(name, 1, 512, check_mode=True)
    assert not Path(CGROUP_ROOT, "cpu" if version == "v1" else "", name).exists()
