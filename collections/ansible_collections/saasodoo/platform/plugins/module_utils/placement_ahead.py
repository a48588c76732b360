"""Servers made ahead of need (docs/placement.md): shared pools while the pools have fewer free slots than the
headroom, and warm dedicated spares kept for their plans, so that no sign-up waits for a server's bring-up.

It records them (status provisioning) with the locks placements take, in the order they take them;
playbooks/pools_grow.yml brings them up.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ansible_collections.saasodoo.platform.plugins.module_utils.audit import record_audit
from ansible_collections.saasodoo.platform.plugins.module_utils.placement import (
    PlacementError,
    db_type_of,
    free_slots,
    server_ha,
)
from ansible_collections.saasodoo.platform.plugins.module_utils.placement_store import (
    SERVER_COLUMNS,
    PlacementRequest,
    PlacementStore,
    _server_state,
)

try:
    from psycopg.rows import dict_row
except ImportError:  # reported by the module with missing_required_lib
    dict_row = None


@dataclass
class Ahead:
    free_tenants: int  # what the shared pools could take before this run
    created: list[dict] = field(default_factory=list)  # the servers recorded, as the registry has them
    released: list[str] = field(default_factory=list)  # the spares no longer wanted, left to servers_retire.yml


class AheadOfNeed(PlacementStore):
    def keep(self, headroom: int, spares: dict[str, int], check_mode: bool = False) -> Ahead:
        """New shared pools until they can take `headroom` more tenants, and `spares[plan]` warm dedicated servers
        per plan (those over it released)."""
        with self.conn.transaction(force_rollback=check_mode), self.conn.cursor(row_factory=dict_row) as cur:
            rows = self._shared_servers(cur)  # the rows first, then the lock: the order placements take them in
            self._lock_allocation(cur)
            growth = self.config.shared_growth
            if headroom and growth is None:
                raise PlacementError("a headroom needs shared_growth: how a new shared pool is made")
            states = [_server_state(r, {}, self.config.probe_health) for r in rows]
            ahead = Ahead(free_slots(states, growth.pg_major) if growth else 0)
            if ahead.free_tenants < headroom and not self.config.auto_grow:
                raise PlacementError(
                    f"the shared pools can take {ahead.free_tenants} more tenants, under the headroom of {headroom},"
                    " and pool growth is off: add a shared pool to the inventory (pools_shared) and run site.yml"
                )
            while growth and ahead.free_tenants + len(ahead.created) * growth.capacity_tenants < headroom:
                ahead.created.append(self._create_server(cur, "shared", growth, growth.ha))
                free = ahead.free_tenants
                self._audit(ahead.created[-1], f"{free} tenant slots free, under the headroom of {headroom}")
            for plan, wanted in sorted(spares.items()):
                self._keep_spares(cur, plan, wanted, ahead)
        return ahead

    def _keep_spares(self, cur, plan: str, wanted: int, ahead: Ahead) -> None:
        if wanted < 0:
            raise PlacementError(f"the spares kept for plan {plan!r} must be 0 or more, got {wanted}")
        entitlements = self._plan(cur, plan)["entitlements"]
        if db_type_of(plan, entitlements) != "dedicated":
            raise PlacementError(f"plan {plan!r} is not dedicated: only a dedicated plan's servers are kept as spares")
        cur.execute(
            "SELECT name FROM registry.db_servers WHERE spare_for = %s AND status IN ('active', 'provisioning')"
            " ORDER BY status = 'active' DESC, name FOR UPDATE",
            (plan,),
        )
        kept = [row["name"] for row in cur.fetchall()]
        for name in kept[wanted:]:  # those up kept first; the rest released, brought up and retired once idle
            cur.execute("UPDATE registry.db_servers SET spare_for = NULL WHERE name = %s", (name,))
            ahead.released.append(name)
            self._audit({"name": name}, f"no longer kept as a spare for plan {plan}")
        for _ in range(wanted - len(kept)):
            ha = server_ha(plan, entitlements)
            _, server = self._new_dedicated(cur, PlacementRequest("", plan), entitlements, ha, spare=True)
            cur.execute(
                f"UPDATE registry.db_servers SET spare_for = %s WHERE name = %s RETURNING {SERVER_COLUMNS}",
                (plan, server["name"]),
            )
            ahead.created.append(cur.fetchone())
            self._audit(server, f"a warm spare for plan {plan}")

    def _audit(self, server: dict, reason: str) -> None:
        record_audit(
            self.conn, actor="pool_headroom", tenant_id=None, kind="decision", subject=f"server:{server['name']}",
            detail={"reason": reason},
        )  # fmt: skip

    def to_bring_up(self) -> list[dict]:
        """The shared pools and the dedicated servers no tenant holds (spares, kept or released) still to be brought
        up, by name. A placement records a tenant's new dedicated server with its tenant, in one transaction."""
        with self.conn.cursor(row_factory=dict_row) as cur:
            cur.execute(
                f"SELECT {SERVER_COLUMNS} FROM registry.db_servers WHERE status = 'provisioning'"
                " AND (kind = 'shared' OR dedicated_to IS NULL) ORDER BY name"
            )
            return cur.fetchall()
