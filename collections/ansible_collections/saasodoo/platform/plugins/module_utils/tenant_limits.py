"""Each process-runtime tenant's CPU and memory ceiling: its plan's `cpu` and `memory_mb`, enforced by the kernel on
everything its Odoo runs (workers, cron, an install of modules beside it), in a control group of its own.

Two ways, by who owns the host's control groups:
- `cgroup`, a host no systemd runs (this machine): the platform makes the group in the cgroup file system itself,
  cgroup v1 (a `cpu` and a `memory` hierarchy, as here) or v2 (the unified one; written to the kernel's interface,
  not exercised on this machine), and root starts the tenant's programs in it (cgexec, from Debian's cgroup-tools).
- `systemd`, where systemd owns the tree and would undo a write of anyone else's (at its next daemon-reload): a slice
  unit per tenant with `CPUQuota=` and `MemoryMax=`, its programs started in it as transient scopes (systemd-run).

Names derive from the tenant's HTTP port and its runtime's directory, as its network namespace's do
(tenant_network.py), never from its id, which the customer chooses. The groups' directories are root's and 0700:
a tenant can neither move a process out of its group, nor make a group of its own, nor read another's usage."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time

from ansible_collections.saasodoo.platform.plugins.module_utils.tenant_network import MAX_PORT, runtime_scope_id

CGROUP_ROOT = "/sys/fs/cgroup"
PERIOD_US = 100_000  # the scheduler's default CFS period; the quota is the plan's cores of it
MIB = 1024 * 1024
DIR_MODE = 0o700
KILL_SECONDS = 10  # how long emptying a group may take before it fails
UNLIMITED = 2**60  # a memory ceiling this high is none


def limits_names(http_port: int, scope: str) -> dict:
    """The control group (relative to each hierarchy's root) and the systemd slice of the tenant whose Odoo has
    `http_port` in the runtime at `scope`. A '-' in a slice's name nests it: every tenant's is under
    saasodoo-tenants.slice."""
    port = int(http_port)
    if not 0 < port <= MAX_PORT:
        raise ValueError(f"{http_port!r} is not a TCP port: a tenant's control group needs its HTTP port")
    scope_id = runtime_scope_id(scope)
    return {"cgroup": f"saasodoo/{scope_id}-{port}", "slice": f"saasodoo-tenants-{scope_id}_{port}.slice"}


class CgroupError(Exception):
    pass


def layout(root: str = CGROUP_ROOT) -> str:
    """`v2` where the unified hierarchy is mounted at `root` itself, `v1` where the cpu and memory controllers each
    have a hierarchy of their own (a hybrid host, whose unified hierarchy holds no controller, is v1)."""
    if os.path.exists(os.path.join(root, "cgroup.controllers")):
        return "v2"
    if all(os.path.isdir(os.path.join(root, controller)) for controller in ("cpu", "memory")):
        return "v1"
    raise CgroupError(f"no cpu and memory controllers under {root}: set odoo_runtime_limits to none on such a host")


def wanted_values(cpu: float, memory_mb: int, version: str) -> list[tuple[str, str, str, bool]]:
    """(controller, file, value, required) to write, in an order the kernel accepts from any current values. The
    weight shares a busy host's CPU among tenants by their plans' cores; swap is capped where the kernel counts it."""
    quota = max(1000, round(float(cpu) * PERIOD_US))  # the kernel's floor is 1 ms
    memory = int(memory_mb) * MIB
    if version == "v2":
        weight = min(10000, max(1, round(float(cpu) * 100)))
        return [("cpu", "cpu.max", f"{quota} {PERIOD_US}", True), ("cpu", "cpu.weight", str(weight), True),
                ("memory", "memory.max", str(memory), True), ("memory", "memory.swap.max", "0", False)]  # fmt: skip
    shares = max(2, round(float(cpu) * 1024))
    return [("cpu", "cpu.cfs_period_us", str(PERIOD_US), True), ("cpu", "cpu.cfs_quota_us", str(quota), True),
            ("cpu", "cpu.shares", str(shares), True), ("memory", "memory.limit_in_bytes", str(memory), True),
            ("memory", "memory.memsw.limit_in_bytes", str(memory), False)]  # fmt: skip


def group_dirs(name: str, version: str, root: str = CGROUP_ROOT) -> dict[str, str]:
    """The group's directory for each controller (one for both on v2)."""
    if version == "v2":
        return {"cpu": os.path.join(root, name), "memory": os.path.join(root, name)}
    return {controller: os.path.join(root, controller, name) for controller in ("cpu", "memory")}


def read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def write(path: str, value: str) -> None:
    with open(path, "w") as f:  # one write(2): the kernel parses it whole
        f.write(value)


def _ensure_dir(path: str, actions: list, check_mode: bool) -> bool:
    """`path` is a directory of root's, 0700, made if missing; whether it exists (in check mode, it may not)."""
    if not os.path.lexists(path):
        actions.append(f"made {path}")
        if check_mode:
            return False
        with contextlib.suppress(FileExistsError):  # another tenant's run made it meanwhile
            os.mkdir(path, DIR_MODE)
    st = os.lstat(path)
    if st.st_uid != 0 or not os.path.isdir(path) or os.path.islink(path):
        raise CgroupError(f"{path} is not a directory of root's: remove it")
    if st.st_mode & 0o7777 != DIR_MODE:
        actions.append(f"set {path} to mode 0700")
        if not check_mode:
            os.chmod(path, DIR_MODE)
    return True


def ensure_group(
    name: str, cpu: float, memory_mb: int, lower_memory: bool = True, check_mode: bool = False,
    root: str = CGROUP_ROOT,
) -> list:  # fmt: skip
    """The control group `name` exists in the cpu and memory controllers with the plan's ceiling; what was done.
    Changed live: the processes in it keep running under the new values. Without `lower_memory`, a ceiling above
    the plan's is kept (the running Odoo, which may hold more, restarts first with fewer workers)."""
    version = layout(root)
    actions: list[str] = []
    dirs = group_dirs(name, version, root)
    for hierarchy in [root] if version == "v2" else [os.path.join(root, c) for c in ("cpu", "memory")]:
        path = hierarchy
        for part in name.split("/"):
            if version == "v2":  # v2 gives a controller to a group's children only when the group asks for it
                control = os.path.join(path, "cgroup.subtree_control")
                if os.path.exists(control) and not {"cpu", "memory"} <= set(read(control).split()):
                    actions.append(f"gave cpu and memory to the groups under {path}")
                    if not check_mode:
                        write(control, "+cpu +memory")
            path = os.path.join(path, part)
            if not _ensure_dir(path, actions, check_mode):
                return actions  # check mode: what is missing is reported, nothing under it can be read
    values = wanted_values(cpu, memory_mb, version)
    current = {}
    for controller, file, _value, required in values:
        path = os.path.join(dirs[controller], file)
        if os.path.exists(path):
            current[file] = read(path)
        elif required:
            raise CgroupError(f"{path} is missing: the kernel does not offer this limit here (set odoo_runtime_limits"
                              " to none on such a host)")  # fmt: skip
    memory_file = "memory.max" if version == "v2" else "memory.limit_in_bytes"
    memory_now = current[memory_file]
    # None: no ceiling yet (v2's "max", v1's page-rounded 2^63 - 1).
    memory_now = int(memory_now) if memory_now.isdigit() and int(memory_now) < UNLIMITED else None
    if not lower_memory and memory_now is not None and memory_now > int(memory_mb) * MIB:
        values = [v for v in values if v[0] != "memory"]  # kept as it is until the restart
    # v1's memsw (memory plus swap) is never under memory's ceiling: raising both, it goes first.
    elif version == "v1" and memory_now is not None and memory_now < int(memory_mb) * MIB:
        values = [v for v in values if v[0] != "memory"] + [v for v in values if v[0] == "memory"][::-1]
    for controller, file, value, _required in values:
        if current.get(file, value) == value:
            continue
        path = os.path.join(dirs[controller], file)
        actions.append(f"set {file} to {value}")
        if check_mode:
            continue
        try:
            write(path, value)
        except OSError as error:
            if error.errno != errno.EBUSY:
                raise
            # memory: the group uses more than the new ceiling, and the kernel could not reclaim it
            raise CgroupError(
                f"{path}: the tenant's processes use more memory than {value} bytes and the kernel could not reclaim"
                " it: stop its Odoo (tenant_suspend.yml), then run again"
            ) from None
    return actions


def _pids(directory: str) -> list[int]:
    try:
        return [int(pid) for pid in read(os.path.join(directory, "cgroup.procs")).split()]
    except FileNotFoundError:
        return []


def empty_group(name: str, check_mode: bool = False, root: str = CGROUP_ROOT) -> list:
    """No process is left in the tenant's group (its programs stopped before): one it started on its own, detached
    from them (a daemon, setsid), is killed, so a stopped tenant runs nothing."""
    try:
        version = layout(root)
    except CgroupError:
        return []
    actions = []
    for directory in sorted(set(group_dirs(name, version, root).values())):
        deadline = time.monotonic() + KILL_SECONDS
        while pids := _pids(directory):
            if not actions or actions[-1] != f"killed what was left in {directory}":
                actions.append(f"killed what was left in {directory}")
            if check_mode:
                break
            if version == "v2" and os.path.exists(os.path.join(directory, "cgroup.kill")):
                write(os.path.join(directory, "cgroup.kill"), "1")  # the whole group at once, forks included
            else:
                for pid in pids:  # a fork racing this loop is in the group too: the next pass has it
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            if time.monotonic() > deadline:
                raise CgroupError(f"{directory} still holds processes {pids} after {KILL_SECONDS} s of SIGKILL")
            time.sleep(0.05)
    return actions


def remove_group(name: str, check_mode: bool = False, root: str = CGROUP_ROOT) -> list:
    """The tenant's control group is gone, whatever was left in it killed first."""
    actions = empty_group(name, check_mode, root)
    try:
        version = layout(root)
    except CgroupError:
        return actions
    for directory in sorted(set(group_dirs(name, version, root).values())):
        if os.path.isdir(directory):
            actions.append(f"removed {directory}")
            if check_mode:
                continue
            try:
                os.rmdir(directory)
            except OSError as error:
                if error.errno == errno.EBUSY:
                    raise CgroupError(f"{directory} still holds processes: stop the tenant's programs first") from None
                raise
    return actions
