"""Each process-runtime tenant's CPU and memory ceiling: its plan's `cpu` and `memory_mb`, enforced by the kernel on
everything its Odoo runs (workers, cron, an install of modules beside it), in a control group of its own.

Two ways, by who owns the host's control groups:
- `cgroup`, a host without systemd (this machine, a container): the platform makes the group in the cgroup file
  system itself, cgroup v1 (a `cpu` and a `memory` hierarchy) or v2 (the unified one), and root starts the tenant's
  programs in it (cgexec, from Debian's cgroup-tools).
- `systemd`, where systemd owns the tree and would undo a write of anyone else's (at its next daemon-reload): a slice
  unit per tenant with `CPUQuota=` and `MemoryMax=`, its programs started in it as transient scopes (systemd-run).

Names derive from the tenant's HTTP port and its runtime's directory, as its network namespace's do
(tenant_network.py), never from its id, which the customer chooses."""

from __future__ import annotations

import errno
import os

from ansible_collections.saasodoo.platform.plugins.module_utils.tenant_network import MAX_PORT, runtime_scope_id

CGROUP_ROOT = "/sys/fs/cgroup"
PERIOD_US = 100_000  # the scheduler's default CFS period; the quota is the plan's cores of it
MIB = 1024 * 1024


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


def wanted_values(cpu: float, memory_mb: int, version: str) -> list[tuple[str, str, str]]:
    """(controller, file, value) to write, in an order the kernel accepts from any current values."""
    quota = max(1000, round(float(cpu) * PERIOD_US))  # the kernel's floor is 1 ms
    memory = int(memory_mb) * MIB
    if version == "v2":
        return [("cpu", "cpu.max", f"{quota} {PERIOD_US}"), ("memory", "memory.max", str(memory)),
                ("memory", "memory.swap.max", "0")]  # fmt: skip
    return [("cpu", "cpu.cfs_period_us", str(PERIOD_US)), ("cpu", "cpu.cfs_quota_us", str(quota)),
            ("memory", "memory.limit_in_bytes", str(memory)),
            ("memory", "memory.memsw.limit_in_bytes", str(memory))]  # fmt: skip


def group_dirs(name: str, version: str, root: str = CGROUP_ROOT) -> list[str]:
    if version == "v2":
        return [os.path.join(root, name)]
    return [os.path.join(root, controller, name) for controller in ("cpu", "memory")]


def read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def write(path: str, value: str) -> None:
    with open(path, "w") as f:  # one write(2): the kernel parses it whole
        f.write(value)


def ensure_group(name: str, cpu: float, memory_mb: int, check_mode: bool = False, root: str = CGROUP_ROOT) -> list:
    """The control group `name` exists in the cpu and memory controllers with the plan's ceiling; what was done.
    Changed live: the processes in it keep running under the new values."""
    version = layout(root)
    actions = []
    if version == "v2":
        # v2 gives a controller to a group's children only when the group asks for it, from the root down.
        parent = root
        for part in name.split("/"):
            control = os.path.join(parent, "cgroup.subtree_control")
            if os.path.exists(control) and not {"cpu", "memory"} <= set(read(control).split()):
                actions.append(f"gave cpu and memory to the groups under {parent}")
                if not check_mode:
                    write(control, "+cpu +memory")
            parent = os.path.join(parent, part)
            if not os.path.isdir(parent):
                actions.append(f"made {parent}")
                if not check_mode:
                    os.mkdir(parent, 0o755)
    else:
        for directory in group_dirs(name, version, root):
            if not os.path.isdir(directory):
                actions.append(f"made {directory}")
                if not check_mode:
                    os.makedirs(directory, 0o755)
    if check_mode and actions:
        return actions
    found = group_dirs(name, version, root)
    dirs = {"cpu": found[0], "memory": found[-1]}  # v2: one directory for both
    values = wanted_values(cpu, memory_mb, version)
    current = {}
    for controller, file, _ in values:
        path = os.path.join(dirs[controller], file)
        if os.path.exists(path):  # memsw and swap files are there only where swap is accounted
            current[file] = read(path)
    # v1's memsw (memory plus swap) is never under memory's ceiling: raising both, it goes first.
    if version == "v1" and int(current.get("memory.limit_in_bytes", "0")) < int(memory_mb) * MIB:
        values[2], values[3] = values[3], values[2]
    for controller, file, value in values:
        if current.get(file, value) == value:
            continue
        path = os.path.join(dirs[controller], file)
        actions.append(f"set {file} to {value}")
        if check_mode:
            continue
        try:
            write(path, value)
        except OSError as error:
            if error.errno == errno.EBUSY:  # memory: the group uses more than the new ceiling, and cannot reclaim it
                raise CgroupError(f"{path}: the tenant's processes use more memory than {value} bytes and the kernel"
                                  " could not reclaim it; restart its Odoo, then run again") from None  # fmt: skip
            raise
    return actions


def remove_group(name: str, check_mode: bool = False, root: str = CGROUP_ROOT) -> list:
    """The tenant's control group is gone (its programs stopped before: a group with processes cannot be removed)."""
    try:
        version = layout(root)
    except CgroupError:
        return []
    actions = []
    for directory in group_dirs(name, version, root):
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
