#!/usr/bin/python
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Converge one tenant's Odoo under supervisord and its nginx route, in one module call."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: odoo_process
short_description: Converge one tenant's Odoo program under supervisord and its nginx route
description:
  - C(roles/odoo_runtime)'s process backend, in one call. The role renders the files (odoo.conf, the programs, the
    vhost), and this module writes each atomically with its owner and mode when it differs, and speaks to supervisord
    through its XML-RPC interface on the Unix socket, as supervisorctl does (C(update) when a program's file changed,
    was removed or is unknown to supervisord).
  - C(started) starts the program (restarts it when only odoo.conf changed) and waits until Odoo shows its login form
    from a listener of the tenant's own user while supervisord has it running; if it does not, fails with the end of
    its log. C(stopped) stops it, keeping its files, and kills whatever the tenant's user left running (a daemon it
    detached). C(absent) does the same and removes its programs, its directory and its route.
  - A changed route is checked (C(nginx -t)) before nginx reloads; the module then waits until nginx routes the
    tenant as it should (its login form when started, 503 otherwise).
  - The tenant's Odoo reaches its database through a PgBouncer of its own (I(pgbouncer_program), run as
    I(pgbouncer_user) from root's files, its socket in a directory only the tenant's group may enter). A change to
    its files (role C(database)) reloads it (C(SIGHUP)) without restarting Odoo, so a database move leaves Odoo
    running. It runs while the tenant is there, started or stopped, starts before Odoo and stops after it.
  - With I(network), the tenant's Odoo listens in a network namespace of its own, made by C(started) when missing
    or not as given and removed by C(absent); the listener checked at a start is the one in that namespace.
version_added: 0.2.0
requirements:
  - supervisor (the Python package; the host that runs supervisord has it)
author: SaaSOdoo ops maintainers (@saasodoo)
options:
  state:
    description: What the tenant's Odoo should be.
    type: str
    choices: [started, stopped, absent]
    required: true
  restart:
    description:
      - With I(state=started), stop and start the tenant's Odoo even when nothing of it changed (a hung worker, or
        code changed on disk; C(tenant_restart.yml)), then wait for its login form as at any start. Each run with it
        restarts, so it always reports a change. A program started or restarted by this run already is not
        restarted again.
    type: bool
    default: false
  program:
    description: The supervisord program's name.
    type: str
    required: true
  supervisor_socket:
    description: The Unix socket of the host's supervisord (its C([unix_http_server] file)).
    type: path
    required: true
  nginx_conf:
    description: The nginx configuration the route belongs to.
    type: path
    required: true
  tenant_dir:
    description: The tenant's runtime directory (made C(0700), its user's; removed when absent).
    type: path
    required: true
  owner:
    description: The tenant's OS user and group, which own its directory and its private files.
    type: str
    required: true
  owner_comment:
    description:
      - The comment (GECOS) the tenant's OS user has. A stop kills every process of I(owner), and a removal its files
        in the host's temporary directories, only if I(owner) has this comment (a user of that name that is not the
        tenant's is left alone); without it, neither is done.
    type: str
  config:
    description:
      - The content of the tenant's odoo.conf (it holds the database password), written C(0600), its user's.
      - Left out, odoo.conf stays as it is (a database move's repoint, which passes only the files of role
        C(database)).
    type: str
  config_path:
    description: Where the tenant's odoo.conf goes.
    type: path
    required: true
  files:
    description: The other files to write when not absent.
    type: list
    elements: dict
    default: []
    suboptions:
      path:
        description: Where the file goes.
        type: path
        required: true
      content:
        description: What it holds; kept out of the logs (the tenant PgBouncer's auth file holds a verifier).
        type: str
        required: true
      mode:
        description: Its mode, in octal.
        type: str
        required: true
      private:
        description: Owned by the tenant's user (otherwise root's).
        type: bool
        default: false
      group:
        description: The group of a file of root's (the tenant PgBouncer's, readable by its user's group).
        type: str
      role:
        description:
          - What a change calls for, C(config) (a restart, like odoo.conf's), C(program) (an update), C(route) (a
            reload of nginx), C(database) (a reload of the tenant's PgBouncer).
        type: str
  remove:
    description: The files removed when absent (the program and the route); C(tenant_dir) goes with them.
    type: list
    elements: dict
    default: []
    suboptions:
      path:
        description: The file.
        type: path
        required: true
      role:
        description: What its removal calls for, as in I(files).
        type: str
  login_url:
    description: The tenant's Odoo login page, straight from its port (a start refuses a URL without one).
    type: str
    required: true
  route_url:
    description:
      - The login page through nginx; I(route_host) is sent as C(Host) and, over C(https://), as the TLS server
        name, whose certificate must be valid for it (checked against I(route_ca)).
    type: str
    required: true
  route_host:
    description: The tenant's host name.
    type: str
    required: true
  route_ca:
    description: The CA certificates (a PEM file) that check nginx's certificate; by default the system's.
    type: path
  log_path:
    description: The program's log, whose end a failed start reports.
    type: path
    required: true
  health_timeout:
    description: Seconds to wait for the login form after a start.
    type: int
    default: 60
  route_timeout:
    description: Seconds to wait for nginx to route the tenant as it should.
    type: int
    default: 20
  pgbouncer_program:
    description: The supervisord program of the tenant's PgBouncer (its program file is one of I(files)).
    type: str
    required: true
  pgbouncer_socket:
    description:
      - The Unix socket the tenant's PgBouncer listens on (C(<home>/run/.s.PGSQL.<port>)); C(<home>) (root's, 0711,
        its files) and C(<home>/run) (I(pgbouncer_user)'s, the tenant's group's, 0750) are made, and removed when
        absent.
      - At most 107 bytes (a Unix socket's path), or the module refuses to start or stop the tenant.
    type: path
    required: true
  pgbouncer_user:
    description: The OS user the tenant's PgBouncer runs as, which no tenant is (its program names it too).
    type: str
    default: saasodoo_pgbouncer
  network:
    description:
      - The tenant's network namespace, as the C(saasodoo.platform.tenant_network) filter gives it; the program's
        command enters it. Omitted, the tenant's Odoo listens on the host's network.
    type: dict
    suboptions:
      namespace:
        description: "The namespace's name (C(ip netns))."
        type: str
        required: true
      host_interface:
        description: "The veth pair's end on the host."
        type: str
        required: true
      tenant_interface:
        description: "Its end in the namespace."
        type: str
        required: true
      host_address:
        description: "The host end's address."
        type: str
        required: true
      tenant_address:
        description: "The tenant end's address, where its Odoo listens."
        type: str
        required: true
      prefix:
        description: "The link's prefix length."
        type: int
        required: true
extends_documentation_fragment:
  - saasodoo.platform.attributes
"""

EXAMPLES = r"""
- name: Stop the tenant's Odoo (its route answers 503)
  saasodoo.platform.odoo_process:
    state: stopped
    program: odoo-acme
    supervisor_socket: /var/lib/saasodoo/runtime/supervisor/supervisor.sock
    nginx_conf: /var/lib/saasodoo/runtime/nginx/nginx.conf
    tenant_dir: /var/lib/saasodoo/runtime/tenants/acme
    owner: odoo_acme
    config: "{{ lookup('ansible.builtin.template', 'odoo.conf.j2') }}"
    config_path: /var/lib/saasodoo/runtime/tenants/acme/odoo.conf
    files:
      - {path: /var/lib/saasodoo/runtime/nginx/sites/acme.conf, content: "...", mode: "0644", role: route}
    login_url: http://100.64.126.22:8069/web/login
    route_url: http://127.0.0.1:80/web/login
    route_host: acme.odoo.example.com
    log_path: /var/lib/saasodoo/runtime/logs/odoo-acme.log
    pgbouncer_program: pgbouncer-acme
    pgbouncer_socket: /var/lib/saasodoo/runtime/pgbouncer/acme/run/.s.PGSQL.6432
    network: "{{ 8069 | saasodoo.platform.tenant_network('/var/lib/saasodoo/runtime') }}"
"""

RETURN = r"""
actions:
  description: What was done (or would be, in check mode), in order.
  returned: always
  type: list
  elements: str
  sample: [wrote odoo.conf, restarted]
"""

import os

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.saasodoo.platform.plugins.module_utils.odoo_probe import login_port
from ansible_collections.saasodoo.platform.plugins.module_utils.odoo_process import SUN_PATH_MAX, OdooProcess
from ansible_collections.saasodoo.platform.plugins.module_utils.supervisor import SupervisorTransport


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type="str", choices=["started", "stopped", "absent"], required=True),
            restart=dict(type="bool", default=False),
            program=dict(type="str", required=True),
            supervisor_socket=dict(type="path", required=True),
            nginx_conf=dict(type="path", required=True),
            tenant_dir=dict(type="path", required=True),
            owner=dict(type="str", required=True),
            owner_comment=dict(type="str"),
            config=dict(type="str", no_log=True),
            config_path=dict(type="path", required=True),
            # A file's content may hold a secret (the PgBouncer auth file's verifier): kept out of the module's
            # invocation, which ansible-runner's job events record.
            files=dict(
                type="list",
                elements="dict",
                default=[],
                options=dict(
                    path=dict(type="path", required=True),
                    content=dict(type="str", required=True, no_log=True),
                    mode=dict(type="str", required=True),
                    private=dict(type="bool", default=False),
                    group=dict(type="str"),
                    role=dict(type="str"),
                ),
            ),
            remove=dict(
                type="list",
                elements="dict",
                default=[],
                options=dict(path=dict(type="path", required=True), role=dict(type="str")),
            ),
            login_url=dict(type="str", required=True),
            route_url=dict(type="str", required=True),
            route_host=dict(type="str", required=True),
            route_ca=dict(type="path"),
            log_path=dict(type="path", required=True),
            health_timeout=dict(type="int", default=60),
            route_timeout=dict(type="int", default=20),
            pgbouncer_program=dict(type="str", required=True),
            pgbouncer_socket=dict(type="path", required=True),
            pgbouncer_user=dict(type="str", default="saasodoo_pgbouncer"),
            network=dict(
                type="dict",
                options=dict(
                    namespace=dict(type="str", required=True),
                    host_interface=dict(type="str", required=True),
                    tenant_interface=dict(type="str", required=True),
                    host_address=dict(type="str", required=True),
                    tenant_address=dict(type="str", required=True),
                    prefix=dict(type="int", required=True),
                ),
            ),
        ),
        supports_check_mode=True,
    )
    p = module.params
    # A Unix socket's path fits in 107 bytes (sun_path): PgBouncer would not start.
    if p["state"] != "absent" and len(os.fsencode(p["pgbouncer_socket"])) > SUN_PATH_MAX:
        module.fail_json(
            msg=f"program {p['program']}: its PgBouncer's socket path {p['pgbouncer_socket']} is longer"
            f" than a Unix socket's {SUN_PATH_MAX} bytes: choose a shorter odoo_runtime_process_dir"
        )
    if p["restart"] and p["state"] != "started":
        module.fail_json(msg=f"program {p['program']}: restart goes with state=started, not {p['state']}")
    if p["state"] == "started" and not login_port(p["login_url"]):
        module.fail_json(msg=f"program {p['program']}: {p['login_url']} names no port: a start needs the tenant's HTTP"
                             " port (odoo_runtime_http_port, from the registry)")  # fmt: skip
    if SupervisorTransport is None:
        module.fail_json(msg=missing_required_lib("supervisor"))
    process = OdooProcess(module)
    try:
        process.run()
    except OSError as error:  # e.g. a directory the tenant put where its odoo.conf goes
        process.fail(f"program {module.params['program']}: {error}")
    module.exit_json(changed=bool(process.actions), actions=process.actions)


if __name__ == "__main__":
    main()
