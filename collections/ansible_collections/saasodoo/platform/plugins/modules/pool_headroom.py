#!/usr/bin/python
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Keep room in the shared pools ahead of the sign-ups: record new pools before a sign-up finds them full."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: pool_headroom
short_description: Record new shared pools and warm dedicated spares before the sign-ups need them
description:
  - Counts the tenants the shared servers can still take (active or being brought up, not found unhealthy, on
    I(shared_growth)'s PostgreSQL major, with storage left) and records new shared pools (status C(provisioning))
    from I(shared_growth) until that count reaches I(headroom_tenants). Fails, naming the free slots, when they are
    under the headroom and I(auto_grow) is off.
  - Keeps I(dedicated_spares) warm dedicated servers per plan, recorded from I(dedicated) on a dedicated host with
    the plan's share left, as a tenant's server would be (C(registry.db_servers.spare_for)). Placement gives a
    tenant of the plan a spare that is up instead of making it wait for a new server; a spare over the number
    wanted is released, and C(servers_retire.yml) retires it once idle.
  - C(playbooks/pools_grow.yml) brings up what this records, and what an earlier run recorded and did not bring up
    (I(to_bring_up)). Placement takes a pool that is up before one still being brought up.
  - Takes the shared servers' rows, then the lock placements take to record a server, in the order placements
    take them, so that a placement and this module never record the same server or overfill one.
  - Idempotent; with the headroom and the spares met it changes nothing. Check mode says what it would record and
    rolls back.
version_added: 0.2.0
author: SaaSOdoo ops maintainers (@saasodoo)
options:
  headroom_tenants:
    description: Tenants the shared pools keep room for; 0 records no pool.
    type: int
    required: true
  dedicated_spares:
    description: Warm dedicated servers to keep for each dedicated plan, by plan name.
    type: dict
    default: {}
attributes:
  diff_mode:
    support: none
extends_documentation_fragment:
  - saasodoo.platform.attributes
  - saasodoo.platform.placement
  - saasodoo.platform.registry_login
notes:
  - I(policy) and I(odoo_pg_majors) of the placement options are not used here.
"""

EXAMPLES = r"""
- name: Keep room for two more tenants in the shared pools, and one premium server warm
  saasodoo.platform.pool_headroom:
    headroom_tenants: 2
    dedicated_spares: {premium-monthly: 1}
    auto_grow: true
    shared_growth: "{{ saasodoo_pool_growth }}"  # as db_placement's
    dedicated: "{{ saasodoo_dedicated_servers }}"
    odoo_pg_majors: "{{ saasodoo_odoo_pg_majors }}"
    login_password: "{{ registry_password }}"
  register: headroom

- name: What would it record? (writes nothing)
  saasodoo.platform.pool_headroom:
    headroom_tenants: 6
    shared_growth: "{{ saasodoo_pool_growth }}"
    odoo_pg_majors: "{{ saasodoo_odoo_pg_majors }}"
    login_password: "{{ registry_password }}"
  check_mode: true
"""

RETURN = r"""
free_tenants:
  description: The tenants the shared pools could take before this run.
  returned: success
  type: int
  sample: 1
created:
  description: The servers this run recorded (status provisioning), as the registry records them.
  returned: success
  type: list
  elements: dict
  sample: [{"name": "pool-shared-04", "kind": "shared", "host": "127.0.0.1", "port": 55443, "status": "provisioning"}]
released:
  description: The spares this run stopped keeping, which C(servers_retire.yml) retires once idle.
  returned: success
  type: list
  elements: str
to_bring_up:
  description: >-
    Every shared pool and every dedicated server no tenant holds that is still to be brought up: this run's, and
    those an earlier run recorded and did not bring up. What the playbook brings up.
  returned: success
  type: list
  elements: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.saasodoo.platform.plugins.module_utils.placement import PlacementError
from ansible_collections.saasodoo.platform.plugins.module_utils.placement_ahead import AheadOfNeed
from ansible_collections.saasodoo.platform.plugins.module_utils.placement_store import (
    PLACEMENT_OPTIONS,
    placement_config,
)
from ansible_collections.saasodoo.platform.plugins.module_utils.registry import (
    REGISTRY_LOGIN_OPTIONS,
    connect_registry,
    run_registry_module,
)


def run_module(module: AnsibleModule) -> dict:
    p = module.params
    if p["headroom_tenants"] < 0:
        raise PlacementError(f"headroom_tenants must be 0 or more, got {p['headroom_tenants']}")
    try:
        spares = {str(plan): int(wanted) for plan, wanted in p["dedicated_spares"].items()}
    except (TypeError, ValueError):
        given = p["dedicated_spares"]
        raise PlacementError(f"dedicated_spares maps plan names to numbers of spares, not {given!r}") from None
    with connect_registry(p) as conn:
        store = AheadOfNeed(conn, placement_config(p))
        ahead = store.keep(p["headroom_tenants"], spares, module.check_mode)
        to_bring_up = store.to_bring_up()
    return dict(
        changed=bool(ahead.created or ahead.released),
        free_tenants=ahead.free_tenants,
        created=[{k: v for k, v in server.items() if k != "_created"} for server in ahead.created],
        released=ahead.released,
        to_bring_up=to_bring_up,
    )


def main() -> None:
    options = dict(
        headroom_tenants=dict(type="int", required=True),
        dedicated_spares=dict(type="dict", default={}),
        **PLACEMENT_OPTIONS,
        **REGISTRY_LOGIN_OPTIONS,
    )
    module = AnsibleModule(argument_spec=options, supports_check_mode=True)
    run_registry_module(module, run_module, "registry error while keeping room in the shared pools",
                        refusals=(PlacementError,))  # fmt: skip


if __name__ == "__main__":
    main()
