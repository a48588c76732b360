#!/usr/bin/python
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Read what the registry records about the fleet: servers, tenants, plans."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: registry_info
short_description: Read the registry's servers (with their tenant counts), tenants and current plans
description:
  - Returns what the registry records, as C(playbooks/platform_status.yml) shows it beside what it probes live.
  - C(servers) are every database server the registry knows, by name, each with the number of tenants whose
    database it holds (C(tenants), whatever their status); C(tenants) are every tenant, by id; C(plans) are the
    newest version of every plan, by name.
  - Read-only, in one read-only snapshot; it never changes anything, in check mode or not.
version_added: 0.2.0
author: SaaSOdoo ops maintainers (@saasodoo)
options:
  gather_subset:
    description: What to read; the others are returned as empty lists.
    type: list
    elements: str
    choices: [servers, tenants, plans, drills, moves]
    default: [servers, tenants, plans, drills, moves]
extends_documentation_fragment:
  - saasodoo.platform.attributes
  - saasodoo.platform.registry_login
"""

EXAMPLES = r"""
- name: Read the registry's servers, tenants and plans
  saasodoo.platform.registry_info:
    login_password: "{{ registry_password }}"
  register: registry

- name: Read the servers only
  saasodoo.platform.registry_info:
    gather_subset: [servers]
    login_password: "{{ registry_password }}"
  register: registry
"""

RETURN = r"""
servers:
  description:
    - Every server the registry knows, by name, with C(tenants) the number of tenants placed there, purged ones
      not counted. No secret is stored there.
    - C(reserved_cpu) and C(reserved_memory_mb) are what a dedicated server made on a dedicated host holds of it
      until it is retired (null otherwise).
    - C(spare_for) names the plan a warm dedicated server is kept for (C(playbooks/pools_grow.yml)) until a
      tenant of that plan takes it (null otherwise).
  returned: success
  type: list
  elements: dict
  sample: [{"name": "pool-shared-01", "kind": "shared", "status": "active", "health": "healthy",
            "health_checked_at": "2026-11-25 01:05:00 UTC", "health_detail": null,
            "host": "127.0.0.1", "port": 55433, "pgbouncer_host": "127.0.0.1", "pgbouncer_port": 56433,
            "pg_major": 15, "capacity_tenants": 50, "capacity_storage_gb": 500, "storage_committed_gb": 15,
            "dedicated_to": null, "reserved_cpu": null, "reserved_memory_mb": null, "spare_for": null,
            "tenants": 3}]
tenants:
  description: Every tenant, by id; C(db_server) is null until the tenant is placed.
  returned: success
  type: list
  elements: dict
  sample: [{"tenant_id": "acme", "customer_id": "6c1f...", "subscription_id": "0b7e...",
            "plan_name": "basic-monthly", "plan_version": 1, "db_type": "shared", "db_server": "pool-shared-01",
            "db_name": "t_acme", "db_role": "t_acme", "status": "active", "billing_status": null,
            "storage_path": "/srv/tenants/acme", "http_port": 58100, "credential_version": 1,
            "created_at": "2026-11-21 10:15:02.5+00", "retain_until": null}]
drills:
  description: The newest restore drill (C(playbooks/backups_drill.yml)), in a list of at most one.
  returned: success
  type: list
  elements: dict
  sample: [{"id": 7, "tenant_id": "acme", "backup_id": "acme-20261121T101500123456Z",
            "drilled_at": "2026-11-22 03:00:05 UTC", "seconds": 4.2, "passed": true,
            "detail": "restored 12 tables from backup acme-20261121T101500123456Z"}]
moves:
  description:
    - The ten latest database moves, newest first, with how long each held its tenant (C(write_downtime_ms), from
      the block of its writes to the target letting it in; null for a suspended tenant) and that window's steps
      (C(held_timeline), ms after the block).
  returned: success
  type: list
  elements: dict
  sample: [{"id": 12, "tenant_id": "acme", "source_server": "pool-shared-01", "target_server": "pool-dedicated-01",
            "method": "logical", "phase": "done", "started_at": "2026-11-22 03:00:05 UTC", "write_downtime_ms": 612,
            "held_timeline": {"sessions ended": 38, "caught up": 240, "repointed": 590, "let in": 612}}]
plans:
  description: The newest version of every plan, by name, with its entitlements.
  returned: success
  type: list
  elements: dict
  sample: [{"name": "basic-monthly", "version": 1, "db_type": "shared", "effective_from": "2026-11-21 10:00:00+00",
            "entitlements": {"db_type": "shared", "odoo_workers": 2, "storage_gb": 5}}]
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.saasodoo.platform.plugins.module_utils.registry import (
    REGISTRY_LOGIN_OPTIONS,
    connect_registry,
    run_registry_module,
)
from ansible_collections.saasodoo.platform.plugins.module_utils.registry_fleet import QUERIES, read_fleet


def run_module(module: AnsibleModule) -> dict:
    with connect_registry(module.params) as conn:
        fleet = read_fleet(conn, module.params["gather_subset"])
    return dict(changed=False, **{subset: fleet.get(subset, []) for subset in QUERIES})


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            gather_subset=dict(type="list", elements="str", choices=list(QUERIES), default=list(QUERIES)),
            **REGISTRY_LOGIN_OPTIONS,
        ),
        supports_check_mode=True,
    )
    run_registry_module(module, run_module, "registry error reading the fleet", refusals=(ValueError,))


if __name__ == "__main__":
    main()
