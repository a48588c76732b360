#!/usr/bin/python
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Read a tenant's registry record and record its lifecycle transitions."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: registry_tenant
short_description: Read a tenant from the registry and record its lifecycle transitions
description:
  - Returns the tenant's registry row with its plan's entitlements and its database server, so a playbook
    works from what the registry says, never from guesses. An unknown tenant fails with what to do.
  - With I(action), fails unless the tenant is in a status that action starts from, or may leave in I(status),
    by the tenant lifecycle's table (C(module_utils/lifecycle.py), C(docs/reference/lifecycle.md)); for example
    C(tenant_resume) needs an active or suspended tenant and leaves it active.
  - Records what changes, all in one transaction with one audit row naming the action and the before/after
    values; nothing changes when the tenant already is as asked (a second run reports no change).
  - I(status) moves the tenant; C(terminated) also sets C(retain_until) to now plus the plan's
    C(retention_days) (or I(retain_days)), C(active) and C(suspended) clear it, C(purged) frees its port and
    records its backups as removed, C(failed) (a provision that left nothing behind) frees its place on its
    database server (C(db_server) becomes null, so placement chooses again).
  - I(plan) moves the tenant to that plan's newest version (entitlements become its quotas). A plan whose
    C(db_type) differs is refused unless I(allow_db_type_change), since the database must move first. The Odoo
    modules its earlier plans gave it that the new plan lacks stay installed and are recorded in
    C(extra_modules) (C(registry.extra_modules_after)), since a plan change never uninstalls one.
  - I(http_port_range) gives the tenant a port for its Odoo (process runtime) if it has none, the lowest free
    one in the range, under a lock so parallel runs never share one.
  - I(credential_version) moves the tenant to that version of its derived database password (a rotation,
    C(playbooks/tenant_rotate_credentials.yml)); it never goes back.
  - I(customer_id) and I(subscription_id) bind the tenant to another Kill Bill account and subscription (a
    transfer made on purpose, C(playbooks/tenant_transfer.yml)); the webhook runner acts for no other.
  - With I(hold_seconds), one playbook run per tenant at a time. The tenant is this run's until it ends, and a
    run that had it first ends before this one reads the tenant.
  - With I(move_wait_seconds), one operation at a time. When the tenant has an open move (registry.migrations),
    waits up to that long for the run moving it to finish, then reads the tenant where the move left it. A move
    that no run holds (its run died) is refused at once, with the playbook that finishes it.
  - A change the customer should hear of (a provision done, a suspension, a resume, a termination, a new plan) is
    queued as an e-mail in C(registry.customer_mail) by the registry itself, in the same transaction; the webhook
    runner sends it. I(welcome_link) goes with the welcome, sealed with I(mail_key).
  - Check mode computes the same answer and rolls it back.
version_added: 0.1.0
author: SaaSOdoo ops maintainers (@saasodoo)
options:
  tenant_id:
    description: The tenant's id. Empty fails, naming what the playbook needs (C(-e tenant_id=<id>), and
      C(-e plan=<Kill Bill plan name>) when I(plan) is given).
    type: str
    required: true
  actor:
    description: Who records the change (the playbook or runner job); stored in the audit row.
    type: str
    default: registry_tenant
  action:
    description: The lifecycle action (for example C(tenant_suspend)), for the audit row and the statuses the tenant
      must be in; one the lifecycle's table lacks fails. Without it, the tenant is read in any status.
    type: str
  status:
    description: The status to record; one I(action) does not leave a tenant in fails.
    type: str
    choices: [provisioning, active, suspended, terminated, purged, failed]
  plan:
    description: Kill Bill plan name to move the tenant to (its newest version). Empty fails as an empty I(tenant_id).
    type: str
  allow_db_type_change:
    description: Accept a plan whose C(db_type) differs from where the database is (a migration moves it).
    type: bool
    default: false
  retain_days:
    description: Days a terminated tenant's data is kept; defaults to the plan's C(retention_days).
    type: int
  storage_path:
    description: Where the tenant's files live (its Odoo C(data_dir)).
    type: str
  odoo_build:
    description:
      - The Odoo build (its odoo-bin command) the tenant's database is at from now on, which its Odoo runs (a
        provision's, an update's, C(playbooks/tenant_update.yml), a restored backup's). Words of letters, digits
        and the characters C(_./:=+@-), separated by single spaces.
      - It ends an update under way (clears C(odoo_update_backup)), unless I(odoo_update_backup) is given too.
    type: str
  odoo_update_backup:
    description: The backup an update of the tenant under way goes back to if it fails, until I(odoo_build) records
      its end.
    type: str
  refuse_while_updating:
    description: Fail, changing nothing, while the tenant has an Odoo update under way (C(odoo_update_backup) set),
      as its database may be half-updated, which nothing but the update or a restore may start or back up.
    type: bool
    default: false
  credential_version:
    description: The version of the tenant's derived database password from now on; not lower than its current one.
    type: int
  customer_id:
    description: The Kill Bill account id the tenant belongs to from now on.
    type: str
  subscription_id:
    description: The Kill Bill subscription id the tenant belongs to from now on.
    type: str
  http_port_range:
    description: First and last port the tenant's Odoo may take; allocates one when the tenant has none.
    type: list
    elements: int
  move_wait_seconds:
    description: Wait up to this many seconds for a running move of the tenant to end before reading it; without
      it an open move is not looked at (tenant_change_plan.yml finishes moves itself).
    type: int
  hold_seconds:
    description:
      - Make the tenant this playbook run's (I(audit_run)) until the run ends, before anything else. While another
        run that is still alive has it, wait up to this many seconds, then fail naming that run.
      - A run is alive while the registry session the C(saasodoo.platform.audit) callback keeps for it is; a run
        without one (the callback not enabled) holds nothing and is warned.
    type: int
  welcome_link:
    description: The admin's one-time sign-in link, for the welcome e-mail this run's C(status=active) queues for a
      new tenant; stored encrypted with I(mail_key), never in clear. Ignored when no welcome is queued.
    type: str
  mail_key:
    description: The key that seals I(welcome_link) (a Fernet key, or the 43-character form the platform derives);
      the webhook runner's C(mail.link_key). Required with I(welcome_link).
    type: str
  detail:
    description: Extra facts for the audit row (never a secret).
    type: dict
    default: {}
attributes:
  diff_mode:
    support: full
extends_documentation_fragment:
  - saasodoo.platform.attributes
  - saasodoo.platform.registry_login
"""

EXAMPLES = r"""
- name: Read the tenant and its plan
  saasodoo.platform.registry_tenant:
    tenant_id: acme
    login_port: 55432
    login_password: "{{ registry_password }}"
  register: tenant

- name: Record the suspension (of an active or suspended tenant)
  saasodoo.platform.registry_tenant:
    tenant_id: acme
    action: tenant_suspend
    actor: tenant_suspend
    status: suspended
    login_password: "{{ registry_password }}"

- name: Record a provision that failed and left nothing behind, with what failed (never an active tenant)
  saasodoo.platform.registry_tenant:
    tenant_id: acme
    action: provision
    actor: tenant_provision
    status: failed
    detail: {task: "Ensure the tenant's database and role exist", error: "..."}
    login_password: "{{ registry_password }}"

- name: Resize within the same db_type
  saasodoo.platform.registry_tenant:
    tenant_id: acme
    action: tenant_change_plan
    plan: standard-monthly
    login_password: "{{ registry_password }}"
"""

RETURN = r"""
tenant:
  description: The tenant's registry row after the change, with C(plan) (the entitlements of its plan version)
    and C(server) (its database server, or null). No secret is stored there.
  returned: success
  type: dict
  sample: {"tenant_id": "acme", "plan_name": "basic-monthly", "plan_version": 1, "db_type": "shared",
           "db_name": "t_acme", "status": "active", "http_port": 58100, "retain_until": null, "extra_modules": [],
           "plan": {"db_type": "shared", "odoo_workers": 2, "storage_gb": 5},
           "server": {"name": "pool-shared-01", "host": "127.0.0.1", "port": 55433, "pgbouncer_port": 56433}}
changes:
  description: Each changed field with its value before and after.
  returned: success
  type: dict
  sample: {"status": {"before": "active", "after": "suspended"}}
open_move:
  description: The tenant's unfinished move (its id, phase and the plan it moves for), or null.
  returned: success
  type: dict
  sample: {"id": 12, "phase": "copying", "plan_name": "premium-monthly"}
"""

import re
import time
import traceback

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.saasodoo.platform.plugins.module_utils.audit import record_audit
from ansible_collections.saasodoo.platform.plugins.module_utils.lifecycle import LIVE, STATUSES, expected_statuses
from ansible_collections.saasodoo.platform.plugins.module_utils.registry import (
    REGISTRY_LOGIN_OPTIONS,
    connect_registry,
    hold_tenant,
    open_move,
    read_tenant,
    release_move_lock,
    run_registry_module,
    try_move_lock,
)
from ansible_collections.saasodoo.platform.plugins.module_utils.registry_plans import latest_plan

try:
    from cryptography.fernet import Fernet

    CRYPTOGRAPHY_IMPORT_ERROR = None
except ImportError:
    CRYPTOGRAPHY_IMPORT_ERROR = traceback.format_exc()

try:  # without it, run_registry_module fails the module with Ansible's message for a missing library
    from psycopg import sql
    from psycopg.types.json import Jsonb
except ImportError:
    pass


# Serialises port allocation across runs (any fixed key; 'saasodoo.http_port').
HTTP_PORT_LOCK = 0x5AA5_0D00_0001
# registry.tenants.odoo_build's check (migration 0029): said here before the database refuses it.
ODOO_BUILD = re.compile(r"[A-Za-z0-9_./:=+@-]+( [A-Za-z0-9_./:=+@-]+)*")


class TenantError(Exception):
    """A request the registry refuses; the message names the tenant and what to do."""


def waiting_for(migration_id: int) -> str:
    return f"saasodoo: waits for move {migration_id}"


def waiting_for_run(tenant_id: str) -> str:
    return f"saasodoo: waits for the run that has tenant {tenant_id}"[:63]


def hold_for_run(module: AnsibleModule, conn, tenant_id: str, wait_seconds: int) -> None:
    """Make the tenant this run's until it ends, waiting while another run that is still alive has it."""
    run = module.params["audit_run"]
    deadline = time.monotonic() + wait_seconds
    while True:
        hold = hold_tenant(conn, tenant_id, run)
        if hold["held"]:
            return
        if hold["held"] is None:
            module.warn(
                f"run {run or '(no id)'} has no holder session in the registry (is the saasodoo.platform.audit callback"
                f" enabled?): tenant {tenant_id} is not held for it, and another run may act on it meanwhile"
            )
            return
        conn.execute("SELECT pg_catalog.set_config('application_name', %s, false)", (waiting_for_run(tenant_id),))
        if time.monotonic() >= deadline:
            raise TenantError(
                f"tenant {tenant_id} is still in the hands of run {hold['run_id']} (since {hold['taken_at']}) after"
                f" {wait_seconds} s; nothing was changed: run this again once it has ended"
                f" (playbooks/registry_audit.yml -e run={hold['run_id']} shows what it did)"
            )
        time.sleep(0.5)  # the other run is another process: poll the registry


def await_no_open_move(conn, tenant_id: str, wait_seconds: int) -> None:
    """Return once the tenant has no open move: a running one is waited for, one no run holds is refused."""
    deadline = time.monotonic() + wait_seconds
    while True:
        move = open_move(conn, tenant_id)
        if move is None:
            return
        if try_move_lock(conn, tenant_id):
            try:  # no run moves it now; it may have just finished
                move = open_move(conn, tenant_id)
            finally:
                release_move_lock(conn, tenant_id)
            if move is None:
                return
            raise TenantError(
                f"tenant {tenant_id} has a move that no run is finishing (migration {move['id']}, "
                f"{move['source_server']} -> {move['target_server']}, in {move['phase']} since "
                f"{move['started_at']}): run playbooks/tenant_change_plan.yml -e tenant_id={tenant_id} "
                f"-e plan={move['plan_name']}, which finishes it or rolls it back, then this again"
            )
        # What the session waits for shows in pg_stat_activity (for an operator; the tests wait on it).
        conn.execute("SELECT pg_catalog.set_config('application_name', %s, false)", (waiting_for(move["id"]),))
        if time.monotonic() >= deadline:
            raise TenantError(
                f"tenant {tenant_id} is still being moved after {wait_seconds} s (migration {move['id']}, "
                f"in {move['phase']}); nothing was changed: run this again once the move is done"
            )
        time.sleep(0.5)  # the move's run is another process: poll the registry


def free_http_port(conn, low: int, high: int) -> int:
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (HTTP_PORT_LOCK,))
    row = conn.execute(
        "SELECT min(p) FROM generate_series(%s::int, %s::int) AS p"
        " WHERE NOT EXISTS (SELECT 1 FROM registry.tenants WHERE http_port = p)",
        (low, high),
    ).fetchone()
    if row[0] is None:
        raise TenantError(f"every port in {low}-{high} is taken: widen saasodoo_runtime_http_ports")
    return row[0]


def planned_changes(conn, tenant: dict, p: dict) -> dict:
    """Field -> new value, for what differs from the tenant's row."""
    tenant_id = tenant["tenant_id"]
    expected = expected_statuses(p["action"], p["status"]) if p["action"] is not None else STATUSES
    if tenant["status"] not in expected:
        raise TenantError(f"tenant {tenant_id} is {tenant['status']}; {p['action']} needs it {' or '.join(expected)}")
    changes: dict = {}
    plan = tenant["plan"]
    if p["plan"]:
        new = latest_plan(conn, p["plan"])
        if new is None:
            raise TenantError(f"unknown plan {p['plan']!r} for tenant {tenant_id}: it is not in registry.plans")
        if (new["name"], new["version"]) != (tenant["plan_name"], tenant["plan_version"]):
            if new["db_type"] != tenant["db_type"] and not p["allow_db_type_change"]:
                raise TenantError(
                    f"plan {tenant['plan_name']} -> {new['name']} for tenant {tenant_id} moves its database from "
                    f"{tenant['db_type']} to {new['db_type']}: that needs a move between servers (db_migrate), "
                    "which playbooks/tenant_change_plan.yml does; nothing was changed"
                )
            changes.update(plan_name=new["name"], plan_version=new["version"], quotas=new["entitlements"])
            # The modules it keeps beyond its new plan: a plan change never uninstalls one.
            changes["extra_modules"] = conn.execute(
                "SELECT registry.extra_modules_after(%s, %s, %s, %s, %s)",
                (tenant["plan_name"], tenant["plan_version"], tenant["extra_modules"], new["name"], new["version"]),
            ).fetchone()[0]
            plan = new["entitlements"]
    status = p["status"]
    if status and status != tenant["status"]:
        changes["status"] = status
        if status == "terminated":
            days = p["retain_days"] if p["retain_days"] is not None else int(plan.get("retention_days", 0))
            changes["retain_until"] = ("now", days)
        elif status in LIVE and tenant["retain_until"] is not None:
            changes["retain_until"] = None
        if status == "purged" and tenant["http_port"] is not None:
            changes["http_port"] = None
        if status == "failed" and tenant["db_server"] is not None:
            # Nothing of the tenant's is left on the server: the server no longer counts it, a retry places it anew.
            changes["db_server"] = None
    if p["storage_path"] and p["storage_path"] != tenant["storage_path"]:
        changes["storage_path"] = p["storage_path"]
    if p["odoo_build"] and p["odoo_build"] != tenant["odoo_build"]:
        if not ODOO_BUILD.fullmatch(p["odoo_build"]):
            raise TenantError(
                f"odoo_build {p['odoo_build']!r} for tenant {tenant_id}: an odoo-bin command is words of letters,"
                " digits and _ . / : = + @ - separated by single spaces (it goes into the tenant's program file as is)"
            )
        changes.update(odoo_build=p["odoo_build"], odoo_build_since="now")
    if p["odoo_update_backup"] and p["odoo_update_backup"] != tenant["odoo_update_backup"]:
        changes["odoo_update_backup"] = p["odoo_update_backup"]
    elif p["odoo_build"] and not p["odoo_update_backup"] and tenant["odoo_update_backup"] is not None:
        changes["odoo_update_backup"] = None  # its build recorded: the update under way has ended
    if "odoo_update_backup" in changes:
        # From an update's start to its end the database is at no build a point-in-time restore could name.
        changes["odoo_build_since"] = "now"
    version = p["credential_version"]
    if version is not None and version != tenant["credential_version"]:
        if version < tenant["credential_version"]:
            raise TenantError(
                f"tenant {tenant_id} is at credential version {tenant['credential_version']}: a rotation never goes "
                f"back to {version} (an old password must stay dead)"
            )
        changes["credential_version"] = version
    for owner in ("customer_id", "subscription_id"):
        if p[owner] and p[owner] != tenant[owner]:
            changes[owner] = p[owner]
    wants_port = p["http_port_range"] and (status or tenant["status"]) != "purged"
    if wants_port and tenant["http_port"] is None:
        low, high = p["http_port_range"]
        changes["http_port"] = free_http_port(conn, low, high)
    return changes


def apply_changes(conn, tenant: dict, changes: dict) -> None:
    assignments, values = [], {"tenant_id": tenant["tenant_id"]}
    for field, value in changes.items():
        if field == "retain_until" and value is not None:
            assignments.append(sql.SQL("retain_until = now() + make_interval(days => {})").format(value[1]))
            continue
        if field == "odoo_build_since":
            assignments.append(sql.SQL("odoo_build_since = now()"))
            continue
        if field == "quotas":
            value = Jsonb(value)
        assignments.append(sql.SQL("{} = {}").format(sql.Identifier(field), sql.Placeholder(field)))
        values[field] = value
    query = sql.SQL("UPDATE registry.tenants SET {} WHERE tenant_id = %(tenant_id)s").format(
        sql.SQL(", ").join(assignments)
    )
    conn.execute(query, values)
    if changes.get("status") == "purged":
        # tenant_purge.yml deleted the backups' files with the tenant's other data.
        conn.execute(
            "UPDATE registry.backups SET removed_at = now() WHERE tenant_id = %s AND removed_at IS NULL",
            (tenant["tenant_id"],),
        )


def seal_welcome_link(conn, tenant_id: str, link: str, key: str) -> None:
    """Put the sign-in link, encrypted, in the welcome this transaction queued (registry.queue_tenant_mail)."""
    sealed = Fernet(key + "=" * (-len(key) % 4)).encrypt(link.encode()).decode()
    conn.execute(
        """UPDATE registry.customer_mail SET sealed_link = %s
            WHERE tenant_id = %s AND message = 'welcome' AND state = 'queued'
              AND cause = 'transaction ' || pg_catalog.pg_current_xact_id()::text""",
        (sealed, tenant_id),
    )


def audit(conn, tenant_id: str, p: dict, before: dict, after: dict) -> None:
    changed = {k: {"before": before.get(k), "after": after.get(k)} for k in after}
    detail = {**p["detail"], "action": p["action"], "changes": changed}
    record_audit(
        conn, actor=p["actor"], tenant_id=tenant_id, kind="result", subject=f"tenant:{tenant_id}", detail=detail
    )


def run_module(module: AnsibleModule) -> dict:
    p = module.params
    if p["http_port_range"] is not None:
        low_high = p["http_port_range"]
        if len(low_high) != 2 or not 0 < low_high[0] <= low_high[1] <= 65535:
            raise TenantError(f"http_port_range must be [first, last], got {low_high}")
    with connect_registry(p) as conn:
        if p["hold_seconds"] is not None and not module.check_mode:  # a check run changes nothing: it holds nothing
            hold_for_run(module, conn, p["tenant_id"], p["hold_seconds"])
        if p["move_wait_seconds"] is not None:
            await_no_open_move(conn, p["tenant_id"], p["move_wait_seconds"])
        return record(module, conn)


def record(module: AnsibleModule, conn) -> dict:
    p = module.params
    with conn.transaction(force_rollback=module.check_mode):
        tenant = read_tenant(conn, p["tenant_id"], lock=True)
        if tenant is None:
            raise TenantError(
                f"unknown tenant {p['tenant_id']!r}: the registry has no such tenant; "
                "provision it first (playbooks/tenant_provision.yml)"
            )
        if p["refuse_while_updating"] and tenant["odoo_update_backup"] is not None:
            raise TenantError(
                f"tenant {p['tenant_id']} has an Odoo update under way (its backup {tenant['odoo_update_backup']}): "
                f"playbooks/tenant_update.yml -e tenant_id={p['tenant_id']} finishes it or rolls it back first, and"
                " only that or tenant_restore.yml acts on the tenant meanwhile; nothing was changed"
            )
        changes = planned_changes(conn, tenant, p)
        if changes:
            apply_changes(conn, tenant, changes)
            if p["welcome_link"] and changes.get("status") == "active":
                seal_welcome_link(conn, p["tenant_id"], p["welcome_link"], p["mail_key"])
            after = read_tenant(conn, p["tenant_id"])
            fields = {k: after[k] for k in changes}
            audit(conn, p["tenant_id"], p, {k: tenant[k] for k in changes}, fields)
            tenant, before = after, {k: tenant[k] for k in changes}
        else:
            before = {}
    move = open_move(conn, p["tenant_id"])
    result = dict(
        changed=bool(changes),
        tenant=tenant,
        changes={k: {"before": before[k], "after": tenant[k]} for k in before},
        open_move=None if move is None else {k: move[k] for k in ("id", "phase", "plan_name")},
    )
    if module._diff and changes:
        result["diff"] = dict(before=before, after={k: tenant[k] for k in before})
    return result


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            tenant_id=dict(type="str", required=True),
            actor=dict(type="str", default="registry_tenant"),
            action=dict(type="str"),
            status=dict(type="str", choices=list(STATUSES)),
            plan=dict(type="str"),
            allow_db_type_change=dict(type="bool", default=False),
            retain_days=dict(type="int"),
            storage_path=dict(type="str"),
            odoo_build=dict(type="str"),
            odoo_update_backup=dict(type="str"),
            refuse_while_updating=dict(type="bool", default=False),
            customer_id=dict(type="str"),
            subscription_id=dict(type="str"),
            credential_version=dict(type="int"),
            http_port_range=dict(type="list", elements="int"),
            move_wait_seconds=dict(type="int"),
            hold_seconds=dict(type="int"),
            welcome_link=dict(type="str", no_log=True),
            mail_key=dict(type="str", no_log=True),
            detail=dict(type="dict", default={}),
            **REGISTRY_LOGIN_OPTIONS,
        ),
        required_by={"welcome_link": "mail_key"},
        supports_check_mode=True,
    )
    p = module.params
    if not p["tenant_id"] or p["plan"] == "":  # a playbook run without -e tenant_id= (or with an empty plan)
        plan = " -e plan=<Kill Bill plan name>" if p["plan"] is not None else ""
        module.fail_json(msg=f"{p['action'] or 'registry_tenant'} needs -e tenant_id=<id>{plan}.")
    if p["action"] is not None:  # an empty one too: a run's action that templated to nothing checks nothing
        try:
            expected_statuses(p["action"], p["status"])
        except ValueError as error:
            module.fail_json(msg=str(error))
    if p["welcome_link"] and CRYPTOGRAPHY_IMPORT_ERROR:
        module.fail_json(msg=missing_required_lib("cryptography"), exception=CRYPTOGRAPHY_IMPORT_ERROR)
    tenant_id = p["tenant_id"]
    run_registry_module(
        module, run_module, f"registry error for tenant {tenant_id}", refusals=(TenantError,), tenant_id=tenant_id
    )


if __name__ == "__main__":
    main()
