#!/usr/bin/python
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Decide and record where a tenant database lives."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: db_placement
short_description: Decide and record which PostgreSQL server holds a tenant's database
description:
  - Reads the tenant's plan from the registry and takes C(db_type) from its entitlements, never from its name.
  - C(shared) picks among the shared servers that are active (or being provisioned), reachable, on a PostgreSQL
    major the plan's Odoo supports, and with room for one more tenant and its storage quota. Policy C(fill_first)
    takes the fullest that fits, C(spread) the emptiest; ties go by name.
  - When no shared server fits and I(auto_grow) is on, records a new shared pool (status C(provisioning)) from
    I(shared_growth); otherwise fails with a message naming every candidate and why it was refused.
  - C(dedicated) returns the tenant's own dedicated server, recording a new one from I(dedicated) if it has none.
  - Everything happens in one registry transaction. Concurrent placements queue on the shared servers' row locks,
    so none overfills a server. The tenant (status C(provisioning)), the decision and an audit row are recorded.
  - Idempotent; an already placed tenant gets its existing placement back, unchanged.
    Check mode answers "where would it go?" and rolls everything back.
version_added: 0.1.0
author: SaaSOdoo ops maintainers (@saasodoo)
options:
  tenant_id:
    description: The tenant's id (Kill Bill external key); 1-48 letters, digits, C(-) or C(_).
    type: str
    required: true
  customer_id:
    description: Kill Bill account id.
    type: str
  subscription_id:
    description: Kill Bill subscription id.
    type: str
  plan:
    description: Kill Bill plan name; its newest version in C(registry.plans) applies.
    type: str
    required: true
attributes:
  diff_mode:
    support: full
extends_documentation_fragment:
  - saasodoo.platform.attributes
  - saasodoo.platform.placement
  - saasodoo.platform.registry_login
"""

EXAMPLES = r"""
- name: Place the tenant's database
  saasodoo.platform.db_placement:
    tenant_id: acme
    customer_id: 6f4c2d2e-0a4e-4f0e-9d7a-2b1f3c4d5e6f
    subscription_id: 0b9e8c7d-1a2b-4c3d-8e9f-0a1b2c3d4e5f
    plan: basic-monthly
    auto_grow: true
    shared_growth:
      name_prefix: pool-shared-
      port_range: [55440, 55469]
      capacity_tenants: 3
      pgbouncer_port_offset: 1000
    dedicated:
      name_prefix: pool-dedicated-
      port_range: [55470, 55499]
    odoo_pg_majors: {"18.0": [13, 14, 15, 16, 17]}
    login_port: 55432
    login_password: "{{ registry_password }}"
  register: placement

- name: Where would it go? (writes nothing)
  saasodoo.platform.db_placement:
    tenant_id: globex
    plan: premium-monthly
    odoo_pg_majors: {"18.0": [15]}
    login_password: "{{ registry_password }}"
  check_mode: true
"""

RETURN = r"""
server:
  description: The server that holds (or will hold) the tenant's database, as the registry records it.
  returned: success
  type: dict
  sample: {"name": "pool-shared-01", "kind": "shared", "host": "127.0.0.1", "port": 55433, "status": "active",
           "pgbouncer_port": 56433, "tenant_count": 2, "capacity_tenants": 3}
tenant:
  description: The tenant's registry row (no secret is stored there).
  returned: success
  type: dict
  sample: {"tenant_id": "acme", "plan_name": "basic-monthly", "db_type": "shared", "db_name": "t_acme",
           "db_role": "t_acme", "status": "provisioning", "credential_version": 1}
placement:
  description: The decision record as stored in registry.placements, with every candidate and its verdict.
  returned: success
  type: dict
created_server:
  description: Name of the server this placement recorded as new (status provisioning), else null.
  returned: success
  type: str
executed:
  description: What the module did (or, in check mode, would do), in order.
  returned: success
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.saasodoo.platform.plugins.module_utils.placement import PlacementError
from ansible_collections.saasodoo.platform.plugins.module_utils.placement_store import (
    PLACEMENT_OPTIONS,
    PlacementRequest,
    PlacementStore,
    placement_config,
)
from ansible_collections.saasodoo.platform.plugins.module_utils.registry import (
    REGISTRY_LOGIN_OPTIONS,
    connect_registry,
    run_registry_module,
)


def argument_spec() -> dict:
    return dict(
        tenant_id=dict(type="str", required=True),
        customer_id=dict(type="str"),
        subscription_id=dict(type="str"),
        plan=dict(type="str", required=True),
        **PLACEMENT_OPTIONS,
        **REGISTRY_LOGIN_OPTIONS,
    )


def run_module(module: AnsibleModule) -> dict:
    p = module.params
    config = placement_config(p)
    request = PlacementRequest(p["tenant_id"], p["plan"], p["customer_id"], p["subscription_id"])
    with connect_registry(p) as conn:
        result = PlacementStore(conn, config).place(request, check_mode=module.check_mode)
    outcome = dict(
        changed=result.changed,
        server=result.server,
        tenant=result.tenant,
        placement=result.placement,
        created_server=result.created_server,
        executed=result.executed,
    )
    if module._diff and result.changed:
        outcome["diff"] = dict(
            before={},
            after={"tenant": p["tenant_id"], "server": result.server["name"], "reason": result.placement["reason"]},
        )
    return outcome


def main() -> None:
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    p = module.params
    run_registry_module(
        module, run_module, f"registry error while placing tenant {p['tenant_id']}",
        refusals=(PlacementError,), tenant_id=p["tenant_id"], plan=p["plan"],
    )  # fmt: skip


if __name__ == "__main__":
    main()
