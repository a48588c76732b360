#!/usr/bin/python
"""Converge one tenant's Odoo under supervisord and its nginx route, in one module call."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: odoo_process
short_description: Converge one tenant's Odoo program under supervisord and its nginx route
description:
  - The implementation of C(roles/odoo_runtime)'s process backend, which is where playbooks call it from. The role
    renders the files (odoo.conf, the program, the vhost) and this module does in one call what a dozen tasks did,
    each paying ansible's cost per module call.
  - Writes each file atomically with its owner and mode, only when its content, owner or mode differ.
  - Speaks to supervisord through its XML-RPC interface on the Unix socket (supervisor's own C(SupervisorTransport)),
    as supervisorctl does, without paying a Python start-up per command.
  - Tells supervisord of the tenant's program as C(supervisorctl update <program>) does (C(reloadConfig), then remove
    and add only this tenant's group) when its file changed, was removed, or is unknown to supervisord (a run killed
    between writing it and applying it).
  - C(started) starts the program, or restarts it when only its odoo.conf changed, and waits until Odoo shows its
    login form from a listener of the tenant's own user while supervisord still has it running (C(STARTING) or
    C(RUNNING)), all polled; if it does not, fails with the end of its log. It does not wait out C(startsecs), since a
    program that dies later is supervisord's to restart, and the next run sees it. C(stopped) stops it, keeping
    its files.
    C(absent) stops it and removes its program, its directory and its route.
  - A changed route is checked (C(nginx -t)) before nginx reloads; then the module waits until nginx routes the
    tenant as it should (its login form when started, 503 otherwise), since nginx swaps workers in the background.
  - The tenant's Odoo reaches its database through a PgBouncer of its own (I(pgbouncer_program), run as
    I(pgbouncer_user), not the tenant's user, from root's files; its socket in a directory only the tenant's group may
    enter), configured by the files of role C(database).
    A change to them reloads that PgBouncer (C(SIGHUP)) and does not restart Odoo, so a database move, which
    changes only where that PgBouncer forwards, leaves Odoo running. It runs while the tenant is there, started or
    stopped (an install of modules goes through it), starts before Odoo (the module waits for its socket), and
    stops after it when absent.
  - With I(network), the tenant's Odoo listens in a network namespace of its own, which C(started) makes (with a veth
    pair, the host's end and the tenant's, each with its address) when it is missing or not as given, and
    C(absent) removes. The listener checked at a start is the one in that namespace.
version_added: 0.4.0
requirements:
  - supervisor (the Python package; the host that runs supervisord has it)
author: SaaSOdoo ops maintainers
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
attributes:
  check_mode:
    support: full
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

import contextlib
import grp
import http.client
import json
import os
import pwd
import shutil
import socket
import ssl
import stat
import time
import urllib.parse
import xmlrpc.client

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.saasodoo.platform.plugins.module_utils.files import holds, write_atomically
from ansible_collections.saasodoo.platform.plugins.module_utils.supervisor import (
    ACTIVE_STATES,
    UNANSWERED,
    Faults,
    SupervisorTransport,
    supervisor_api,
)
from ansible_collections.saasodoo.platform.plugins.module_utils.tenant_network import NETWORK as TENANTS_NETWORK
from ansible_collections.saasodoo.platform.plugins.module_utils.tenant_network import ensure_namespace

ROLES = ("config", "program", "route", "database")
LOGIN_FORM = "oe_login_form"
MAX_BODY = 65536  # the tenant's Odoo answers: read no more than a login page
POLL_SECONDS = 0.05  # a start is over in tenths of a second: poll as often
SUN_PATH_MAX = 107  # bytes of a Unix socket's path (sockaddr_un.sun_path, less its NUL)


class _NamedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to an address, with another name as the TLS server name (SNI) and the name the certificate must bear:
    nginx's listener, as the tenant's host name."""

    def __init__(self, address: str, port: int | None, server_name: str, context: ssl.SSLContext, timeout: float):
        super().__init__(address, port, timeout=timeout, context=context)
        self.server_name = server_name

    def connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.server_name)


def fetch(url: str, host: str | None = None, ca_file: str | None = None) -> tuple[int, str]:
    """The status and body of a GET of an http:// or https:// URL, as the server answered it (http.client neither
    follows redirects nor goes through a proxy the environment may name: loopback addresses and the tenant's own
    name); over https, `host` is the server name its certificate must bear, checked against `ca_file` (by default
    the system's CAs). (0, reason) when nothing answered, or the certificate failed."""
    try:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return 0, f"{url} is not an http:// URL with a host"
        if parts.scheme == "https" and not host:
            return 0, f"{url} is https:// with no server name to check its certificate for"
        if parts.scheme == "https":
            context = ssl.create_default_context(cafile=ca_file)
            connection = _NamedHTTPSConnection(parts.hostname, parts.port, host, context, timeout=5)
        else:
            connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
        with contextlib.closing(connection):
            # One request a connection, as urllib makes it: the answer ends where the server closes it at the latest.
            connection.request(
                "GET", parts.path or "/", headers={"Connection": "close"} | ({"Host": host} if host else {})
            )
            response = connection.getresponse()
            return response.status, response.read(MAX_BODY).decode(errors="replace")
    except (http.client.HTTPException, OSError, ValueError) as error:  # ValueError: a port that is not one
        return 0, str(error)


def login_port(url: str) -> int | None:
    """The port `url` names; None when it names none, or one that is not a port (a record without its http_port)."""
    try:
        return urllib.parse.urlsplit(url).port
    except ValueError:
        return None


def listener_uids(port: int, pid: int | None = None) -> set[int]:
    """The uids of the TCP sockets listening on `port` in this network namespace, or in the one process `pid` is in
    (/proc/net/tcp and tcp6: the local address's port in hex, state 0A is LISTEN, the owner's uid in the eighth
    column)."""
    uids = set()
    proc = f"/proc/{pid}" if pid else "/proc"
    for table in (f"{proc}/net/tcp", f"{proc}/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as rows:
            for fields in (row.split() for row in list(rows)[1:]):
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    uids.add(int(fields[7]))
    return uids


class OdooProcess:
    def __init__(self, module: AnsibleModule):
        self.module = module
        self.p = module.params
        self.check_mode = module.check_mode
        self.actions: list[str] = []
        self.changed_roles: set[str] = set()
        self.reloaded = False
        self.pgbouncer_ready = self.pgbouncer_fresh = False

        self.supervisor = supervisor_api(self.p["supervisor_socket"])

    def rpc(self, method: str, *args, ok_faults: tuple[int, ...] = ()):
        """A supervisord XML-RPC call's answer; None for a fault the caller expects (e.g. NOT_RUNNING)."""
        try:
            return getattr(self.supervisor, method)(*args)
        except xmlrpc.client.Fault as fault:
            if fault.faultCode in ok_faults:
                return None
            self.fail(f"supervisord refused {method}{args}: {fault.faultString}")
        except UNANSWERED as error:  # a Fault: above
            self.fail(f"supervisord does not answer as it should on {self.p['supervisor_socket']} ({error}):"
                      " converge the runtime host first (playbooks/site.yml)")  # fmt: skip

    def pid(self) -> int | None:
        """The pid of the tenant's Odoo as supervisord started it (0 when it does not run)."""
        info = self.rpc("getProcessInfo", self.p["program"], ok_faults=(Faults.BAD_NAME,))
        return info["pid"] if info else None

    def state(self, program: str | None = None) -> str | None:
        """supervisord's state of the program (RUNNING, STARTING, BACKOFF, STOPPED, EXITED, FATAL, ...), Odoo's
        unless another is named; None when supervisord does not know it."""
        info = self.rpc("getProcessInfo", program or self.p["program"], ok_faults=(Faults.BAD_NAME,))
        return info["statename"] if info else None

    def act(self, action: str, method: str, *args, ok_faults: tuple[int, ...] = ()) -> None:
        self.actions.append(action)
        if not self.check_mode:
            self.rpc(method, *args, ok_faults=ok_faults)

    def update(self) -> None:
        """supervisorctl's `update <program> <pgbouncer program>` (supervisor/supervisorctl.py, do_update): reread
        the configuration and apply what changed for this tenant's groups only."""
        self.actions.append("supervisord updated")
        if self.check_mode:
            return
        added, changed, removed = self.rpc("reloadConfig")[0]
        for group in (self.p["pgbouncer_program"], self.p["program"]):  # Odoo's database first
            if self.p["state"] != "absent" and group not in added + changed and self.state(group) is None:
                self.fail(
                    f"supervisord does not load program {group} from its file: is it under supervisord's [include]?"
                )
            if group in removed or group in changed:
                self.rpc("stopProcessGroup", group)
                self.rpc("removeProcessGroup", group)
            if group in added or group in changed:
                if group == self.p["pgbouncer_program"]:
                    self.remove_stale_socket()
                    self.pgbouncer_fresh = True  # started with its files as they are now: nothing to reload
                elif self.p["state"] != "absent":
                    self.start_pgbouncer()  # listening before Odoo's group starts (autostart) and opens its database
                self.rpc("addProcessGroup", group)  # started at once (autostart)

    def fail(self, msg: str) -> None:
        self.module.fail_json(msg=msg, actions=self.actions, changed=bool(self.actions))

    def run(self) -> None:
        p = self.p
        state, pgbouncer_state = self.state(), self.state(p["pgbouncer_program"])
        # A stop comes first: nothing is read or written in the tenant's directory while its Odoo may still run.
        # Its PgBouncer runs while the tenant is there, stopped or not (an install of modules uses it): it goes last.
        if p["state"] != "started" and state in ACTIVE_STATES:
            self.act("stopped", "stopProcess", p["program"], True, ok_faults=(Faults.NOT_RUNNING,))
        if p["state"] == "absent" and pgbouncer_state in ACTIVE_STATES:
            self.act("its PgBouncer stopped", "stopProcess", p["pgbouncer_program"], True,
                     ok_faults=(Faults.NOT_RUNNING,))  # fmt: skip
        written = [file for file in p["files"] if file.get("role") != "route"]
        if p["config"] is not None:  # a move's repoint leaves it out: odoo.conf stays as it is
            written.insert(0, {"path": p["config_path"], "content": p["config"], "mode": "0600", "private": True,
                               "role": "config"})  # fmt: skip
        route = [file for file in p["files"] if file.get("role") == "route"]
        if p["state"] == "absent":
            self.remove_files()
        else:
            self.ensure_dir(p["tenant_dir"], p["owner"], 0o700)
            # The tenant's PgBouncer runs as a user the tenant is not, from root's files: the tenant can neither
            # change what it runs nor trace it, and its socket's directory lets only the tenant's group in.
            self.ensure_dir(self.pgbouncer_home(), "root", 0o711)
            self.ensure_dir(os.path.dirname(p["pgbouncer_socket"]), p["pgbouncer_user"], 0o750, group=p["owner"])
            for file in written:
                self.ensure_file(file)
        if p["network"] and p["state"] == "started":
            self.ensure_network()  # before supervisord may start the program, whose command enters it
        if "program" in self.changed_roles or (p["state"] != "absent" and None in (state, pgbouncer_state)):
            self.update()
        if p["state"] != "absent":
            self.start_pgbouncer()
        if p["state"] == "started":
            self.start()
        # The route changes once Odoo answers behind it (a failed start leaves the old one in place).
        for file in route:
            self.ensure_file(file)
        if "route" in self.changed_roles:
            self.reload_nginx()
        if p["state"] != "absent":
            self.wait_for_route()
        elif p["network"]:
            self.remove_network()

    def ip(self, *args: str, check: bool = True) -> str:
        rc, out, err = self.module.run_command(["ip", *args])
        if rc != 0 and check:
            self.fail(f"ip {' '.join(args)} failed for program {self.p['program']}: {err.strip()}")
        return out

    def network_ready(self) -> bool:
        """Whether the namespace is there with both ends of the pair up and addressed as given, its loopback up."""
        n = self.p["network"]
        if not os.path.exists(f"/run/netns/{n['namespace']}"):
            return False

        def up_with(links: list, name: str, address: str | None) -> bool:
            return any(
                link.get("ifname") == name and "UP" in link.get("flags", [])
                and (address is None or any(a.get("local") == address for a in link.get("addr_info", [])))
                for link in links
            )  # fmt: skip

        host = json.loads(self.ip("-j", "addr", "show", "dev", n["host_interface"], check=False) or "[]")
        inside = json.loads(self.ip("-n", n["namespace"], "-j", "addr", "show", check=False) or "[]")
        return (up_with(host, n["host_interface"], n["host_address"]) and up_with(inside, "lo", None)
                and up_with(inside, n["tenant_interface"], n["tenant_address"]))  # fmt: skip

    def ensure_network(self) -> None:
        n = self.p["network"]
        if self.network_ready():
            return
        self.actions.append(f"made its network namespace {n['namespace']}")
        if self.check_mode:
            return
        try:
            ensure_namespace(n["namespace"])
        except OSError as error:
            self.fail(f"program {self.p['program']}: {error}")
        self.ip("link", "del", n["host_interface"], check=False)  # half made by a run cut short: made again
        ns, host, tenant = n["namespace"], n["host_interface"], n["tenant_interface"]
        # Where a tenant's link is missing (a host rebooted, its namespaces gone), its address is unreachable: never
        # sent on by the default route, with its customers' requests, to whatever holds that range outside.
        self.ip("route", "replace", "unreachable", str(TENANTS_NETWORK))
        self.ip("link", "add", host, "type", "veth", "peer", "name", tenant, "netns", ns)
        self.ip("addr", "add", f"{n['host_address']}/{n['prefix']}", "dev", host)
        self.ip("link", "set", host, "up")
        self.ip("-n", ns, "addr", "add", f"{n['tenant_address']}/{n['prefix']}", "dev", tenant)
        self.ip("-n", ns, "link", "set", tenant, "up")
        self.ip("-n", ns, "link", "set", "lo", "up")

    def remove_network(self) -> None:
        n = self.p["network"]
        if os.path.exists(f"/run/netns/{n['namespace']}"):
            self.actions.append(f"removed its network namespace {n['namespace']}")
            if not self.check_mode:
                # The kernel cleans a deleted namespace up later, its end of the pair with it: the host's end is
                # deleted first (taking the other), so a tenant given this port next finds the name free.
                self.ip("link", "del", n["host_interface"], check=False)
                self.ip("netns", "del", n["namespace"])

    def reload_nginx(self) -> None:
        for action, argv in (("nginx configuration checked", ["-t", "-q"]), ("nginx reloaded", ["-s", "reload"])):
            self.actions.append(action)
            if self.check_mode:
                continue
            rc, out, err = self.module.run_command(["nginx", *argv, "-c", self.p["nginx_conf"]])
            if rc != 0:
                self.fail(f"{action} failed (nginx {' '.join(argv)}): {(out + err).strip()}")
        self.reloaded = True

    def start_pgbouncer(self) -> None:
        """The tenant's PgBouncer runs with its current files (reloaded when they changed: Odoo's connections
        stay), once per run. Started again when it cannot take a reload (supervisord's BACKOFF) or runs without its
        socket (the tenant may delete it). With Odoo to start, the module waits until it listens; a stopped tenant's
        run does not wait on anything the tenant controls."""
        if self.pgbouncer_ready:
            return
        self.pgbouncer_ready = True
        p, program = self.p, self.p["pgbouncer_program"]
        state = self.state(program)
        if state == "BACKOFF" or (state == "RUNNING" and not self.check_mode and not self.socket_exists()):
            self.act(f"its PgBouncer stopped ({state}: crashing, or without its socket)", "stopProcess", program,
                     True, ok_faults=(Faults.NOT_RUNNING,))  # fmt: skip
            state = None
        if state not in ACTIVE_STATES:
            if not self.check_mode:
                self.remove_stale_socket()
            self.act("its PgBouncer started", "startProcess", program, False, ok_faults=(Faults.ALREADY_STARTED,))
        elif "database" in self.changed_roles and not self.pgbouncer_fresh:
            # PgBouncer sends each transaction after the reload to the new server (and closes the old server
            # connections as they are released): Odoo is not restarted.
            self.act("its PgBouncer reloaded", "signalProcess", program, "HUP")
        if p["state"] == "started" and not self.check_mode:
            self.wait_for_pgbouncer()

    @contextlib.contextmanager
    def socket_directory(self):
        """The socket's directory, opened without following links (the tenant owns it and could have made it a link
        to another service's), and the socket's name in it; None when it is gone or not a directory (ensure_dir
        makes it again before PgBouncer starts)."""
        directory, name = os.path.split(self.p["pgbouncer_socket"])
        try:
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError:
            yield None
            return
        try:
            yield fd, name
        finally:
            os.close(fd)

    def socket_exists(self) -> bool:
        """Whether PgBouncer's socket is there."""
        with self.socket_directory() as found, contextlib.suppress(FileNotFoundError):
            return found is not None and stat.S_ISSOCK(os.lstat(found[1], dir_fd=found[0]).st_mode)
        return False

    def remove_stale_socket(self) -> None:
        """Whatever is where the socket goes while PgBouncer is not running: a socket a killed PgBouncer left (it
        would look like one listening), or anything the tenant put there."""
        with self.socket_directory() as found, contextlib.suppress(FileNotFoundError):
            if found is not None and not stat.S_ISDIR(os.lstat(found[1], dir_fd=found[0]).st_mode):
                os.unlink(found[1], dir_fd=found[0])

    def wait_for_pgbouncer(self) -> None:
        p = self.p
        deadline = time.monotonic() + p["health_timeout"]
        while not self.socket_exists():
            state = self.state(p["pgbouncer_program"])
            if state not in ACTIVE_STATES or time.monotonic() > deadline:
                log = os.path.join(os.path.dirname(p["log_path"]), f"{p['pgbouncer_program']}.log")
                self.fail(f"the PgBouncer of program {p['program']} does not listen on {p['pgbouncer_socket']}"
                          f" (supervisord: {state}): see {log}")  # fmt: skip
            time.sleep(POLL_SECONDS)

    def start(self) -> None:
        p = self.p
        state = self.state()
        # An update just now may have started it already (autostart); STARTING and BACKOFF need no start.
        if state not in ACTIVE_STATES:
            # Not waiting for startsecs: the loop below waits for the login form from the tenant's own listener.
            self.act("started", "startProcess", p["program"], False, ok_faults=(Faults.ALREADY_STARTED,))
        elif "program" not in self.changed_roles and ("config" in self.changed_roles or p["restart"]):
            why = "its new odoo.conf" if "config" in self.changed_roles else "a restart asked for"
            self.act(f"stopped for {why}", "stopProcess", p["program"], True, ok_faults=(Faults.NOT_RUNNING,))
            self.act(f"restarted for {why}", "startProcess", p["program"], False)
        if self.check_mode:
            return
        # /web/health answers before the database is usable (and for an Odoo never initialised, 500 from then on):
        # the login form is what the customer needs. It must come from a listener of the tenant's own user: another
        # tenant could have bound the port first, and then this Odoo fails to bind and dies within startsecs while
        # the squatter answers. Waiting for RUNNING (past startsecs) would add 1 s to every start; supervisord still
        # restarts a program that dies later.
        deadline = time.monotonic() + p["health_timeout"]
        port, uid = login_port(p["login_url"]), self.ids(p["owner"])[0]
        while True:
            status, body = fetch(p["login_url"])
            state = self.state()  # after the answer: the one that answered is still the one supervisord runs
            if status == 200 and LOGIN_FORM in body and state in ("STARTING", "RUNNING"):
                owners = listener_uids(port, self.pid() if p["network"] else None)
                if owners == {uid}:
                    return
                if owners and state == "RUNNING":
                    self.fail(f"port {port} of program {p['program']} is held by another user (uid {owners - {uid}})")
            # supervisord gave up (FATAL after startretries), or something else stopped it: no use waiting.
            if state not in ACTIVE_STATES or time.monotonic() > deadline:
                break
            time.sleep(POLL_SECONDS)
        try:
            with open(p["log_path"], errors="replace") as log:
                tail = "".join(log.readlines()[-20:])
        except OSError:
            tail = "(no log)"
        self.fail(f"Odoo of program {p['program']} did not show its login form (supervisord: {state}, waited"
                  f" up to {p['health_timeout']} s; last answer: {status}). Last lines of {p['log_path']}:"
                  f"\n{tail}")  # fmt: skip

    def wait_for_route(self) -> None:
        if self.check_mode:
            return
        p = self.p
        deadline = time.monotonic() + p["route_timeout"]
        while True:
            status, body = fetch(p["route_url"], p["route_host"], p["route_ca"])
            if (status == 200 and LOGIN_FORM in body) if p["state"] == "started" else status == 503:
                return
            if not self.reloaded:
                # The route file is right but nginx does not serve it: a run ended between the two. Reload once.
                self.reload_nginx()
                continue
            if time.monotonic() > deadline:
                want = "its login form" if p["state"] == "started" else "503"
                answer = f"{status}" if status else f"nothing ({body})"
                self.fail(f"nginx does not route {p['route_host']} as it should ({want}): it answered {answer}")
            time.sleep(POLL_SECONDS)

    def ids(self, owner: str, group: str | None = None) -> tuple[int, int] | None:
        """The uid of `owner` and the gid of `group` (by default `owner`'s own group); None in check mode, where
        provisioning has not made them yet."""
        try:
            return pwd.getpwnam(owner).pw_uid, grp.getgrnam(group or owner).gr_gid
        except KeyError:
            if self.check_mode:
                return None
            if group:
                self.fail(f"no OS user {owner} or group {group}: playbooks/site.yml (the runtime host) or provisioning"
                          " makes them")  # fmt: skip
            self.fail(f"no OS user and group {owner}: tenant_resume.yml (or provisioning) makes them")

    def ensure_dir(self, path: str, owner: str, mode: int, group: str | None = None) -> None:
        """A directory of `owner`'s (and `group`'s, else its own group's) with `mode`. Where another user could have
        put a link or a file instead, that is removed, and the directory is changed through a descriptor opened
        without following links, so root never chmods or chowns where a link points."""
        ids = self.ids(owner, group)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except FileNotFoundError:
            fd = None
        except OSError:  # ELOOP (a link) or ENOTDIR (anything else): not ours to keep
            self.actions.append(f"removed what stood at {path}")
            if self.check_mode:
                return
            os.unlink(path)
            fd = None
        if fd is None:
            self.actions.append(f"made {path}")
            if self.check_mode:
                return
            os.makedirs(path, mode)  # its parents are root's, or the tenant's directory just checked
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            st = os.fstat(fd)
            if ids is None or (st.st_uid, st.st_gid, st.st_mode & 0o7777) != (*ids, mode):
                if not self.actions or self.actions[-1] != f"made {path}":
                    self.actions.append(f"set owner and mode of {path}")
                if not self.check_mode:
                    os.fchown(fd, *ids)
                    os.fchmod(fd, mode)
        finally:
            os.close(fd)

    def ensure_file(self, file: dict) -> None:
        path, content, mode = file["path"], file["content"].encode(), int(str(file["mode"]), 8)
        # A file with a group is root's, readable by that group (the tenant PgBouncer's files).
        ids = self.ids(self.p["owner"] if file.get("private") else "root", file.get("group"))
        if ids is not None and holds(path, content, *ids, mode):
            return
        self.actions.append(f"wrote {os.path.basename(path)}")
        if file.get("role") in ROLES:
            self.changed_roles.add(file["role"])
        if self.check_mode:
            return
        write_atomically(path, content, *ids, mode)

    def remove_files(self) -> None:
        for file in self.p["remove"]:
            if os.path.lexists(file["path"]):
                self.actions.append(f"removed {os.path.basename(file['path'])}")
                self.changed_roles.add(file.get("role"))
                if not self.check_mode:
                    os.unlink(file["path"])
        for directory in (self.p["tenant_dir"], self.pgbouncer_home()):
            if os.path.lexists(directory):
                self.actions.append(f"removed {directory}")
                if not self.check_mode:
                    shutil.rmtree(directory)

    def pgbouncer_home(self) -> str:
        """The tenant PgBouncer's directory (<runtime>/pgbouncer/<tenant>): its files, and its socket's directory."""
        return os.path.dirname(os.path.dirname(self.p["pgbouncer_socket"]))


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
