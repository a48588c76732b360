"""Where a tenant database goes: the pure decision, no database (docs/placement.md).

The registry side (locks, records) is in placement_store.py; this module only ranks and explains.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

POLICIES = ("fill_first", "spread")
DB_TYPES = ("shared", "dedicated")
# How a plan's dedicated server outlives its primary (registry.db_servers.ha): not at all, or under Patroni with a
# replica, asynchronous or synchronous.
HA_MODES = ("none", "async", "sync")
_TENANT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,47}")
CPU_TOLERANCE = 1e-6


class PlacementError(Exception):
    """The tenant cannot be placed; the message says why and what to fix."""


@dataclass(frozen=True)
class Server:
    name: str
    kind: str
    status: str
    health: str
    pg_major: int
    capacity_tenants: int
    tenant_count: int
    capacity_storage_gb: int
    storage_committed_gb: int


@dataclass(frozen=True)
class Needs:
    """What the tenant's plan asks of a server."""

    storage_gb: int
    pg_majors: tuple[int, ...]


@dataclass
class Candidate:
    name: str
    accepted: bool
    reason: str
    free_tenants: int = 0
    free_storage_gb: int = 0
    ready: bool = True  # up now; a server still being brought up keeps its tenant waiting until it is


@dataclass(frozen=True)
class DedicatedHost:
    """A machine the inventory gives dedicated servers, with the CPU and memory their tenants' plans reserve of it."""

    address: str
    cpu: float
    memory_mb: int


@dataclass
class HostCandidate:
    name: str  # the host's address
    accepted: bool
    reason: str
    free_cpu: float = 0
    free_memory_mb: int = 0


@dataclass
class Decision:
    chosen: str | None
    reason: str
    policy: str
    candidates: list[Candidate] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "chosen": self.chosen,
            "reason": self.reason,
            "policy": self.policy,
            # vars() copies: asdict() recurses and deep-copies, a millisecond for 200 candidates.
            "candidates": [dict(vars(c)) for c in self.candidates],
        }


# The names the platform gives things of its own beside a tenant's, which no tenant's may take: the scratch
# databases of a restore (playbooks/tenant_restore.yml, <db>__restore and <db>__prerestore), the copy a move keeps
# (module_utils/migration.py, <db>_old<move id>), the OS user of a tenant whose id is long (plugins/filter/tenants.py:
# odoo_<18 characters>_<8 hex digits>, which an id of that shape would get too), and a Kubernetes tenant's database
# Service and Secrets (roles/odoo_runtime/tasks/kubernetes.yml: odoo-<id>-db, -cephfs, -tls, which the objects of a
# tenant with that suffix would be named). Roles and templates the platform makes start with saasodoo_ or tpl_,
# never with a tenant's t_.
RESERVED_NAMES = {
    "the scratch copy of another tenant's restore": re.compile(r"__(pre)?restore$"),
    "the copy another tenant's move keeps": re.compile(r"^t_.+_old[0-9]+$"),
    "the OS user of another tenant, whose id is long": re.compile(r"^t_[a-z0-9_]{18}_[0-9a-f]{8}$"),
    "another tenant's database Service or Secrets on Kubernetes": re.compile(r"^t_.+_(db|cephfs|tls)$"),
}


def database_name(tenant_id: str) -> str:
    """The tenant's database and login role name (one name: pg_hba's `sameuser` ties them)."""
    if not _TENANT_ID.fullmatch(tenant_id or ""):
        raise PlacementError(
            f"tenant_id {tenant_id!r} is not valid: use 1-48 letters, digits, '-' or '_',"
            " starting with a letter or digit"
        )
    name = "t_" + tenant_id.lower().replace("-", "_")
    for whose, shape in RESERVED_NAMES.items():
        if shape.search(name):
            raise PlacementError(
                f"tenant_id {tenant_id!r} is not valid: its database would be named {name}, the name the platform"
                f" gives {whose}"
            )
    return name


def kept_copy_name(db_name: str, move_id: int) -> str:
    """The name a move gives the source database it keeps for its retention (RESERVED_NAMES refuses it to tenants)."""
    return f"{db_name[:48]}_old{move_id}"


def plan_choice(plan_name: str, entitlements: dict, key: str, choices: tuple, default: str | None = None) -> str:
    """The plan's `key`, one of `choices`; a plan that says nothing gets `default` (None: it must say)."""
    value = entitlements.get(key, default)
    if value not in choices:
        raise PlacementError(
            f"plan {plan_name!r} has {key} {value!r}: set {key} to one of {', '.join(choices)} "
            "in group_vars/all/plans.yml and run playbooks/site.yml"
        )
    return value


def db_type_of(plan_name: str, entitlements: dict) -> str:
    return plan_choice(plan_name, entitlements, "db_type", DB_TYPES)


def server_ha(plan_name: str, entitlements: dict) -> str:
    """The plan's `ha` for a new dedicated server: none when the plan says nothing."""
    return plan_choice(plan_name, entitlements, "ha", HA_MODES, default="none")


def evaluate(server: Server, needs: Needs) -> Candidate:
    """Accept the server for the tenant, or say why not."""
    free_tenants = server.capacity_tenants - server.tenant_count
    free_storage = server.capacity_storage_gb - server.storage_committed_gb

    def refuse(reason: str) -> Candidate:
        return Candidate(server.name, False, reason, free_tenants, free_storage)

    if server.kind != "shared":
        return refuse(f"kind {server.kind}")
    if server.status not in ("active", "provisioning"):
        return refuse(f"status {server.status}")
    if server.health == "unhealthy":
        return refuse("unhealthy")
    if server.pg_major not in needs.pg_majors:
        supported = ", ".join(str(m) for m in needs.pg_majors)
        return refuse(f"PostgreSQL {server.pg_major} not supported by the plan's Odoo (needs {supported})")
    if free_tenants <= 0:
        return refuse(f"full: {server.tenant_count}/{server.capacity_tenants} tenants")
    if free_storage < needs.storage_gb:
        return refuse(
            f"storage: {server.storage_committed_gb} + {needs.storage_gb} GB > {server.capacity_storage_gb} GB"
        )
    return Candidate(server.name, True, "fits", free_tenants, free_storage, server.status == "active")


def rank(candidates: list[Candidate], policy: str) -> list[Candidate]:
    """Accepted candidates best first, those up before those still being brought up (a pool grown ahead of need
    waits for the sign-ups the others cannot take); ties by name, so the same inputs give the same answer."""
    if policy not in POLICIES:
        raise PlacementError(f"placement policy {policy!r} is unknown: use one of {', '.join(POLICIES)}")
    accepted = [c for c in candidates if c.accepted]
    if policy == "fill_first":  # the fullest that fits
        return sorted(accepted, key=lambda c: (not c.ready, c.free_tenants, c.free_storage_gb, c.name))
    return sorted(accepted, key=lambda c: (not c.ready, -c.free_tenants, -c.free_storage_gb, c.name))  # the emptiest


def free_slots(servers: list[Server], pg_major: int, storage_gb: int = 0) -> int:
    """The tenants of `storage_gb` each the shared servers of `pg_major` can still take (those up or being brought
    up, not unhealthy): what a pool grown ahead of need keeps above its headroom."""
    verdicts = [evaluate(server, Needs(storage_gb, (pg_major,))) for server in servers]
    return sum(
        min(v.free_tenants, v.free_storage_gb // storage_gb) if storage_gb > 0 else v.free_tenants
        for v in verdicts
        if v.accepted
    )


def choose_shared(servers: list[Server], needs: Needs, policy: str) -> Decision:
    """The shared server for a tenant, with every candidate's verdict; chosen is None when none fits."""
    candidates = [evaluate(s, needs) for s in sorted(servers, key=lambda s: s.name)]
    ranked = rank(candidates, policy)
    if not ranked:
        return Decision(None, "no shared server fits", policy, candidates)
    best = ranked[0]
    return Decision(best.name, f"{policy}: {best.free_tenants} tenant slots free before this one", policy, candidates)


def choose_dedicated_host(
    hosts: list[DedicatedHost],
    reserved: dict[str, tuple[float, int, str]],
    cpu: float,
    memory_mb: int,
    policy: str,
    no_port: dict[str, str] | None = None,
) -> Decision:
    """The host for a new dedicated server holding `cpu` cores and `memory_mb`, given what the servers not retired
    already hold on each (address -> (cores, MB, their names)) and the hosts whose ports are all taken (address ->
    why); chosen is None when no host has room. fill_first takes the host with the least left that fits (whole hosts
    stay free for big plans), spread the most."""
    if policy not in POLICIES:
        raise PlacementError(f"placement policy {policy!r} is unknown: use one of {', '.join(POLICIES)}")
    candidates = []
    for host in sorted(hosts, key=lambda h: h.address):
        used_cpu, used_memory, holders = reserved.get(host.address, (0, 0, ""))
        free_cpu, free_memory = host.cpu - float(used_cpu), host.memory_mb - int(used_memory)
        held = f" (held by {holders})" if holders else ""
        if (no_port or {}).get(host.address):
            reason = no_port[host.address]
        elif free_cpu < cpu - CPU_TOLERANCE:  # cores add up in floating point: 16 - 14.9 is 1.0999…
            reason = f"CPU: {float(used_cpu):g} of {host.cpu:g} cores reserved{held}, {cpu:g} needed"
        elif free_memory < memory_mb:
            reason = f"memory: {used_memory} of {host.memory_mb} MB reserved{held}, {memory_mb} needed"
        else:
            reason = "fits"
        candidates.append(HostCandidate(host.address, reason == "fits", reason, free_cpu, free_memory))
    accepted = sorted(
        (c for c in candidates if c.accepted),
        key=lambda c: (c.free_memory_mb, c.free_cpu, c.name) if policy == "fill_first"
        else (-c.free_memory_mb, -c.free_cpu, c.name),
    )  # fmt: skip
    if not accepted:
        return Decision(None, "no dedicated host has room", policy, candidates)
    best = accepted[0]
    return Decision(
        best.name, f"{policy}: {best.free_cpu:g} cores and {best.free_memory_mb} MB left before this one", policy,
        candidates,
    )  # fmt: skip


def refusal_message(tenant_id: str, plan: str, decision: Decision, remedy: str) -> str:
    refused = "; ".join(f"{c.name}: {c.reason}" for c in decision.candidates) or "no shared servers are registered"
    return f"no shared server can take tenant {tenant_id} (plan {plan}): {refused}. {remedy}"


def next_server(prefix: str, port_range: tuple[int, int], names: set[str], ports: set[int]) -> tuple[str, int]:
    """The first free `<prefix>NN` name and the first free port in the range, for a new server."""
    low, high = port_range
    port = next((p for p in range(low, high + 1) if p not in ports), None)
    if port is None:
        raise PlacementError(f"no free port left in {low}-{high} for a new {prefix}* server: widen the port range")
    number = 1
    while f"{prefix}{number:02d}" in names:
        number += 1
    return f"{prefix}{number:02d}", port
