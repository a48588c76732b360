#!/usr/bin/python
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Record the plans' entitlements in the registry's catalog, a new version of each plan whose entitlements changed."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: registry_plan
short_description: Record the plans' entitlements in the registry, a new version of each plan that changed
description:
  - Makes the latest version of each plan of I(plans) in C(registry.plans) carry its entitlements (the inventory's
    C(saasodoo_plans)), in one transaction and one module call. A new plan becomes version 1, changed entitlements
    become the next version (C(effective_from) now), and entitlements equal to the latest version's (jsonb
    equality) change nothing. Plans the registry has and I(plans) does not name stay as they are.
  - Versions are never updated or deleted, since tenants point at the version they run on. C(db_type) is the
    entitlements' own (a check constraint keeps them equal); a plan without C(db_type) shared or dedicated is
    refused before anything is written.
  - Check mode computes the same answer and rolls it back.
  - The platform_registry role logs in as C(postgres) over the Unix socket (I(login_host) the socket directory, peer
    authentication, no password) and acts as the registry owner with I(session_role).
version_added: 0.2.0
author: SaaSOdoo ops maintainers (@saasodoo)
options:
  plans:
    description: The catalog - each plan's name (its Kill Bill plan name) with what it gives, its C(db_type) included.
    type: dict
    required: true
attributes:
  diff_mode:
    support: full
extends_documentation_fragment:
  - saasodoo.platform.attributes
  - saasodoo.platform.registry_login.session
  - saasodoo.platform.registry_login
"""

EXAMPLES = r"""
- name: Ensure each plan's latest version has the catalog's entitlements
  saasodoo.platform.registry_plan:
    plans: "{{ saasodoo_plans }}"
    login_host: /var/run/postgresql
    login_user: postgres
    session_role: saasodoo_registry
"""

RETURN = r"""
plans:
  description: Each plan's latest version after the change, by name.
  returned: success
  type: dict
  sample: {"basic-monthly": {"name": "basic-monthly", "version": 2, "db_type": "shared",
           "effective_from": "2026-01-01 10:00:00+00",
           "entitlements": {"db_type": "shared", "odoo_workers": 3, "storage_gb": 5}}}
changed_plans:
  description: The plans that got a new version (a new plan's first), in name order.
  returned: success
  type: list
  elements: str
  sample: [basic-monthly]
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.saasodoo.platform.plugins.module_utils.registry import run_registry_module
from ansible_collections.saasodoo.platform.plugins.module_utils.registry_plans import (
    latest_plan,
    record_plan_version,
)
from ansible_collections.saasodoo.platform.plugins.module_utils.registry_session import (
    SESSION_LOGIN_OPTIONS,
    connect_registry_session,
)

DB_TYPES = ("shared", "dedicated")


class PlanError(Exception):
    """A plan the registry refuses; the message names the plan and what to do."""


def run_module(module: AnsibleModule) -> dict:
    import psycopg

    p = module.params
    plans = dict(sorted(p["plans"].items()))
    for name, entitlements in plans.items():
        db_type = entitlements.get("db_type") if isinstance(entitlements, dict) else None
        if db_type not in DB_TYPES:
            got = repr(db_type) if isinstance(entitlements, dict) else f"{type(entitlements).__name__}, not a mapping"
            raise PlanError(f"Plan {name} needs db_type shared or dedicated in its entitlements (got {got}).")
    latest, before, after = {}, {}, {}
    with connect_registry_session(p) as conn, conn.transaction(force_rollback=module.check_mode):
        for name, entitlements in plans.items():
            try:
                previous = latest_plan(conn, name)
                new = record_plan_version(conn, name, entitlements)
            except psycopg.Error as e:
                raise PlanError(f"registry error for plan {name}: {e}") from e
            latest[name] = new or previous
            if new is not None:
                before[name], after[name] = previous["entitlements"] if previous else {}, new["entitlements"]
    result = dict(changed=bool(after), plans=latest, changed_plans=list(after))
    if module._diff and after:
        result["diff"] = dict(before=before, after=after)
    return result


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            plans=dict(type="dict", required=True),
            **SESSION_LOGIN_OPTIONS,
        ),
        supports_check_mode=True,
    )
    run_registry_module(module, run_module, "registry error while recording the plans", refusals=(PlanError,))


if __name__ == "__main__":
    main()
