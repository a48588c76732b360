#!/usr/bin/python
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Read the old copies tenant moves kept that are due, and record them dropped."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: registry_move
short_description: Read the old database copies tenant moves kept that are due, and record them dropped
description:
  - The registry side of C(playbooks/moves_cleanup.yml). M(saasodoo.platform.db_migrate) moves a tenant's
    database and keeps the source as C(<db>_old<move id>) until C(retain_until); this module reads and records
    what happens to those copies afterwards. It never moves anything.
  - Without I(state) the module only reads. It returns in C(copies) the kept copies that are due, in move order,
    each with the server that keeps it, and whether the tenant's role goes with it there (C(role_unused)). A
    copy is due when its retention is over, or, with I(tenant_id), whenever it is that tenant's (a purge).
  - C(state=dropped) records the copies of the moves I(ids) as dropped; those already recorded are left as they
    are, so a second run changes nothing. Check mode rolls it back.
version_added: 0.2.0
author: SaaSOdoo ops maintainers (@saasodoo)
options:
  tenant_id:
    description: When reading, every kept copy of this tenant is due now, its retention over or not.
    type: str
  state:
    description: C(dropped) records the copies of the moves I(ids) as dropped. Unset, the module only reads.
    type: str
    choices: [dropped]
  ids:
    description: The moves (C(registry.migrations) ids, the C(id) of each copy) whose kept copies were dropped.
    type: list
    elements: int
extends_documentation_fragment:
  - saasodoo.platform.attributes
  - saasodoo.platform.registry_login
"""

EXAMPLES = r"""
- name: Read the kept copies whose retention is over
  saasodoo.platform.registry_move:
    login_password: "{{ registry_password }}"
  register: due

- name: Record the copies dropped on pool-shared-01
  saasodoo.platform.registry_move:
    state: dropped
    ids: "{{ due.copies | selectattr('server', 'eq', 'pool-shared-01') | map(attribute='id') }}"
    login_password: "{{ registry_password }}"
"""

RETURN = r"""
copies:
  description: Reading, the kept copies that are due, in move order; an empty list with C(state=dropped).
  returned: success
  type: list
  elements: dict
  contains:
    id:
      description: The move's id (C(registry.migrations)).
      type: int
    tenant_id:
      description: The tenant moved.
      type: str
    retained_db:
      description: The kept copy's database name on the server.
      type: str
    retain_until:
      description: Until when the copy was to be kept.
      type: str
    db_role:
      description: The tenant's role, which owns the copy.
      type: str
    server:
      description: The server that keeps the copy (the move's source).
      type: str
    host:
      description: That server's address.
      type: str
    port:
      description: That server's PostgreSQL port.
      type: int
    pgbouncer_port:
      description: That server's PgBouncer port, or null.
      type: int
    kind:
      description: That server's kind, C(shared) or C(dedicated).
      type: str
    role_unused:
      description: Whether nothing needs the tenant's role on that server once the copy is dropped (its database
        is elsewhere and no copy of it stays kept there).
      type: bool
  sample: [{"id": 3, "tenant_id": "acme", "retained_db": "t_acme_old3", "retain_until": "2026-11-28 10:15:02+00",
            "db_role": "t_acme", "server": "pool-shared-01", "host": "127.0.0.1", "port": 55433,
            "pgbouncer_port": 56433, "kind": "shared", "role_unused": true}]
dropped:
  description: With C(state=dropped), the ids of the moves whose copies this run recorded as dropped.
  returned: success
  type: list
  elements: int
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.saasodoo.platform.plugins.module_utils.registry import (
    REGISTRY_LOGIN_OPTIONS,
    connect_registry,
    run_registry_module,
)
from ansible_collections.saasodoo.platform.plugins.module_utils.registry_moves import (
    due_copies,
    kept_copies,
    mark_dropped,
)


def run_module(module: AnsibleModule) -> dict:
    p = module.params
    result: dict = dict(changed=False, copies=[], dropped=[])
    with connect_registry(p) as conn, conn.transaction(force_rollback=module.check_mode):
        if p["state"] == "dropped":
            result["dropped"] = mark_dropped(conn, p["ids"])
            result["changed"] = bool(result["dropped"])
        else:
            result["copies"] = due_copies(kept_copies(conn), p["tenant_id"])
    return result


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            tenant_id=dict(type="str"),
            state=dict(type="str", choices=["dropped"]),
            ids=dict(type="list", elements="int"),
            **REGISTRY_LOGIN_OPTIONS,
        ),
        required_if=[("state", "dropped", ("ids",))],
        supports_check_mode=True,
    )
    run_registry_module(module, run_module, "registry error about the copies moves kept", refusals=(ValueError,))


if __name__ == "__main__":
    main()
