#!/usr/bin/python
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Move a tenant's database to another PostgreSQL server: place, copy, cut over, verify, repoint, clean up."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: db_migrate
short_description: Move a tenant's database to another PostgreSQL server, every phase recorded
description:
  - Moves a tenant's database when its new plan needs another C(db_type) (shared pool or dedicated server) or, on
    a dedicated server, another C(ha) (a server's is fixed when it is made), or
    off a server being drained. Every phase is recorded in C(registry.migrations) before its work starts.
  - I(step=place) chooses the target (as M(saasodoo.platform.db_placement) would, never the current server) and
    records the move. With I(method=logical) it first looks for what logical replication cannot carry or must not
    run (large objects, tables without a key, unlogged tables, the tenant's own code in the apply) and refuses,
    naming them, before any server is chosen or brought up; not in a drain (its other tenants go on) nor right after
    undoing a killed run's move (the playbook points the runtime back first); the copy checks again in any case, and
    refuses. A move left unfinished by a killed run is dealt with first. Before the switch (the registry pointing at
    the target) it is rolled back (target database, role, subscriptions, publications and slots dropped; the source
    opened again); switched but not yet verified, it is switched back (the target blocked, its last writes applied
    on the source, the registry pointed back), then rolled back; verified, it is kept for I(step=move) to finish.
  - The playbook then readies the target (server up, the tenant's role and empty database, role unable to log in).
  - I(step=move) copies (I(method=logical) - the tables without their indexes, the rows from the snapshot of a
    slot made for the move in I(jobs) parallel COPY streams, the keys, a subscription on that slot, the other
    indexes and constraints; or I(method=dump) - parallel directory-format dump and restore with writes
    blocked), blocks writes on the source (the tenant's role may not log in, its sessions end), waits for zero
    lag and syncs every sequence.
  - I(method=logical) then switches at once - replication turned round (target to source, its slot and its
    subscription made before writes were blocked, the subscription enabled once the forward one is gone), both
    copies frozen in a snapshot, the target's role allowed to log in and the registry
    repointed (server, db_type and plan in one transaction) - and verifies the two snapshots (per-table row counts
    and checksums) while the tenant works on the target. Verified, the way back is dropped; a mismatch switches
    back, and the module fails saying why. I(method=dump) verifies first and repoints after. The write downtime
    (block to repoint) is recorded.
  - Cleanup drops what is left of the replication and the move's roles, and renames the source copy to
    C(<db>_old<id>), kept until C(retain_until).
  - Any failure before the switch rolls back and fails with the reason; the tenant stays on its source as before.
  - Only one copy at a time lets the tenant's role log in, and no committed write is lost by a switch back.
  - Two runs for one tenant never overlap (a session advisory lock on the registry, released if a run dies). The
    other tenant playbooks wait while a move runs (registry_tenant's I(move_wait_seconds)).
  - I(step=wait) watches a I(step=move) started as an Ansible async task (I(job), on the same host) without taking
    the lock, so the playbook can point the tenant's runtime at the target while the move goes on. With
    I(wait_for=block) it returns once that can be done (C(follow) true, with the tenant as
    M(saasodoo.platform.registry_tenant) returns it, at the target), which is from the block of a
    I(method=logical) move, whose switch opens the target once the target has caught up (until then the target's
    PgBouncer turns the tenant away and the runtime tries again), and from the repoint of a I(method=dump) one,
    whose copy comes after its block; or once the move ended first (C(follow) true if it was repointed, with the
    tenant as the registry has it). With I(wait_for=finished) it returns the move's own result, or fails as the move
    failed. Either fails if the move died (its process gone, or its lock released without a result; the next run
    finishes or rolls it back).
version_added: 0.2.0
author: SaaSOdoo ops maintainers (@saasodoo)
options:
  tenant_id:
    description: The tenant whose database moves.
    type: str
    required: true
  plan:
    description: The plan the tenant moves to; its C(db_type) decides the kind of target. Its current plan for a drain.
    type: str
    required: true
  step:
    description: C(place) chooses and records the target; C(move) moves the database to it; C(wait) watches a move.
    type: str
    choices: [place, move, wait]
    default: move
  wait_for:
    description: With I(step=wait), what to wait for.
    type: str
    choices: [block, finished]
    default: finished
  job:
    description:
      - With I(step=wait), the C(ansible_job_id) of the async I(step=move) task. Its status file (in
        C(ANSIBLE_ASYNC_DIR), C(~/.ansible_async) by default) says whether the move still runs and holds its result.
    type: str
  wait_timeout:
    description: With I(step=wait), seconds to wait before failing.
    type: int
    default: 7200
  stop_with_run:
    description:
      - With I(step=move) run as an async task, stop once the playbook run that started it (I(audit_run), which
        held the tenant then) is gone - before the switch (during the copy, before the block, before a dump move's
        repoint), rolled back; switched and verified, as a crash, for the recovery pass's run to finish the move
        and point the tenant's runtime at it. A I(method=logical) move goes on from its block to its verdict; undone
        then (rolled back or switched back), it is left open, for the recovery pass's run to point the runtime back.
    type: bool
    default: false
  drain:
    description: Move even when the plan's C(db_type) is the tenant's (moving it off its current server).
    type: bool
    default: false
  method:
    description: How the data is copied (recorded at I(step=place)).
    type: str
    choices: [logical, dump]
    default: logical
  servers:
    description:
      - Database server name to how this module reaches it as a superuser (C(login_user), C(login_password),
        C(login_unix_socket) or C(login_host) and C(login_port), else the registry's address and port; C(sslmode)
        and C(sslrootcert) as libpq takes them) and its PgBouncer's console (C(pgbouncer_admin_user),
        C(pgbouncer_admin_password)). Must hold the source and the target.
    type: dict
    required: true
  ca_certificate:
    description:
      - The CA (PEM) the servers' certificates are checked against, for the logins in I(servers) without a
        C(sslrootcert). Given as content, not a path, because the controller that holds it is not always the host
        this module runs on; written to a private file for the run's length.
    type: str
    default: ""
  pg_bin_dir:
    description: Where C(pg_dump) and C(pg_restore) are.
    type: path
    default: /usr/lib/postgresql/15/bin
  jobs:
    description: Parallel jobs for dump, restore and index builds, and a logical move's COPY streams.
    type: int
    default: 2
  sync_timeout:
    description: Seconds a logical move's copy of the rows may take.
    type: int
    default: 3600
  catchup_timeout:
    description: Seconds the target may take to apply what the source committed before writes were blocked.
    type: int
    default: 60
  retain_days:
    description: Days the source copy is kept after the move.
    type: int
    default: 7
  replication_sslmode:
    description:
      - How a subscription reaches the other server (libpq C(sslmode)). With C(verify-ca) or C(verify-full) it checks
        the other server's certificate against the C(ca.crt) beside the subscriber's own certificate, and refuses to
        move if that file is missing.
    type: str
    choices: [disable, prefer, require, verify-ca, verify-full]
    default: prefer
attributes:
  check_mode:
    support: none
extends_documentation_fragment:
  - saasodoo.platform.attributes
  - saasodoo.platform.placement
  - saasodoo.platform.registry_login
"""

EXAMPLES = r"""
- name: Choose and record the new server
  saasodoo.platform.db_migrate:
    tenant_id: acme
    plan: premium-monthly
    step: place
    servers: "{{ saasodoo_db_admin_logins }}"
    odoo_pg_majors: {"18.0": [15]}
    dedicated: {name_prefix: pool-dedicated-, port_range: [55470, 55499]}
    login_password: "{{ registry_password }}"
  register: move

- name: Move the database
  saasodoo.platform.db_migrate:
    tenant_id: acme
    plan: premium-monthly
    servers: "{{ saasodoo_db_admin_logins }}"
    odoo_pg_majors: {"18.0": [15]}
    login_password: "{{ registry_password }}"
"""

RETURN = r"""
moving:
  description: Whether the tenant has a move to make (false when its database already is where its plan wants it).
  returned: success
  type: bool
target:
  description: The target server as the registry records it (C(status) C(provisioning) when newly recorded).
  returned: when moving
  type: dict
source:
  description: The server the move leaves, as the registry records it (a move a killed run left switched included).
  returned: when moving (step=place)
  type: dict
migration:
  description: The C(registry.migrations) row - phases with their times, write_downtime_ms, copy_ms, verification.
  returned: when moving or moved
  type: dict
follow:
  description: Whether the tenant's runtime is to point at the target now (see I(wait_for=block)).
  returned: step=wait and wait_for=block
  type: bool
tenant:
  description:
    - The tenant as M(saasodoo.platform.registry_tenant) returns it; at the target (its C(db_server) and C(server))
      when C(follow) is true.
  returned: step=wait and wait_for=block
  type: dict
rolled_back:
  description: The unfinished move this run rolled back before placing again, if any.
  returned: success
  type: dict
left:
  description: That move's target server, as the registry records it (its PgBouncer still lists the tenant's role).
  returned: when rolled_back is not null
  type: dict
executed:
  description: What the module did, in order.
  returned: success
  type: list
  elements: str
"""

import json
import os
import time
import traceback

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.saasodoo.platform.plugins.module_utils.audit import record_audit
from ansible_collections.saasodoo.platform.plugins.module_utils.files import certificate_file
from ansible_collections.saasodoo.platform.plugins.module_utils.placement import PlacementError, server_ha
from ansible_collections.saasodoo.platform.plugins.module_utils.placement_store import (
    PLACEMENT_OPTIONS,
    PlacementRequest,
    PlacementStore,
    placement_config,
)
from ansible_collections.saasodoo.platform.plugins.module_utils.registry import (
    REGISTRY_LOGIN_OPTIONS,
    RegistryUnreachable,
    connect_registry,
    open_move,
    try_move_lock,
)
from ansible_collections.saasodoo.platform.plugins.module_utils.registry import read_tenant as tenant_record
from ansible_collections.saasodoo.platform.plugins.module_utils.registry_plans import latest_plan

try:
    import psycopg
    from psycopg.rows import dict_row

    from ansible_collections.saasodoo.platform.plugins.module_utils.migration import Move, MoveOptions
    from ansible_collections.saasodoo.platform.plugins.module_utils.move_replicable import replication_problems
    from ansible_collections.saasodoo.platform.plugins.module_utils.move_servers import MoveError, Server

    PSYCOPG_IMPORT_ERROR = None
except ImportError:
    PSYCOPG_IMPORT_ERROR = traceback.format_exc()


def read_tenant(registry, tenant_id: str) -> dict:
    with registry.cursor(row_factory=dict_row) as cur:
        tenant = cur.execute("SELECT * FROM registry.tenants WHERE tenant_id = %s", (tenant_id,)).fetchone()
    if tenant is None:
        raise MoveError(f"unknown tenant {tenant_id!r}: the registry has no such tenant")
    if tenant["status"] not in ("active", "suspended"):
        raise MoveError(f"tenant {tenant_id} is {tenant['status']}: only an active or suspended tenant is moved")
    return tenant


def server(registry, name: str, logins: dict) -> Server:
    with registry.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            "SELECT name, host, port, pgbouncer_host, pgbouncer_port FROM registry.db_servers WHERE name = %s", (name,)
        ).fetchone()
    if name not in logins:
        raise MoveError(f"no login given for database server {name} (servers option): is it in the inventory?")
    return Server(row["name"], row["host"], row["port"], logins[name], row["pgbouncer_host"], row["pgbouncer_port"])


def as_move(registry, row: dict, tenant: dict, logins: dict, options: MoveOptions) -> Move:
    return Move(
        registry,
        row,
        tenant,
        server(registry, row["source_server"], logins),
        server(registry, row["target_server"], logins),
        options,
    )


def place(module, registry, p: dict, options: MoveOptions) -> dict:
    tenant = read_tenant(registry, p["tenant_id"])
    result: dict = {"changed": False, "moving": False, "rolled_back": None, "executed": []}
    row = open_move(registry, p["tenant_id"])
    if row and row["phase"] == "placed":  # the playbook readies the target next
        return moving(registry, row, result)
    if row:
        move = as_move(registry, row, tenant, p["servers"], options)
        if move.finishable():
            return moving(registry, row, result)
        # Nobody runs it (this run holds the tenant's move lock): a killed run. Before the switch the source is
        # still the tenant's database; switched but not verified, the source has every write the target took.
        # Either way the tenant goes back to the source and the move starts again from scratch.
        reason = f"interrupted in {row['phase']}"
        if move.switched():
            move.switch_back(f"{reason}, before the copies were verified: switched back by the next run")
        elif row["phase"] == "rolled_back":  # left open once its run was gone: finished here, keeping why
            move.roll_back(row["error"], finish=True)
        else:
            move.roll_back(f"{reason}: rolled back by the next run", finish=True)
        tenant = read_tenant(registry, p["tenant_id"])
        # Its target's PgBouncer was told of the role, moving there: the playbook brings it in step again.
        result.update(changed=True, rolled_back=move.row, left=target_of(registry, move.row), executed=move.executed)
    plan = latest_plan(registry, p["plan"])
    # A dedicated server's ha is fixed when it is made: a dedicated plan with another ha moves the tenant to a
    # server made as that plan asks.
    with registry.cursor(row_factory=dict_row) as cur:
        current = cur.execute("SELECT ha FROM registry.db_servers WHERE name = %s", (tenant["db_server"],)).fetchone()
    if plan is None:
        raise MoveError(f"unknown plan {p['plan']!r} for tenant {p['tenant_id']}: it is not in registry.plans")
    plan_ha = server_ha(plan["name"], plan["entitlements"])
    same_ha = plan["db_type"] != "dedicated" or plan_ha == ((current or {}).get("ha") or "none")
    if plan["db_type"] == tenant["db_type"] and same_ha and not p["drain"]:
        return result
    # A logical move that cannot work is refused before a server is chosen or brought up for it. Not in a drain,
    # whose other tenants go on (that one's copy refuses it), nor after a move a killed run left was undone just
    # now: the playbook then points the tenant's runtime back, and the copy refuses it.
    if p["method"] == "logical" and not p["drain"] and result["rolled_back"] is None:
        with server(registry, tenant["db_server"], p["servers"]).connect(tenant["db_name"]) as conn:
            problems = replication_problems(conn)
        if problems:
            raise MoveError(
                f"tenant {tenant['tenant_id']} cannot be moved by logical replication: {'; '.join(problems)}."
                f" Nothing was placed: it stays on {tenant['db_server']} (method dump moves such a database)"
            )
    request = PlacementRequest(tenant["tenant_id"], p["plan"], tenant["customer_id"], tenant["subscription_id"])
    with registry.transaction(), registry.cursor(row_factory=dict_row) as cur:
        target, placement = PlacementStore(registry, placement_config(p)).place_move(request, tenant["db_server"])
        row = cur.execute(
            "INSERT INTO registry.migrations (tenant_id, source_server, target_server, method, phase, plan_name,"
            " phase_history) VALUES (%s, %s, %s, %s, 'placed', %s,"
            " jsonb_build_array(jsonb_build_object('phase', 'placed', 'at', clock_timestamp()))) RETURNING *",
            (tenant["tenant_id"], tenant["db_server"], target["name"], p["method"], p["plan"]),
        ).fetchone()
        record_audit(
            registry,
            actor="db_migrate",
            tenant_id=tenant["tenant_id"],
            kind="decision",
            subject=f"migration:{row['id']}",
            detail={
                "action": "move",
                "from": tenant["db_server"],
                "to": target["name"],
                "plan": p["plan"],
                "method": p["method"],
                "reason": placement["reason"],
            },
        )
    result["executed"].append(f"placed migration {row['id']}: {tenant['db_server']} -> {target['name']}")
    return moving(registry, row, {**result, "changed": True}, target)


def moving(registry, row: dict, result: dict, target: dict | None = None) -> dict:
    """place's answer for a move that goes on: its row, and the servers it leaves and goes to (`target` when the
    caller has it already)."""
    return {**result, "moving": True, "target": target or target_of(registry, row), "source": source_of(registry, row),
            "migration": row}  # fmt: skip


def server_record(registry, name: str) -> dict:
    with registry.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT name, kind, host, port, pgbouncer_host, pgbouncer_port, status FROM registry.db_servers"
            " WHERE name = %s",
            (name,),
        ).fetchone()


def target_of(registry, row: dict) -> dict:
    return server_record(registry, row["target_server"])


def source_of(registry, row: dict) -> dict:
    """The server the move leaves (its PgBouncer must forget the tenant's role once it is done)."""
    return server_record(registry, row["source_server"])


def move(module, registry, p: dict, options: MoveOptions) -> dict:
    tenant = read_tenant(registry, p["tenant_id"])
    row = open_move(registry, p["tenant_id"])
    if row is None:
        with registry.cursor(row_factory=dict_row) as cur:
            last = cur.execute(
                "SELECT * FROM registry.migrations WHERE tenant_id = %s ORDER BY id DESC LIMIT 1", (p["tenant_id"],)
            ).fetchone()
        return {"changed": False, "moving": False, "migration": last, "executed": []}
    moving = as_move(registry, row, tenant, p["servers"], options)
    moving.run()
    return {
        "changed": True,
        "moving": True,
        "target": target_of(registry, moving.row),
        "migration": moving.row,
        "executed": moving.executed,
    }


WAIT_POLL_SECONDS = 0.05  # the runtime step starts when the block is seen: the wait is the tenant's downtime
# A logical move's phases from its block on, on its way forward: the tenant's runtime follows it to the target then.
LOGICAL_SWITCH_ON = ("cutover", "repointed", "verified", "done")


def async_job_path(job_id: str) -> str:
    async_dir = os.path.expanduser(os.environ.get("ANSIBLE_ASYNC_DIR", "~/.ansible_async"))
    return os.path.join(async_dir, os.path.basename(job_id))


def async_job(job_id: str) -> dict:
    """The async task's status file as Ansible's async_status reads it: {"started": 1, "finished": 0} while the move
    runs (with its "pid" under Mitogen), then the module's result."""
    try:
        with open(async_job_path(job_id)) as status:
            return json.load(status)
    except FileNotFoundError:
        raise MoveError(f"no async job {job_id} on this host: step=wait runs where step=move was started") from None
    except json.JSONDecodeError:
        return {"started": 1, "finished": 0}  # caught between write and rename: look again


def job_state(job: dict) -> str:
    """finished, died (its process is gone without a result: killed; Mitogen writes its pid) or running."""
    if job.get("finished") or "started" not in job:  # Ansible's async_wrapper writes the bare result (async_status)
        return "finished"
    if job.get("pid"):
        try:
            os.kill(int(job["pid"]), 0)
        except ProcessLookupError:
            return "died"
        except PermissionError:
            pass  # alive, as another user
    return "running"


class MoveWatch:
    """Whether the watched move still runs. Ansible's own async_wrapper writes no pid and, killed with its module,
    no result either: the move's lock then tells, once it has been seen held and has stayed released for a grace
    (the wrapper writes the result of a module that ended on its own just after the module's session closes)."""

    GRACE_SECONDS = 5.0

    def __init__(self, registry, tenant_id: str, job_id: str):
        self.registry, self.tenant_id, self.job_id = registry, tenant_id, job_id
        self.seen_held, self.released_at = False, None

    def state(self) -> str:
        state = job_state(async_job(self.job_id))
        if state != "running":
            return state
        (held,) = self.registry.execute("SELECT registry.move_is_held(%s)", (self.tenant_id,)).fetchone()
        if held:
            self.seen_held, self.released_at = True, None
        elif self.seen_held:
            self.released_at = self.released_at or time.monotonic()
            if time.monotonic() - self.released_at > self.GRACE_SECONDS:
                return "died"
        return "running"


def wait(module, registry, p: dict) -> dict:
    """Watch the move an async step=move task runs (see the module's docstring)."""
    if not p["job"]:
        raise MoveError("step=wait needs job: the ansible_job_id of the async step=move task")
    deadline, watch = time.monotonic() + p["wait_timeout"], MoveWatch(registry, p["tenant_id"], p["job"])
    while True:
        state = watch.state()
        if state == "died":
            os.remove(async_job_path(p["job"]))
            row = open_move(registry, p["tenant_id"])
            raise MoveError(
                f"the move of tenant {p['tenant_id']} died in phase {row['phase'] if row else 'unknown'}: "
                "run the playbook again to finish or roll it back"
            )
        if p["wait_for"] == "block":
            with registry.cursor(row_factory=dict_row) as cur:
                row = cur.execute(
                    "SELECT m.method, m.phase, m.target_server, t.db_server FROM registry.migrations m"
                    " JOIN registry.tenants t USING (tenant_id) WHERE m.tenant_id = %s ORDER BY m.id DESC LIMIT 1",
                    (p["tenant_id"],),
                ).fetchone()
            repointed = bool(row) and row["db_server"] == row["target_server"] and row["phase"] != "switching_back"
            blocked = bool(row) and row["method"] == "logical" and row["phase"] in LOGICAL_SWITCH_ON
            if state != "running" or repointed or blocked:
                follow = repointed or (blocked and state == "running")
                # registry_tenant's shape, the runtime's input: at the target if the runtime goes there now.
                tenant = tenant_record(registry, p["tenant_id"], at_server=row["target_server"] if follow else None)
                return {"changed": False, "follow": follow, "tenant": tenant, "executed": []}
        elif state == "finished":
            result = async_job(p["job"])
            os.remove(async_job_path(p["job"]))  # read once, as async_status's cleanup does
            if result.get("failed"):
                module.fail_json(msg=result.get("msg", "the move failed"), tenant_id=p["tenant_id"],
                                 migration=result.get("migration"))  # fmt: skip
            keep = ("changed", "moving", "target", "migration", "executed")
            return {key: result[key] for key in keep if key in result}
        if time.monotonic() > deadline:
            raise MoveError(f"the move of tenant {p['tenant_id']} did not end within {p['wait_timeout']} s")
        time.sleep(WAIT_POLL_SECONDS)  # the move runs in another process: poll its status file and the registry


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            tenant_id=dict(type="str", required=True),
            plan=dict(type="str", required=True),
            step=dict(type="str", choices=["place", "move", "wait"], default="move"),
            wait_for=dict(type="str", choices=["block", "finished"], default="finished"),
            job=dict(type="str"),
            wait_timeout=dict(type="int", default=7200),
            stop_with_run=dict(type="bool", default=False),
            drain=dict(type="bool", default=False),
            method=dict(type="str", choices=["logical", "dump"], default="logical"),
            servers=dict(type="dict", required=True, no_log=True),
            pg_bin_dir=dict(type="path", default="/usr/lib/postgresql/15/bin"),
            jobs=dict(type="int", default=2),
            sync_timeout=dict(type="int", default=3600),
            catchup_timeout=dict(type="int", default=60),
            retain_days=dict(type="int", default=7),
            replication_sslmode=dict(
                type="str", choices=["disable", "prefer", "require", "verify-ca", "verify-full"], default="prefer"
            ),
            ca_certificate=dict(type="str", default=""),
            **PLACEMENT_OPTIONS,
            **REGISTRY_LOGIN_OPTIONS,
        ),
        supports_check_mode=False,
    )
    if PSYCOPG_IMPORT_ERROR:
        module.fail_json(msg=missing_required_lib("psycopg"), exception=PSYCOPG_IMPORT_ERROR)
    p = module.params
    options = MoveOptions(
        pg_bin_dir=p["pg_bin_dir"],
        jobs=p["jobs"],
        sync_timeout=p["sync_timeout"],
        catchup_timeout=p["catchup_timeout"],
        retain_days=p["retain_days"],
        replication_sslmode=p["replication_sslmode"],
        run_id=p["audit_run"] if p["stop_with_run"] else "",
    )
    try:
        with certificate_file(p["ca_certificate"], "db_migrate-ca-") as ca_file:
            for login in p["servers"].values():
                login["sslrootcert"] = login.get("sslrootcert") or ca_file
            with connect_registry(p) as registry:
                if p["step"] == "wait":  # the move it watches holds the lock
                    result = wait(module, registry, p)
                elif not try_move_lock(registry, p["tenant_id"]):
                    raise MoveError(f"another db_migrate run is moving tenant {p['tenant_id']}; let it finish")
                else:
                    result = (place if p["step"] == "place" else move)(module, registry, p, options)
        module.exit_json(**result)
    except (MoveError, PlacementError, RegistryUnreachable) as e:
        module.fail_json(msg=str(e), tenant_id=p["tenant_id"])
    except psycopg.Error as e:
        module.fail_json(msg=f"database error while moving tenant {p['tenant_id']}: {e}")


if __name__ == "__main__":
    main()
