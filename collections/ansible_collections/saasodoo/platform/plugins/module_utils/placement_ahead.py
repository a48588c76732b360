"""Servers made ahead of need (docs/placement.md): shared pools while the pools have fewer free slots than the
headroom, and warm dedicated spares kept for their plans, so that no sign-up waits for a server's bring-up.

It records them (status provisioning) with the locks placements take, in the order they take them;
playbooks/pools_grow.yml brings them up.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ansible_collections.saasodoo.platform.plugins.module_utils.audit import record_audit
from ansible_collections.saasodoo.platform.plugins.module_utils.placement import (
    CPU_TOLERANCE,
    PlacementError,
    db_type_of,
    free_slots,
    server_ha,
)
from ansible_collections.saasodoo.platform.plugins.module_utils.placement_store import (
    HEALTH_VERDICT_MINUTES,
    SERVER_COLUMNS,
    PlacementRequest,
    PlacementStore,
    _server_state,
)

try:
    from psycopg.rows import dict_row
except ImportError:  # reported by the module with missing_required_lib
    dict_row = None

SPARE_COLUMNS = (
    "name, status, ha, spare_for, reserved_cpu, reserved_memory_mb, (health = 'unhealthy'"
    f" AND health_checked_at > now() - interval '{HEALTH_VERDICT_MINUTES} minutes') AS recently_unhealthy"
)


@dataclass
class Ahead:
    free_tenants: int  # what the shared pools could take before this run
    created: list[dict] = field(default_factory=list)  # the servers recorded, as the registry has them
    released: list[str] = field(default_factory=list)  # the spares no longer wanted, left to servers_retire.yml
    reason: str = ""  # why the pools were grown


class AheadOfNeed(PlacementStore):
    def keep(self, headroom: int, spares: dict[str, int], check_mode: bool = False) -> Ahead:
        """New shared pools until they can take `headroom` more tenants of the smallest shared plan's storage, and
        `spares[plan]` warm dedicated servers per plan (0 for a plan it does not name); those over it, or no longer
        of their plan's ha or share, released. The shared pools' rows, the spares', the allocation lock, then the
        audit chain's: the order placements take them in, so neither waits for the other in a cycle."""
        with self.conn.transaction(force_rollback=check_mode), self.conn.cursor(row_factory=dict_row) as cur:
            self._shared_servers(cur)
            cur.execute(
                f"SELECT {SPARE_COLUMNS} FROM registry.db_servers WHERE spare_for IS NOT NULL ORDER BY name FOR UPDATE"
            )
            self._lock_allocation(cur)
            # Read again under the lock: a server another run recorded while this one waited is counted (none is
            # recorded but under it). Not locked again: a placement holding a new pool's row waits for that lock.
            rows = cur.execute(f"SELECT {SERVER_COLUMNS} FROM registry.db_servers WHERE kind = 'shared'").fetchall()
            kept = cur.execute(
                f"SELECT {SPARE_COLUMNS} FROM registry.db_servers WHERE spare_for IS NOT NULL"
            ).fetchall()
            ahead, decisions = self._grow_pools(cur, rows, headroom), []
            decisions += [(server["name"], ahead.reason) for server in ahead.created]
            for plan in sorted(set(spares) | {row["spare_for"] for row in kept}):
                mine = [row for row in kept if row["spare_for"] == plan]
                decisions += self._keep_spares(cur, plan, spares.get(plan, 0), mine, ahead)
            for name, reason in decisions:
                record_audit(
                    self.conn, actor="pool_headroom", tenant_id=None, kind="decision", subject=f"server:{name}",
                    detail={"reason": reason},
                )  # fmt: skip
        return ahead

    def _grow_pools(self, cur, rows: list[dict], headroom: int) -> Ahead:
        growth = self.config.shared_growth
        if growth is None:
            if headroom:
                raise PlacementError("a headroom needs shared_growth: how a new shared pool is made")
            return Ahead(0)
        cur.execute(
            "SELECT min(coalesce((entitlements->>'storage_gb')::integer, 0)) AS gb FROM (SELECT DISTINCT ON (name)"
            " db_type, entitlements FROM registry.plans ORDER BY name, version DESC) AS newest WHERE db_type = 'shared'"
        )
        storage_gb = cur.fetchone()["gb"] or 0
        states = [_server_state(r, {}, self.config.probe_health) for r in rows]
        free = free_slots(states, growth.pg_major, storage_gb)
        ahead = Ahead(free, reason=f"{free} tenant slots free, under the headroom of {headroom}")
        if free >= headroom:
            return ahead
        if not self.config.auto_grow:
            raise PlacementError(
                f"the shared pools can take {free} more tenants, under the headroom of {headroom}, and pool growth"
                " is off: add a shared pool to the inventory (pools_shared) and run playbooks/site.yml"
            )
        per_pool = min(growth.capacity_tenants, growth.capacity_storage_gb // storage_gb if storage_gb else 1 << 30)
        if per_pool < 1:
            raise PlacementError(f"a new pool's {growth.capacity_storage_gb} GB take no tenant of {storage_gb} GB")
        while free + len(ahead.created) * per_pool < headroom:
            ahead.created.append(self._create_server(cur, "shared", growth, growth.ha))
        return ahead

    def _keep_spares(self, cur, plan: str, wanted: int, kept: list[dict], ahead: Ahead) -> list[tuple[str, str]]:
        """The plan's spares up to `wanted`: what was recorded, and why."""
        if wanted < 0:
            raise PlacementError(f"the spares kept for plan {plan!r} must be 0 or more, got {wanted}")
        fits, decisions = [], []
        if wanted:
            entitlements = self._plan(cur, plan)["entitlements"]
            if db_type_of(plan, entitlements) != "dedicated":
                raise PlacementError(
                    f"plan {plan!r} is not dedicated: only a dedicated plan's servers are kept as spares"
                )
            ha = server_ha(plan, entitlements)
            share = self._share(plan, entitlements) if self.config.dedicated and self.config.dedicated.hosts else None
            fits = [
                row for row in kept
                if row["status"] in ("active", "provisioning") and row["ha"] == ha
                and not (self.config.probe_health and row["recently_unhealthy"])
                and (share is None or (abs(float(row["reserved_cpu"] or 0) - share[0]) < CPU_TOLERANCE
                                       and row["reserved_memory_mb"] == share[1]))
            ]  # fmt: skip
            fits.sort(key=lambda row: (row["status"] != "active", row["name"]))  # those up kept first
        for row in [row for row in kept if row not in fits[:wanted]]:
            # Released: retired once idle (servers_retire.yml), or now if no run ever claimed its bring-up.
            cur.execute(
                "UPDATE registry.db_servers SET spare_for = NULL, status = CASE WHEN status = 'provisioning'"
                " AND bring_up_by IS NULL THEN 'retired' ELSE status END WHERE name = %s",
                (row["name"],),
            )
            ahead.released.append(row["name"])
            decisions.append((row["name"], f"no longer kept as a spare for plan {plan}"))
        for _missing in range(wanted - len(fits[:wanted])):
            server = self._new_dedicated(cur, PlacementRequest("", plan), entitlements, ha, spare=True)[1]
            cur.execute(
                f"UPDATE registry.db_servers SET spare_for = %s WHERE name = %s RETURNING {SERVER_COLUMNS}",
                (plan, server["name"]),
            )
            ahead.created.append(cur.fetchone())
            decisions.append((server["name"], f"a warm spare for plan {plan}"))
        return decisions

    def to_bring_up(self) -> list[dict]:
        """The shared pools and the dedicated servers no tenant holds (spares, kept or released) still to be brought
        up, by name. A placement records a tenant's new dedicated server with its tenant, in one transaction."""
        with self.conn.cursor(row_factory=dict_row) as cur:
            cur.execute(
                f"SELECT {SERVER_COLUMNS} FROM registry.db_servers WHERE status = 'provisioning'"
                " AND (kind = 'shared' OR dedicated_to IS NULL) ORDER BY name"
            )
            return cur.fetchall()
