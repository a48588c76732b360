#!/usr/bin/python
"""Record a plan's entitlements in the registry's catalog, a new version when they change."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: registry_plan
short_description: Record a plan's entitlements in the registry, a new version when they change
description:
  - Makes the latest version of the plan in C(registry.plans) carry I(entitlements) (the inventory's
    C(saasodoo_plans) entry). A new plan becomes version 1, changed entitlements become the next version
    (C(effective_from) now), and entitlements equal to the latest version's (jsonb equality) change nothing.
  - Versions are never updated or deleted, since tenants point at the version they run on. C(db_type) is the
    entitlements' own (a check constraint keeps them equal); one without C(db_type) shared or dedicated is refused.
  - Check mode computes the same answer and rolls it back.
  - The platform_registry role logs in as C(postgres) over the Unix socket (I(login_host) the socket directory, peer
    authentication, no password) and acts as the registry owner with I(session_role).
version_added: 0.6.0
author: SaaSOdoo ops maintainers
options:
  name:
    description: The plan's name (its Kill Bill plan name).
    type: str
    required: true
  entitlements:
    description: What the plan gives, with its C(db_type).
    type: dict
    required: true
  login_password:
    description: The login role's password; not needed for a login the server admits without one (C(postgres) over
      the Unix socket, peer authentication).
    type: str
    required: false
  session_role:
    description: The role to act as once logged in (C(SET ROLE)), for example the registry owner when logged in as
      C(postgres).
    type: str
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
extends_documentation_fragment:
  - saasodoo.platform.registry_login
"""

EXAMPLES = r"""
- name: Ensure each plan's latest version has the catalog's entitlements
  saasodoo.platform.registry_plan:
    name: "{{ item.key }}"
    entitlements: "{{ item.value }}"
    login_host: /var/run/postgresql
    login_user: postgres
    session_role: saasodoo_registry
  loop: "{{ saasodoo_plans | dict2items }}"
"""

RETURN = r"""
plan:
  description: The plan's latest version after the change.
  returned: success
  type: dict
  sample: {"name": "basic-monthly", "version": 2, "db_type": "shared", "effective_from": "2026-01-01 10:00:00+00",
           "entitlements": {"db_type": "shared", "odoo_workers": 3, "storage_gb": 5}}
previous_version:
  description: The version that was the latest before, or null for a new plan (same as C(plan.version) when
    nothing changed).
  returned: success
  type: int
"""

import traceback

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.saasodoo.platform.plugins.module_utils.registry import RegistryUnreachable
from ansible_collections.saasodoo.platform.plugins.module_utils.registry_plans import (
    latest_plan,
    record_plan_version,
)
from ansible_collections.saasodoo.platform.plugins.module_utils.registry_session import (
    SESSION_LOGIN_OPTIONS,
    connect_registry_session,
)

try:
    import psycopg

    PSYCOPG_IMPORT_ERROR = None
except ImportError:
    PSYCOPG_IMPORT_ERROR = traceback.format_exc()

DB_TYPES = ("shared", "dedicated")


class PlanError(Exception):
    """A plan the registry refuses; the message names the plan and what to do."""


def run_module(module: AnsibleModule) -> dict:
    p = module.params
    name, entitlements = p["name"], p["entitlements"]
    if entitlements.get("db_type") not in DB_TYPES:
        raise PlanError(
            f"Plan {name} needs db_type shared or dedicated in its entitlements (got {entitlements.get('db_type')!r})."
        )
    with connect_registry_session(p) as conn, conn.transaction(force_rollback=module.check_mode):
        before = latest_plan(conn, name)
        new = record_plan_version(conn, name, entitlements)
    result = dict(
        changed=new is not None,
        plan=new or before,
        previous_version=before["version"] if before else None,
    )
    if module._diff and new is not None:
        result["diff"] = dict(before=before["entitlements"] if before else {}, after=new["entitlements"])
    return result


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            name=dict(type="str", required=True),
            entitlements=dict(type="dict", required=True),
            **SESSION_LOGIN_OPTIONS,
        ),
        supports_check_mode=True,
    )
    if PSYCOPG_IMPORT_ERROR:
        module.fail_json(msg=missing_required_lib("psycopg"), exception=PSYCOPG_IMPORT_ERROR)
    try:
        module.exit_json(**run_module(module))
    except (PlanError, RegistryUnreachable) as e:
        module.fail_json(msg=str(e), name=module.params["name"])
    except psycopg.Error as e:
        module.fail_json(msg=f"registry error for plan {module.params['name']}: {e}")


if __name__ == "__main__":
    main()
