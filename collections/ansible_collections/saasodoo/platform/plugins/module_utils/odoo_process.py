"""A process tenant's Odoo converged under supervisord, with its PgBouncer, network namespace and nginx route: the
work of the odoo_process module (its documentation says what each state does)."""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.saasodoo.platform.plugins.module_utils.files import (
    ensure_directory,
    holds,
    remove_unless_directory,
    socket_at,
    write_atomically,
)
from ansible_collections.saasodoo.platform.plugins.module_utils.odoo_probe import fetch, listener_uids, login_port
from ansible_collections.saasodoo.platform.plugins.module_utils.supervisor import (
    ACTIVE_STATES,
    Faults,
    Programs,
)
from ansible_collections.saasodoo.platform.plugins.module_utils.tenant_network import (
    make_network,
    network_ready,
    remove_network,
)
from ansible_collections.saasodoo.platform.plugins.module_utils.tenant_processes import (
    kill_all_of,
    processes_of,
    remove_files_of,
)

ROLES = ("config", "program", "route", "database")
LOGIN_FORM = "oe_login_form"
POLL_SECONDS = 0.05  # a start is over in tenths of a second: poll as often
SUN_PATH_MAX = 107  # bytes of a Unix socket's path (sockaddr_un.sun_path, less its NUL)


class OdooProcess:
    """One run of the module on one tenant: `actions` says what it did (or would do, in check mode)."""

    def __init__(self, module: AnsibleModule):
        self.module = module
        self.p = module.params
        self.check_mode = module.check_mode
        self.actions: list[str] = []
        self.changed_roles: set[str] = set()
        self.reloaded = False
        self.pgbouncer_ready = self.pgbouncer_fresh = False

        self.programs = Programs(self.p["supervisor_socket"], self.fail)

    def pid(self) -> int | None:
        """The pid of the tenant's Odoo as supervisord started it (0 when it does not run)."""
        info = self.programs.info(self.p["program"])
        return info["pid"] if info else None

    def state(self, program: str | None = None) -> str | None:
        """supervisord's state of the program (RUNNING, STARTING, BACKOFF, STOPPED, EXITED, FATAL, ...), Odoo's
        unless another is named; None when supervisord does not know it."""
        info = self.programs.info(program or self.p["program"])
        return info["statename"] if info else None

    def act(self, action: str, method: str, *args, ok_faults: tuple[int, ...] = ()) -> None:
        self.actions.append(action)
        if not self.check_mode:
            self.programs.call(method, *args, ok_faults=ok_faults)

    def update(self) -> None:
        """supervisorctl's `update <program> <pgbouncer program>` (supervisor/supervisorctl.py, do_update): reread
        the configuration and apply what changed for this tenant's groups only."""
        self.actions.append("supervisord updated")
        if self.check_mode:
            return
        added, changed, removed = self.programs.call("reloadConfig")[0]
        for group in (self.p["pgbouncer_program"], self.p["program"]):  # Odoo's database first
            if self.p["state"] != "absent" and group not in added + changed and self.state(group) is None:
                self.fail(
                    f"supervisord does not load program {group} from its file: is it under supervisord's [include]?"
                )
            if group in removed or group in changed:
                self.programs.call("stopProcessGroup", group)
                self.programs.call("removeProcessGroup", group)
            if group in added or group in changed:
                if group == self.p["pgbouncer_program"]:
                    remove_unless_directory(self.p["pgbouncer_socket"])
                    self.pgbouncer_fresh = True  # started with its files as they are now: nothing to reload
                elif self.p["state"] != "absent":
                    self.start_pgbouncer()  # listening before Odoo's group starts (autostart) and opens its database
                self.programs.call("addProcessGroup", group)  # started at once (autostart)

    def fail(self, msg: str) -> None:
        self.module.fail_json(msg=msg, actions=self.actions, changed=bool(self.actions))

    def run(self) -> None:
        p = self.p
        state, pgbouncer_state = self.state(), self.state(p["pgbouncer_program"])
        # A stop comes first: nothing is read or written in the tenant's directory while its Odoo may still run.
        # Its PgBouncer runs while the tenant is there, stopped or not (an install of modules uses it): it goes last.
        if p["state"] != "started" and state in ACTIVE_STATES:
            self.act("stopped", "stopProcess", p["program"], True, ok_faults=(Faults.NOT_RUNNING,))
        if p["state"] != "started":
            self.kill_leftovers()
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

    def kill_leftovers(self) -> None:
        """Nothing of a stopped or removed tenant's runs on: what it started on its own, detached from its Odoo
        (a daemon, setsid), is killed, in any runtime limits mode; a removed one's files in the shared temporary
        directories go too (module_utils/tenant_processes.py)."""
        try:
            user = pwd.getpwnam(self.p["owner"])
        except KeyError:
            return  # no such user: nothing runs as it
        if self.p["owner_comment"] is None or user.pw_gecos != self.p["owner_comment"]:
            return  # not known to be the tenant's (the role refuses such a user before it makes or removes it)
        try:
            if processes_of(user.pw_uid):
                self.actions.append("killed what the tenant left running")
                if not self.check_mode:
                    kill_all_of(user.pw_uid, user.pw_gid)
        except (OSError, ValueError) as error:
            self.fail(f"program {self.p['program']}: {error}")
        # Its user goes next, and its uid may be the next tenant's: nothing of it stays where every user writes.
        if self.p["state"] == "absent" and (left := remove_files_of(user.pw_uid, check_mode=self.check_mode)):
            self.actions.append(f"removed what the tenant left outside its tree: {', '.join(left[:10])}")

    def ensure_network(self) -> None:
        n = self.p["network"]
        if network_ready(n):
            return
        self.actions.append(f"made its network namespace {n['namespace']}")
        if not self.check_mode:
            try:
                make_network(n)
            except OSError as error:
                self.fail(f"program {self.p['program']}: {error}")

    def remove_network(self) -> None:
        n = self.p["network"]
        if os.path.exists(f"/run/netns/{n['namespace']}"):
            self.actions.append(f"removed its network namespace {n['namespace']}")
            if not self.check_mode:
                remove_network(n)

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
        if state == "BACKOFF" or (
            state == "RUNNING" and not self.check_mode and not socket_at(self.p["pgbouncer_socket"])
        ):
            self.act(f"its PgBouncer stopped ({state}: crashing, or without its socket)", "stopProcess", program,
                     True, ok_faults=(Faults.NOT_RUNNING,))  # fmt: skip
            state = None
        if state not in ACTIVE_STATES:
            if not self.check_mode:
                remove_unless_directory(self.p["pgbouncer_socket"])
            self.act("its PgBouncer started", "startProcess", program, False, ok_faults=(Faults.ALREADY_STARTED,))
        elif "database" in self.changed_roles and not self.pgbouncer_fresh:
            # PgBouncer sends each transaction after the reload to the new server (and closes the old server
            # connections as they are released): Odoo is not restarted.
            self.act("its PgBouncer reloaded", "signalProcess", program, "HUP")
        if p["state"] == "started" and not self.check_mode:
            self.wait_for_pgbouncer()

    def wait_for_pgbouncer(self) -> None:
        p = self.p
        deadline = time.monotonic() + p["health_timeout"]
        while not socket_at(self.p["pgbouncer_socket"]):
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
        """A directory of `owner`'s (and `group`'s, else its own group's) with `mode`, made or mended without
        following a link (files.ensure_directory)."""
        self.actions += ensure_directory(path, self.ids(owner, group), mode, self.check_mode)

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
