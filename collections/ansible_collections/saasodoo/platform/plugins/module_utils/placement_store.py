"""Placement against the registry: one transaction, row locks, every decision recorded
(docs/placement.md).

Concurrent placements queue on the shared servers' rows (SELECT ... FOR UPDATE in name order); the
tenant counters those rows carry are kept by a trigger on registry.tenants (migration 0004), so the
next placement in the queue sees the previous one's tenant. Creating a server (a grown pool, a
dedicated server) also takes an advisory lock, so two placements never take the same name or port.
"""

from __future__ import annotations

import json
import math
import socket
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

from ansible_collections.saasodoo.platform.plugins.module_utils.audit import record_audit
from ansible_collections.saasodoo.platform.plugins.module_utils.placement import (
    POLICIES,
    Candidate,
    Decision,
    DedicatedHost,
    Needs,
    PlacementError,
    Server,
    choose_dedicated_host,
    choose_shared,
    database_name,
    db_type_of,
    next_server,
    refusal_message,
    server_ha,
)

try:
    from psycopg.rows import dict_row
except ImportError:  # reported by the module with missing_required_lib
    dict_row = None

ALLOCATION_LOCK = "saasodoo.db_servers.allocate"
# How long a verdict of unhealthy stands (the runner's servers_probe schedule probes every 5 minutes, placement's
# own probe its chosen pool): a server found unhealthy within it is refused without a probe of its own.
HEALTH_VERDICT_MINUTES = 10
SERVER_COLUMNS = (
    "name, kind, host, port, pgbouncer_host, pgbouncer_port, pg_major, capacity_tenants, capacity_storage_gb,"
    " status, health, dedicated_to, tenant_count, storage_committed_gb, ha, spare_for,"
    f" (status = 'active' AND health = 'unhealthy'"
    f"  AND health_checked_at > now() - interval '{HEALTH_VERDICT_MINUTES} minutes')"
    " AS recently_unhealthy"
)


@dataclass
class NewServerSpec:
    """How to make a new server: name prefix, port range and size (from the inventory)."""

    name_prefix: str
    port_range: tuple[int, int]
    host: str = "127.0.0.1"
    pg_major: int = 15
    capacity_tenants: int = 1
    capacity_storage_gb: int = 100
    pgbouncer_port_offset: int | None = None  # PgBouncer port = server port + offset
    ha: str = "none"  # a new shared pool's; a dedicated server's is its plan's
    # Dedicated servers only: the machines they are made on, each holding its plan's share of one (none: on `host`).
    hosts: tuple[DedicatedHost, ...] = ()


@dataclass
class PlacementRequest:
    tenant_id: str
    plan: str
    customer_id: str | None = None
    subscription_id: str | None = None


@dataclass
class PlacementConfig:
    policy: str = "fill_first"
    auto_grow: bool = False
    shared_growth: NewServerSpec | None = None
    dedicated: NewServerSpec | None = None
    odoo_pg_majors: dict[str, list[int]] = field(default_factory=dict)
    probe_health: bool = True


@dataclass
class PlacementResult:
    changed: bool
    tenant: dict
    server: dict
    placement: dict
    created_server: str | None = None
    executed: list[str] = field(default_factory=list)


NEW_SERVER_OPTIONS = dict(
    name_prefix=dict(type="str", required=True),
    port_range=dict(type="list", elements="int", required=True),
    host=dict(type="str", default="127.0.0.1"),
    pg_major=dict(type="int", default=15),
    capacity_tenants=dict(type="int", default=1),
    capacity_storage_gb=dict(type="int", default=100),
    pgbouncer_port_offset=dict(type="int"),
    ha=dict(type="str", choices=["none", "async", "sync"], default="none"),
)
DEDICATED_OPTIONS = dict(
    NEW_SERVER_OPTIONS,
    hosts=dict(
        type="list",
        elements="dict",
        default=[],
        options=dict(
            address=dict(type="str", required=True),
            cpu=dict(type="float", required=True),
            memory_mb=dict(type="int", required=True),
        ),
    ),
)
# The placement options of db_placement and db_migrate (which places a moving tenant's new server).
PLACEMENT_OPTIONS = dict(
    policy=dict(type="str", choices=list(POLICIES), default="fill_first"),
    auto_grow=dict(type="bool", default=False),
    shared_growth=dict(type="dict", options=NEW_SERVER_OPTIONS),
    dedicated=dict(type="dict", options=DEDICATED_OPTIONS),
    odoo_pg_majors=dict(type="dict", required=True),
    probe_health=dict(type="bool", default=True),
)


def new_server_spec(options: dict | None, what: str) -> NewServerSpec | None:
    if not options:
        return None
    low_high = options["port_range"]
    if len(low_high) != 2 or low_high[0] > low_high[1]:
        raise PlacementError(f"{what}.port_range must be [first, last], got {low_high}")
    if options["capacity_tenants"] < 1:
        raise PlacementError(f"{what}.capacity_tenants must be at least 1, got {options['capacity_tenants']}")
    hosts = tuple(DedicatedHost(h["address"], h["cpu"], h["memory_mb"]) for h in options.get("hosts") or ())
    if any(not math.isfinite(h.cpu) or h.cpu <= 0 or h.memory_mb <= 0 for h in hosts):
        raise PlacementError(f"{what}.hosts: each host needs cpu and memory_mb above zero")
    if len({h.address for h in hosts}) != len(hosts):
        raise PlacementError(f"{what}.hosts lists an address twice")
    return NewServerSpec(**{**options, "port_range": (low_high[0], low_high[1]), "hosts": hosts})


def placement_config(params: dict) -> PlacementConfig:
    return PlacementConfig(
        policy=params["policy"],
        auto_grow=params["auto_grow"],
        shared_growth=new_server_spec(params["shared_growth"], "shared_growth"),
        dedicated=new_server_spec(params["dedicated"], "dedicated"),
        odoo_pg_majors={str(k): v for k, v in params["odoo_pg_majors"].items()},
        probe_health=params["probe_health"],
    )


def tcp_probe(host: str, port: int, timeout: float = 1.0) -> str | None:
    """None when the server accepts TCP connections, else why not."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as e:
        return f"unreachable at {host}:{port} ({e.strerror or e})"


class PlacementStore:
    def __init__(self, conn, config: PlacementConfig, probe: Callable[[str, int], str | None] = tcp_probe):
        self.conn = conn
        self.config = config
        self.probe = probe
        self.executed: list[str] = []

    def place(self, request: PlacementRequest, check_mode: bool = False) -> PlacementResult:
        """Place the tenant, or return its existing placement. Check mode rolls everything back."""
        db_name = database_name(request.tenant_id)
        with self.conn.transaction(force_rollback=check_mode), self.conn.cursor(row_factory=dict_row) as cur:
            # Two runs for one database name (one tenant, or two ids that differ only in case or '-'/'_') queue
            # here instead of racing to insert it.
            cur.execute("SELECT pg_advisory_xact_lock(hashtext('saasodoo.tenant:' || %s))", (db_name,))
            holder = cur.execute(
                "SELECT tenant_id FROM registry.tenants WHERE db_name = %s AND tenant_id <> %s",
                (db_name, request.tenant_id),
            ).fetchone()
            if holder:
                raise PlacementError(
                    f"tenant id {request.tenant_id!r} names database {db_name}, which is tenant "
                    f"{holder['tenant_id']!r}'s: ids that differ only in case or '-'/'_' are one tenant; "
                    "choose another id"
                )
            tenant = self._tenant(cur, request.tenant_id)
            if tenant and tenant["db_server"] and tenant["status"] != "purged":
                return self._existing(cur, tenant)
            # A purged tenant (nothing of it is left anywhere) is placed anew, like a new one.
            plan = self._plan(cur, request.plan)
            entitlements = plan["entitlements"]
            db_type = db_type_of(request.plan, entitlements)
            needs = Needs(int(entitlements.get("storage_gb", 0)), self._pg_majors(request.plan, entitlements))
            if db_type == "shared":
                decision, server = self._place_shared(cur, request, needs)
            else:
                decision, server = self._place_dedicated(cur, request, entitlements)
            tenant = self._record_tenant(cur, request, plan, db_type, db_name, server["name"], entitlements)
            if db_type == "dedicated" and server["dedicated_to"] is None:
                cur.execute(
                    "UPDATE registry.db_servers SET dedicated_to = %s WHERE name = %s",
                    (request.tenant_id, server["name"]),
                )
            placement = self._record_placement(cur, request, plan, db_type, decision)
            created = server["name"] if server.get("_created") else None
            server = self._server(cur, server["name"])
        return PlacementResult(True, tenant, server, placement, created, self.executed)

    def place_move(self, request: PlacementRequest, source_server: str) -> tuple[dict, dict]:
        """A server for the tenant's database under its (new) plan, other than the one it is on.

        Runs in the caller's transaction (db_migrate records the move with it); the decision is recorded.
        Returns the server (with `_created` when this placement recorded it) and the placement record.
        """
        with self.conn.cursor(row_factory=dict_row) as cur:
            plan = self._plan(cur, request.plan)
            entitlements = plan["entitlements"]
            db_type = db_type_of(request.plan, entitlements)
            if db_type == "shared":
                needs = Needs(int(entitlements.get("storage_gb", 0)), self._pg_majors(request.plan, entitlements))
                decision, server = self._place_shared(cur, request, needs, exclude=source_server)
            else:
                # The move's row will reference its source server: that row's key lock is taken now, before this
                # placement's audit record takes the audit chain's lock. Taken after it, a placement holding the
                # shared servers' rows while it waits for that lock deadlocks with this one.
                cur.execute("SELECT 1 FROM registry.db_servers WHERE name = %s FOR KEY SHARE", (source_server,))
                decision, server = self._place_dedicated(cur, request, entitlements)
                if server["name"] == source_server:
                    raise PlacementError(f"tenant {request.tenant_id} is on its own server {source_server} already")
                if server["dedicated_to"] is None:
                    cur.execute(
                        "UPDATE registry.db_servers SET dedicated_to = %s WHERE name = %s",
                        (request.tenant_id, server["name"]),
                    )
            placement = self._record_placement(cur, request, plan, db_type, decision)
            created = server.get("_created", False)
            return {**self._server(cur, server["name"]), "_created": created}, placement

    # -- reads ------------------------------------------------------------------------------------

    def _tenant(self, cur, tenant_id: str) -> dict | None:
        cur.execute("SELECT * FROM registry.tenants WHERE tenant_id = %s FOR UPDATE", (tenant_id,))
        return cur.fetchone()

    def _server(self, cur, name: str) -> dict:
        cur.execute(f"SELECT {SERVER_COLUMNS} FROM registry.db_servers WHERE name = %s", (name,))
        return cur.fetchone()

    def _plan(self, cur, plan_name: str) -> dict:
        cur.execute(
            "SELECT name, version, entitlements FROM registry.plans WHERE name = %s ORDER BY version DESC LIMIT 1",
            (plan_name,),
        )
        plan = cur.fetchone()
        if plan is None:
            cur.execute("SELECT DISTINCT name FROM registry.plans ORDER BY name")
            known = ", ".join(r["name"] for r in cur.fetchall()) or "none"
            raise PlacementError(
                f"unknown plan {plan_name!r} (known: {known}): add it to group_vars/all/plans.yml and run "
                "playbooks/site.yml, or fix the plan name"
            )
        return plan

    def _pg_majors(self, plan_name: str, entitlements: dict) -> tuple[int, ...]:
        version = str(entitlements.get("odoo_version", ""))
        majors = self.config.odoo_pg_majors.get(version)
        if not majors:
            raise PlacementError(
                f"plan {plan_name!r} runs Odoo {version or '(unset)'}, which saasodoo_odoo_pg_majors does not list: "
                "add the PostgreSQL majors it supports"
            )
        return tuple(int(m) for m in majors)

    def _existing(self, cur, tenant: dict) -> PlacementResult:
        cur.execute(
            "SELECT id, decided_at, policy, inputs, candidates, chosen_server, reason FROM registry.placements"
            " WHERE tenant_id = %s ORDER BY id DESC LIMIT 1",
            (tenant["tenant_id"],),
        )
        placement = cur.fetchone() or {}
        return PlacementResult(False, tenant, self._server(cur, tenant["db_server"]), placement)

    # -- decisions --------------------------------------------------------------------------------

    def _shared_servers(self, cur) -> list[dict]:
        cur.execute(f"SELECT {SERVER_COLUMNS} FROM registry.db_servers WHERE kind = 'shared' ORDER BY name FOR UPDATE")
        return cur.fetchall()

    def _decide_shared(self, cur, needs: Needs, exclude: str | None = None) -> tuple[Decision, dict[str, dict]]:
        rows = {r["name"]: r for r in self._shared_servers(cur) if r["name"] != exclude}
        unreachable: dict[str, str] = {}
        while True:
            servers = [_server_state(r, unreachable, self.config.probe_health) for r in rows.values()]
            decision = choose_shared(servers, needs, self.config.policy)
            chosen = rows.get(decision.chosen) if decision.chosen else None
            # Probe only the winner (a server still provisioning is not up yet): a dead one is
            # refused and marked unhealthy, and the next best is tried.
            if chosen is None or chosen["status"] != "active" or not self.config.probe_health:
                return decision, rows
            failure = self.probe(chosen["host"], chosen["port"])
            if failure is None:
                if chosen["health"] != "healthy":
                    cur.execute(
                        "UPDATE registry.db_servers SET health = 'healthy', health_detail = NULL,"
                        " health_checked_at = now() WHERE name = %s",
                        (chosen["name"],),
                    )
                return decision, rows
            unreachable[chosen["name"]] = failure
            self._mark_unhealthy(cur, chosen["name"], failure)

    def _mark_unhealthy(self, cur, name: str, failure: str) -> None:
        cur.execute(
            "UPDATE registry.db_servers SET health = 'unhealthy', health_detail = %s, health_checked_at = now()"
            " WHERE name = %s",
            (f"placement's probe: {failure}", name),
        )
        self.executed.append(f"marked {name} unhealthy: {failure}")

    def _place_shared(
        self, cur, request: PlacementRequest, needs: Needs, exclude: str | None = None
    ) -> tuple[Decision, dict]:
        decision, rows = self._decide_shared(cur, needs, exclude)
        if decision.chosen:
            return decision, rows[decision.chosen]
        growth = self.config.shared_growth
        if not (self.config.auto_grow and growth):
            remedy = (
                "Pool growth is off: add a shared pool to the inventory (pools_shared) and run playbooks/site.yml, "
                "or set saasodoo_pool_growth.auto_grow: true"
            )
            raise PlacementError(refusal_message(request.tenant_id, request.plan, decision, remedy))
        # Another placement may have grown the fleet while this one waited: look again under the lock.
        self._lock_allocation(cur)
        decision, rows = self._decide_shared(cur, needs, exclude)
        if decision.chosen:
            return decision, rows[decision.chosen]
        server = self._create_server(cur, "shared", growth, growth.ha)
        refused = decision.candidates
        grown = Decision(
            server["name"],
            f"grew the fleet: no shared server fitted ({_summary(refused)})",
            self.config.policy,
            [*refused, Candidate(server["name"], True, "new pool", growth.capacity_tenants, ready=False)],
        )
        return grown, server

    def _place_dedicated(self, cur, request: PlacementRequest, entitlements: dict) -> tuple[Decision, dict]:
        ha = server_ha(request.plan, entitlements)
        cur.execute(
            f"SELECT {SERVER_COLUMNS} FROM registry.db_servers WHERE kind = 'dedicated' AND dedicated_to = %s"
            " AND status <> 'retired' AND ha = %s FOR UPDATE",
            (request.tenant_id, ha),
        )
        existing = cur.fetchone()
        if existing:
            return Decision(existing["name"], "the tenant's own dedicated server", "dedicated"), existing
        # A warm spare kept for the plan (migration 0030), up and not found unhealthy, probed as a chosen pool is.
        cur.execute(
            f"SELECT {SERVER_COLUMNS} FROM registry.db_servers WHERE spare_for = %s AND ha = %s AND status = 'active'"
            " ORDER BY name FOR UPDATE",
            (request.plan, ha),
        )
        for spare in cur.fetchall():
            if self.config.probe_health and spare["recently_unhealthy"]:
                continue
            if failure := self.config.probe_health and self.probe(spare["host"], spare["port"]):
                self._mark_unhealthy(cur, spare["name"], failure)
                continue
            cur.execute("UPDATE registry.db_servers SET spare_for = NULL WHERE name = %s", (spare["name"],))
            self.executed.append(f"took {spare['name']}, the warm spare kept for plan {request.plan}")
            reason = f"the warm spare kept for plan {request.plan}"
            return Decision(spare["name"], reason, "dedicated"), {**spare, "spare_for": None}
        return self._new_dedicated(cur, request, entitlements, ha)

    def _new_dedicated(
        self, cur, request: PlacementRequest, entitlements: dict, ha: str, spare: bool = False
    ) -> tuple[Decision, dict]:
        """A new dedicated server (status provisioning) for the tenant, or a warm spare for its plan, on a dedicated
        host with the plan's share left."""
        for_whom = "a warm spare" if spare else f"tenant {request.tenant_id}"
        spec = self.config.dedicated
        if spec is None:
            raise PlacementError(
                f"plan {request.plan!r} needs a dedicated server, but saasodoo_dedicated_servers is not configured"
            )
        self._lock_allocation(cur)
        share, hosts = None, None
        if spec.hosts:
            share = self._share(request.plan, entitlements)
            hosts = self._choose_host(cur, for_whom, request.plan, spec, share)
            spec = replace(spec, host=hosts.chosen)
        # The server's dedicated_to refers to the tenant row, which is written after this; the
        # placement sets it once the tenant exists.
        server = self._create_server(cur, "dedicated", spec, ha, share)
        reason = ("a warm spare for the plan" if spare else "a new dedicated server for the tenant") + (
            f" on {spec.host} ({hosts.reason})" if hosts else ""
        )
        return Decision(server["name"], reason, "dedicated", hosts.candidates if hosts else []), server

    @staticmethod
    def _share(plan: str, entitlements: dict) -> tuple[float, int]:
        """The cores and memory a dedicated server of the plan holds of its host: the plan's cpu and memory_mb."""
        try:
            share = (float(entitlements["cpu"]), int(entitlements["memory_mb"]))
        except (KeyError, TypeError, ValueError):
            raise PlacementError(
                f"plan {plan!r} sets no cpu and memory_mb, which a dedicated server reserves of its host"
                " (saasodoo_dedicated_servers.hosts): set both in group_vars/all/plans.yml and run playbooks/site.yml"
            ) from None
        if share[0] <= 0 or share[1] <= 0:
            raise PlacementError(f"plan {plan!r}: cpu and memory_mb must be above zero, got {share[0]:g}, {share[1]}")
        return share

    def _choose_host(self, cur, for_whom: str, plan: str, spec: NewServerSpec, share: tuple[float, int]) -> Decision:
        """The dedicated host with the plan's share and a port of the range left, under the allocation lock; refused
        with every host's verdict when none has. A dedicated server on a listed host that holds no recorded share
        (made before shares were, or declared in the inventory) holds the whole host."""
        hosts = {host.address: host for host in spec.hosts}
        cur.execute(
            "SELECT name, kind, host, port, pgbouncer_host, pgbouncer_port, status, reserved_cpu, reserved_memory_mb"
            " FROM registry.db_servers WHERE host = ANY(%s) OR pgbouncer_host = ANY(%s) ORDER BY name",
            (list(hosts), list(hosts)),
        )
        reserved: dict[str, tuple[float, int, str]] = {}
        taken: dict[str, set[int]] = {address: set() for address in hosts}
        for row in cur.fetchall():
            if row["pgbouncer_host"] in hosts and row["pgbouncer_port"]:
                taken[row["pgbouncer_host"]].add(row["pgbouncer_port"])
            if row["host"] not in hosts:
                continue
            taken[row["host"]].add(row["port"])  # a retired server keeps its port, and its data there
            if row["status"] == "retired" or row["kind"] != "dedicated":
                continue
            whole = row["reserved_cpu"] is None
            cpu = float(hosts[row["host"]].cpu if whole else row["reserved_cpu"])
            memory = hosts[row["host"]].memory_mb if whole else row["reserved_memory_mb"]
            used_cpu, used_memory, holders = reserved.get(row["host"], (0.0, 0, ""))
            name = row["name"] + (" (all of it: no share recorded)" if whole else "")
            reserved[row["host"]] = (used_cpu + cpu, used_memory + memory, ", ".join(filter(None, [holders, name])))
        low, high = spec.port_range
        no_port = {
            address: f"no free port left in {low}-{high}"
            for address in hosts
            if all(port in taken[address] for port in range(low, high + 1))
        }
        decision = choose_dedicated_host(list(spec.hosts), reserved, *share, self.config.policy, no_port)
        if decision.chosen is None:
            verdicts = "; ".join(f"{c.name}: {c.reason}" for c in decision.candidates)
            raise PlacementError(
                f"no dedicated host has {share[0]:g} cores and {share[1]} MB left for {for_whom}"
                f" (plan {plan}): {verdicts}. Add a host to saasodoo_dedicated_servers.hosts, or retire the"
                " dedicated servers nothing holds any more (playbooks/servers_retire.yml), which frees their share"
                " (not their port)"
            )
        return decision

    # -- writes -----------------------------------------------------------------------------------

    def _lock_allocation(self, cur) -> None:
        cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (ALLOCATION_LOCK,))

    def _create_server(
        self, cur, kind: str, spec: NewServerSpec, ha: str = "none", share: tuple[float, int] | None = None
    ) -> dict:
        cur.execute("SELECT name, host, port, pgbouncer_host, pgbouncer_port FROM registry.db_servers")
        rows = cur.fetchall()
        names = {r["name"] for r in rows}
        # Ports are per host: a pool on a machine of its own listens on 5432 like every other.
        taken = {r["port"] for r in rows if r["host"] == spec.host} | {
            r["pgbouncer_port"] for r in rows if r["pgbouncer_port"] and r["pgbouncer_host"] == spec.host
        }
        if spec.pgbouncer_port_offset:
            # A server port whose PgBouncer port would collide is taken too.
            taken |= {p - spec.pgbouncer_port_offset for p in taken}
        name, port = next_server(spec.name_prefix, spec.port_range, names, taken)
        pgbouncer_port = port + spec.pgbouncer_port_offset if spec.pgbouncer_port_offset else None
        cur.execute(
            f"INSERT INTO registry.db_servers (name, kind, host, port, pgbouncer_host, pgbouncer_port, pg_major,"
            f" capacity_tenants, capacity_storage_gb, status, health, ha, reserved_cpu, reserved_memory_mb)"
            f" VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, 'provisioning', 'unknown', %s, %s, %s)"
            f" RETURNING {SERVER_COLUMNS}",
            (
                name,
                kind,
                spec.host,
                port,
                spec.host if pgbouncer_port else None,
                pgbouncer_port,
                spec.pg_major,
                spec.capacity_tenants,
                spec.capacity_storage_gb,
                ha,
                *(share or (None, None)),
            ),
        )
        under_patroni = f" (ha {ha})" if ha != "none" else ""
        holding = f", holding {share[0]:g} cores and {share[1]} MB of it" if share else ""
        self.executed.append(f"created {kind} server {name} on {spec.host}:{port}{under_patroni}{holding}")
        return {**cur.fetchone(), "_created": True}

    def _record_tenant(self, cur, request, plan, db_type, db_name, server_name, entitlements) -> dict:
        quotas = {
            "storage_gb": int(entitlements.get("storage_gb", 0)),
            "db_connection_limit": int(entitlements.get("db_connection_limit", -1)),
            "odoo_workers": int(entitlements.get("odoo_workers", 1)),
        }
        cur.execute(
            "INSERT INTO registry.tenants (tenant_id, customer_id, subscription_id, plan_name, plan_version, db_type,"
            " db_server, db_name, db_role, status, quotas) VALUES (%s, %s, %s, %s, %s, %s, NULL, %s, %s,"
            " 'provisioning', %s)"
            " ON CONFLICT (tenant_id) DO UPDATE SET customer_id = EXCLUDED.customer_id,"
            " subscription_id = EXCLUDED.subscription_id, plan_name = EXCLUDED.plan_name,"
            " plan_version = EXCLUDED.plan_version, db_type = EXCLUDED.db_type, quotas = EXCLUDED.quotas,"
            # A new database, its plan's modules only; no server yet (a purged tenant's old one left unlocked).
            " status = 'provisioning', extra_modules = '{}', db_server = NULL,"
            # A purged tenant's new life: new credentials (its old password must stay dead), nothing retained.
            " credential_version = registry.tenants.credential_version"
            "   + CASE WHEN registry.tenants.status = 'purged' THEN 1 ELSE 0 END,"
            " retain_until = NULL, storage_path = CASE WHEN registry.tenants.status = 'purged' THEN NULL"
            "   ELSE registry.tenants.storage_path END,"
            # and a new OS user id: its old one stays nobody's (migration 0028)
            " os_id = CASE WHEN registry.tenants.status = 'purged' THEN nextval('registry.tenant_os_id_seq')"
            "   ELSE registry.tenants.os_id END",
            (request.tenant_id, request.customer_id, request.subscription_id, plan["name"], plan["version"], db_type,
             db_name, db_name, json.dumps(quotas)),
        )  # fmt: skip
        # Set the server last: the counter trigger then sees the final quotas.
        cur.execute(
            "UPDATE registry.tenants SET db_server = %s WHERE tenant_id = %s RETURNING *",
            (server_name, request.tenant_id),
        )
        self.executed.append(f"recorded tenant {request.tenant_id} on {server_name} as {db_name}")
        return cur.fetchone()

    def _record_placement(self, cur, request, plan, db_type, decision: Decision) -> dict:
        inputs = {
            **asdict(request),
            "plan_version": plan["version"],
            "db_type": db_type,
            "storage_gb": plan["entitlements"].get("storage_gb"),
        }
        record = decision.as_dict()
        cur.execute(
            "INSERT INTO registry.placements (tenant_id, policy, inputs, candidates, chosen_server, reason)"
            " VALUES (%s, %s, %s, %s, %s, %s)"
            " RETURNING id, decided_at, policy, inputs, candidates, chosen_server, reason",
            (
                request.tenant_id,
                decision.policy,
                json.dumps(inputs),
                json.dumps(record["candidates"]),
                decision.chosen,
                decision.reason,
            ),
        )
        placement = cur.fetchone()
        record_audit(
            cur.connection,
            actor="db_placement",
            tenant_id=request.tenant_id,
            kind="decision",
            subject=f"placement:{placement['id']}",
            detail={"chosen": decision.chosen, "reason": decision.reason, "db_type": db_type},
        )
        self.executed.append(f"recorded placement {placement['id']}: {decision.chosen} ({decision.reason})")
        return placement


def _server_state(row: dict, unreachable: dict[str, str], live_health: bool) -> Server:
    # With live probes on, only recent verdicts count (this placement's probes, and those of the last
    # HEALTH_VERDICT_MINUTES): a server that was down and is back is not refused for an old one.
    if row["name"] in unreachable or (live_health and row["recently_unhealthy"]):
        health = "unhealthy"
    else:
        health = "unknown" if live_health else row["health"]
    return Server(
        name=row["name"],
        kind=row["kind"],
        status=row["status"],
        health=health,
        pg_major=row["pg_major"],
        capacity_tenants=row["capacity_tenants"],
        tenant_count=row["tenant_count"],
        capacity_storage_gb=row["capacity_storage_gb"],
        storage_committed_gb=row["storage_committed_gb"],
    )


def _summary(candidates: list[Candidate]) -> str:
    return "; ".join(f"{c.name}: {c.reason}" for c in candidates) or "none registered"
