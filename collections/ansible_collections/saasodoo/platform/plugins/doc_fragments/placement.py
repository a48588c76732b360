"""The placement options of db_placement and db_migrate (module_utils/placement_store.py PLACEMENT_OPTIONS)."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  policy:
    description: How to choose among shared servers that fit.
    type: str
    choices: [fill_first, spread]
    default: fill_first
  auto_grow:
    description: Record a new shared pool when none fits, instead of failing.
    type: bool
    default: false
  shared_growth:
    description: How a new shared pool is made when I(auto_grow) is on.
    type: dict
    suboptions: &new_server
      name_prefix:
        description: Name of the new server without its two-digit number.
        type: str
        required: true
      port_range:
        description: First and last port a new server may take.
        type: list
        elements: int
        required: true
      host:
        description: Address of the new server.
        type: str
        default: 127.0.0.1
      pg_major:
        description: PostgreSQL major version of the new server.
        type: int
        default: 15
      capacity_tenants:
        description: Tenants the new server takes.
        type: int
        default: 1
      capacity_storage_gb:
        description: Storage quota the new server's tenants may add up to.
        type: int
        default: 100
      pgbouncer_port_offset:
        description: When set, the new server gets a PgBouncer on its port plus this offset.
        type: int
      ha:
        description: Whether a new shared pool outlives its primary (Patroni with a replica, C(sync) confirming each
          commit); a new dedicated server's is its plan's C(ha), whatever this says.
        type: str
        choices: [none, async, sync]
        default: none
  dedicated:
    description: How a new dedicated server is made (the keys of I(shared_growth), and I(hosts)).
    type: dict
    suboptions:
      <<: *new_server
      hosts:
        description:
          - The machines dedicated servers are made on, each with the cores and memory it has for them. A new server
            goes on one with its plan's C(cpu) and C(memory_mb) left (I(policy) C(fill_first) the one with the least
            left that fits, C(spread) the most) and holds that share until it is retired; none left, placement
            fails naming every host and what holds it.
          - Empty, a new dedicated server goes on I(host), holding nothing.
        type: list
        elements: dict
        default: []
        suboptions:
          address:
            description: The host's address (a new server's C(host)).
            type: str
            required: true
          cpu:
            description: The cores its dedicated servers may hold in all.
            type: float
            required: true
          memory_mb:
            description: The memory its dedicated servers may hold in all, in MB.
            type: int
            required: true
  odoo_pg_majors:
    description: Odoo series (for example C(18.0)) to the PostgreSQL majors it supports.
    type: dict
    required: true
  probe_health:
    description: Check that the chosen shared server accepts TCP connections; an unreachable one is refused and
      marked unhealthy.
    type: bool
    default: true
"""
