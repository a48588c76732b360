#!/usr/bin/python
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Record a database server in the registry: as the inventory describes it, its bring-up, its draining, its
retirement."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: registry_server
short_description: Record a database server in the registry, its bring-up, its draining and its retirement
description:
  - Returns the server's registry row (C(registry.db_servers)); an unknown server fails with what to do, unless
    I(inventory) records it.
  - I(inventory) records the server as the inventory describes it (C(platform_registry_db_servers)), inserting it
    or updating the columns the inventory owns; C(status), C(health), C(dedicated_to) and the bring-up claim are
    the platform's and stay as they are. An unchanged server writes nothing.
  - I(claim_bring_up) claims a provisioning server's bring-up for I(bring_up_by) for I(bring_up_minutes) (C(claimed)
    says whether it did) if it is free, already this claimant's, or expired (its run was killed).
    Any other run waits for the server to become active (C(playbooks/tasks/server_up.yml) retries until then).
  - I(status=active) records a provisioning server active and healthy and gives its claim back, if
    I(bring_up_by) (still) holds the claim; any other server is left as it is.
  - I(status=draining) takes an active shared pool out of placement (C(playbooks/pool_drain.yml)); one already
    draining stays so. An unknown or dedicated server is refused.
  - I(status=retired) retires an active dedicated server nothing holds any more (C(playbooks/servers_retire.yml)),
    that is with no tenant's database (a terminated tenant keeps its own until purged), no move to or from it, no
    old copy a move kept there, and no change for I(idle_hours). Placement never chooses a retired server again
    (the tenant gets a new one), and the registry inventory plugin lists none. A server something holds stays as
    it is, and C(held_by) says what holds it; a shared pool is refused (C(playbooks/pool_drain.yml) empties one).
  - I(health) records what a probe found (C(playbooks/servers_probe.yml)), C(healthy) or C(unhealthy) with
    I(health_detail) saying why, and the time of the probe, which placement reads to know how recent the verdict
    is; a server unhealthy within the last 10 minutes is refused without being probed again. Changed only when
    the verdict changes; the probe's time is written each time. A probe does not count as a change for
    I(idle_hours). A server still being brought up is left as it is (its bring-up records it healthy).
  - I(list_tenants) returns the tenants to move off the server (C(tenants)), with those whose move from it a killed
    run left open.
  - All of it in one transaction; check mode computes the same answer and rolls it back.
  - The platform_registry role logs in as C(postgres) over the Unix socket (I(login_host) the socket directory, peer
    authentication, no password) and acts as the registry owner with I(session_role).
version_added: 0.2.0
author: SaaSOdoo ops maintainers (@saasodoo)
options:
  name:
    description: The server's name (its inventory host name).
    type: str
    required: true
  inventory:
    description: The server as the inventory describes it; records it.
    type: dict
    suboptions:
      kind:
        description: A shared pool or a dedicated server.
        type: str
        required: true
        choices: [shared, dedicated]
      host:
        description: The address its PostgreSQL listens on.
        type: str
        required: true
      port:
        description: Its PostgreSQL port.
        type: int
        required: true
      pgbouncer_host:
        description: Its PgBouncer's address (with I(pgbouncer_port), or neither).
        type: str
      pgbouncer_port:
        description: Its PgBouncer's port.
        type: int
      pg_major:
        description: Its PostgreSQL major version.
        type: int
        required: true
      capacity_tenants:
        description: How many tenants placement may put on it.
        type: int
        required: true
      capacity_storage_gb:
        description: How much storage (plans' C(storage_gb)) placement may commit to it.
        type: int
        required: true
      ha:
        description: Whether it outlives its primary (Patroni with a replica, C(sync) confirming each commit); unset,
          a new server's is C(none) and a recorded one's stays as it is.
        type: str
        choices: [none, async, sync]
  claim_bring_up:
    description: Claim the provisioning server's bring-up for I(bring_up_by).
    type: bool
    default: false
  bring_up_by:
    description: Who brings the server up (a tenant id, or C(pool_drain:<pool>)); the same claimant takes its
      claim back at once.
    type: str
  bring_up_minutes:
    description: How long a claim holds if its run never finishes; then another run takes it over.
    type: int
    default: 15
  status:
    description: The status to record (see above for what each may change).
    type: str
    choices: [active, draining, retired]
  idle_hours:
    description: With I(status=retired), how long the server must have been unchanged (its last tenant gone).
    type: float
    default: 24
  health:
    description: A probe's verdict on the server to record.
    type: str
    choices: [healthy, unhealthy]
  health_detail:
    description: With I(health=unhealthy), what failed (recorded as C(health_detail)).
    type: str
  list_tenants:
    description: Return the tenants to move off the server in C(tenants).
    type: bool
    default: false
extends_documentation_fragment:
  - saasodoo.platform.attributes
  - saasodoo.platform.registry_login.session
  - saasodoo.platform.registry_login
"""

EXAMPLES = r"""
- name: Record the pool as the inventory describes it, as the owner over the admin socket
  saasodoo.platform.registry_server:
    name: pool-shared-01
    inventory: "{{ hostvars['pool-shared-01'].saasodoo_db_server }}"
    login_host: /var/run/postgresql
    login_user: postgres
    session_role: saasodoo_registry

- name: Claim the bring-up, or wait until another run has brought the server up
  saasodoo.platform.registry_server:
    name: pool-shared-03
    claim_bring_up: true
    bring_up_by: acme
    login_password: "{{ registry_password }}"
  register: claim
  until: claim.claimed or claim.server.status != 'provisioning'
  retries: 192
  delay: 5

- name: Record it active once converged
  saasodoo.platform.registry_server:
    name: pool-shared-03
    status: active
    bring_up_by: acme
    login_password: "{{ registry_password }}"

- name: Retire the dedicated server if its tenant left more than a day ago and nothing else holds it
  saasodoo.platform.registry_server:
    name: pool-dedicated-03
    status: retired
    idle_hours: 24
    login_password: "{{ registry_password }}"
  register: retirement

- name: Record that the pool's PgBouncer refused the probe's login
  saasodoo.platform.registry_server:
    name: pool-shared-02
    health: unhealthy
    health_detail: "PgBouncer 127.0.0.1:56433: connection refused"
    login_password: "{{ registry_password }}"

- name: Mark the pool draining and read the tenants to move off it
  saasodoo.platform.registry_server:
    name: pool-shared-01
    status: draining
    list_tenants: true
    login_password: "{{ registry_password }}"
  register: pool
"""

RETURN = r"""
server:
  description: The server's registry row after the change.
  returned: success
  type: dict
  sample: {"name": "pool-shared-03", "kind": "shared", "host": "127.0.0.1", "port": 55435,
           "pgbouncer_host": "127.0.0.1", "pgbouncer_port": 56435, "pg_major": 16, "capacity_tenants": 3,
           "capacity_storage_gb": 200,
           "status": "provisioning", "health": "unknown", "health_checked_at": null, "health_detail": null,
           "dedicated_to": null, "tenant_count": 2,
           "bring_up_by": "acme", "bring_up_until": "2026-01-01 10:15:00+00"}
held_by:
  description: With I(status=retired), what holds the server (it was not retired), or an empty string.
  returned: success
  type: str
  sample: "old copies t_acme_old12"
claimed:
  description: Whether this run holds the bring-up now (with I(claim_bring_up)).
  returned: success
  type: bool
tenants:
  description: With I(list_tenants), the active and suspended tenants to move off the server, by id.
  returned: success
  type: list
  elements: dict
  sample: [{"tenant_id": "acme", "plan_name": "basic-monthly"}]
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.saasodoo.platform.plugins.module_utils.registry import run_registry_module
from ansible_collections.saasodoo.platform.plugins.module_utils.registry_servers import (
    claim_bring_up,
    mark_brought_up,
    mark_draining,
    read_server,
    record_health,
    record_server,
    retire,
    tenants_to_move,
)
from ansible_collections.saasodoo.platform.plugins.module_utils.registry_session import (
    SESSION_LOGIN_OPTIONS,
    connect_registry_session,
)


class ServerError(Exception):
    """A request the registry refuses; the message names the server and what to do."""


def check_draining(name: str, server: dict | None) -> None:
    # pool_drain.yml shows these as they are: nothing is marked or moved.
    if server is None:
        raise ServerError(f"{name} is not a server the registry knows; nothing was moved.")
    if server["kind"] != "shared":
        raise ServerError(
            f"{name} is a dedicated server: its tenant moves with its plan (tenant_change_plan.yml); nothing was moved."
        )


def check_retiring(name: str, server: dict) -> str:
    """'' when the server may be retired now, else why it stays; a shared pool is refused."""
    if server["kind"] != "dedicated":
        raise ServerError(
            f"{name} is a shared pool: only a dedicated server is retired; empty a pool with pool_drain.yml and "
            "take it out of the inventory"
        )
    return "" if server["status"] in ("active", "retired") else f"it is {server['status']}"


def run_module(module: AnsibleModule) -> dict:
    p = module.params
    name = p["name"]
    changed = claimed = False
    held_by = ""
    with connect_registry_session(p) as conn, conn.transaction(force_rollback=module.check_mode):
        if p["inventory"] is not None:
            changed |= record_server(conn, name, p["inventory"])
        server = read_server(conn, name, lock=True)
        if p["status"] == "draining":
            check_draining(name, server)
        elif server is None:
            raise ServerError(
                f"{name} is not a server the registry knows: check its name (the registry has the inventory's "
                "servers once playbooks/site.yml ran, and those placement made)"
            )
        if p["claim_bring_up"]:
            claimed = claim_bring_up(conn, name, p["bring_up_by"], p["bring_up_minutes"])
            changed |= claimed
        if p["status"] == "active":
            changed |= mark_brought_up(conn, name, p["bring_up_by"])
        elif p["status"] == "draining":
            changed |= mark_draining(conn, name)
        elif p["status"] == "retired":
            held_by = check_retiring(name, server)
            if not held_by and server["status"] == "active":
                held_by = retire(conn, name, p["idle_hours"])
                changed |= not held_by
        if p["health"]:
            changed |= record_health(conn, server, p["health"], p["health_detail"])
        if changed:
            server = read_server(conn, name)
        tenants = tenants_to_move(conn, name) if p["list_tenants"] else []
    return dict(changed=changed, server=server, claimed=claimed, tenants=tenants, held_by=held_by)


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            name=dict(type="str", required=True),
            inventory=dict(
                type="dict",
                options=dict(
                    kind=dict(type="str", required=True, choices=["shared", "dedicated"]),
                    host=dict(type="str", required=True),
                    port=dict(type="int", required=True),
                    pgbouncer_host=dict(type="str"),
                    pgbouncer_port=dict(type="int"),
                    pg_major=dict(type="int", required=True),
                    capacity_tenants=dict(type="int", required=True),
                    capacity_storage_gb=dict(type="int", required=True),
                    ha=dict(type="str", choices=["none", "async", "sync"]),
                ),
            ),
            claim_bring_up=dict(type="bool", default=False),
            bring_up_by=dict(type="str"),
            bring_up_minutes=dict(type="int", default=15),
            status=dict(type="str", choices=["active", "draining", "retired"]),
            idle_hours=dict(type="float", default=24),
            health=dict(type="str", choices=["healthy", "unhealthy"]),
            health_detail=dict(type="str"),
            list_tenants=dict(type="bool", default=False),
            **SESSION_LOGIN_OPTIONS,
        ),
        required_if=[("claim_bring_up", True, ("bring_up_by",))],
        supports_check_mode=True,
    )
    name = module.params["name"]
    run_registry_module(module, run_module, f"registry error for server {name}", refusals=(ServerError,), name=name)


if __name__ == "__main__":
    main()
