#!/usr/bin/python
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Record a tenant's backups and restores in the registry and read which backups retention removes."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: registry_backup
short_description: Record a tenant's backups and restores in the registry, and read what retention removes
description:
  - The registry side of C(playbooks/tenant_backup.yml) and C(playbooks/tenant_restore.yml); the files are
    written and verified by M(saasodoo.platform.backup_manifest).
  - Without I(state) the module only reads. It returns in C(backup) the backup a restore into I(tenant_id) takes
    (I(backup_id), any tenant's, or else the newest backup of I(from_tenant)), never a removed one, and whether
    the tenant was last restored from it; with I(keep), in C(expired) the tenant's backups not removed yet that
    retention no longer keeps (final backups stay until the purge).
  - C(state=present) records the backup I(backup_id) of I(tenant_id) with an audit row (C(action=backup)).
    Recording it again with the same facts changes nothing; with other facts it fails, since a backup's record
    never changes.
  - C(state=absent) records the tenant's backups I(backup_ids) as removed (their files were deleted); those
    already removed are left as they are.
  - C(state=restored) records that I(backup_id) was restored into I(tenant_id), with an audit row
    (C(action=restore)) naming the tenant the backup is of. It records every restore it is told of, so call it once
    the restore was done (C(playbooks/tenant_restore.yml) restores only a backup the tenant was not last restored
    from, unless forced, so its second run neither restores nor records).
  - C(state=drilled) records a restore drill of I(tenant_id) (C(playbooks/backups_drill.yml)), that is the backup
    it restored into a scratch database (I(backup_id), unset when the tenant had none), whether it passed
    (I(drill_passed)), how long it took (I(drill_seconds)) and what it found (I(drill_detail)), with an audit row
    (C(action=restore_drill)). Every call is a drill that was done.
  - Every write is one transaction. Check mode computes the same answer and rolls it back.
version_added: 0.2.0
author: SaaSOdoo ops maintainers (@saasodoo)
options:
  tenant_id:
    description:
      - The tenant whose backups are recorded, read or marked removed, or the tenant a restore goes into.
    type: str
    required: true
  state:
    description:
      - C(present) records a backup, C(absent) records backups as removed, C(restored) records a restore.
      - Unset, the module only reads.
    type: str
    choices: [present, absent, restored, drilled]
  backup_id:
    description:
      - The backup to record (C(present)) or whose restore to record (C(restored)).
      - When reading, the backup a restore takes (any tenant's); empty or unset, the newest of I(from_tenant).
    type: str
  from_tenant:
    description:
      - When reading without I(backup_id), the tenant whose newest backup a restore takes; defaults to I(tenant_id).
    type: str
  drill_passed:
    description: With C(state=drilled), whether the drill passed.
    type: bool
  drill_seconds:
    description: With C(state=drilled), how long the drill took.
    type: float
  drill_detail:
    description: With C(state=drilled), what the drill restored, or what failed.
    type: str
  at:
    description:
      - When reading, a moment (a timestamp with offset) to bring the tenant's database back to; C(point_in_time)
        then says since when its database has been on its current server in its current life (its latest
        placement, or the end of its latest move there), whether the moment is not before that, and the newest
        whole backup taken by then (whose filestore a point-in-time restore adds the files missing since from).
    type: str
  keep:
    description:
      - When reading, the plan's C(backup_keep); the manual backups it does not keep are in C(expired), its manual
        and final backups it keeps in C(kept).
      - A count keeps the newest that many. GFS counts C({daily, weekly, monthly}) keep the newest backup of each
        of the latest C(daily) days with one, of the latest C(weekly) ISO weeks and of the latest C(monthly) months.
      - Of the point-in-time backups only the newest is kept.
    type: raw
  kind:
    description:
      - The backup's kind (C(present)); C(final) is the one C(playbooks/tenant_terminate.yml) takes.
      - C(point_in_time) is a database as it was at a moment (C(tenant_restore.yml -e at=...)), without filestore.
    type: str
    choices: [manual, final, point_in_time]
    default: manual
  location:
    description: The directory holding the backup's parts and manifest (C(present)).
    type: str
  db_name:
    description: The database the backup is a dump of (C(present)).
    type: str
  plan_name:
    description: The tenant's plan when the backup was taken (C(present)).
    type: str
  bytes:
    description: The size of the backup's parts (C(present)).
    type: int
  manifest_sha256:
    description: The sha256 of the backup's C(manifest.json) (C(present)); a restore verifies the manifest against it.
    type: str
  backup_ids:
    description: The tenant's backups to record as removed (C(absent)).
    type: list
    elements: str
  forced:
    description:
      - The restore was forced (C(restored)), even though the tenant was last restored from that backup.
    type: bool
    default: false
  actor:
    description: Who records the backup or restore (the playbook or runner job); stored in the audit row.
    type: str
    default: registry_backup
extends_documentation_fragment:
  - saasodoo.platform.attributes
  - saasodoo.platform.registry_login
"""

EXAMPLES = r"""
- name: Record a backup
  saasodoo.platform.registry_backup:
    tenant_id: acme
    state: present
    backup_id: acme-20261121T101500123456Z
    location: /srv/backups/acme/acme-20261121T101500123456Z
    db_name: t_acme
    plan_name: basic-monthly
    bytes: 1048576
    manifest_sha256: "{{ manifest.manifest_sha256 }}"
    actor: tenant_backup
    login_password: "{{ registry_password }}"

- name: Find the manual backups beyond the newest 7
  saasodoo.platform.registry_backup:
    tenant_id: acme
    keep: 7
    login_password: "{{ registry_password }}"
  register: retention

- name: Record them removed once their files are gone
  saasodoo.platform.registry_backup:
    tenant_id: acme
    state: absent
    backup_ids: "{{ retention.expired | map(attribute='backup_id') }}"
    login_password: "{{ registry_password }}"

- name: Find the newest backup of tenant acme to restore into tenant acme-copy
  saasodoo.platform.registry_backup:
    tenant_id: acme-copy
    from_tenant: acme
    login_password: "{{ registry_password }}"
  register: to_restore

- name: Record the restore
  saasodoo.platform.registry_backup:
    tenant_id: acme-copy
    state: restored
    backup_id: "{{ to_restore.backup.backup_id }}"
    actor: tenant_restore
    login_password: "{{ registry_password }}"
"""

RETURN = r"""
backup:
  description:
    - Reading, the backup a restore into I(tenant_id) takes, with C(restored_last) (whether the tenant was last
      restored from it); null when there is none.
    - With C(state=present), the recorded backup; with C(state=restored), the restored one.
  returned: always, except with C(state=absent) and C(state=drilled)
  type: dict
  sample: {"backup_id": "acme-20261121T101500123456Z", "tenant_id": "acme", "kind": "manual",
           "taken_at": "2026-11-21 10:15:02.5+00", "location": "/srv/backups/acme/acme-20261121T101500123456Z",
           "db_name": "t_acme", "plan_name": "basic-monthly", "bytes": 1048576, "manifest_sha256": "9f2c...",
           "removed_at": null, "restored_last": false}
drill:
  description: With C(state=drilled), the drill's record.
  returned: with C(state=drilled)
  type: dict
  sample: {"id": 7, "tenant_id": "acme", "backup_id": "acme-20261121T101500123456Z",
           "drilled_at": "2026-11-22 03:00:05.1+00", "seconds": 4.2, "passed": true,
           "detail": "restored 12 tables from backup acme-20261121T101500123456Z"}
point_in_time:
  description: Reading with I(at), C(since) (text), C(reachable) (bool) and C(filestore_backup) (a backup or null),
    as I(at) says.
  returned: with I(at)
  type: dict
  sample: {"since": "2026-11-21 10:15:00.1+00", "reachable": true, "filestore_backup": null}
expired:
  description: Reading with I(keep), the tenant's backups retention no longer keeps (see I(keep)), newest first,
    each with the fields of C(backup) (no C(restored_last)); an empty list otherwise.
  returned: success
  type: list
  elements: dict
kept:
  description: Reading with I(keep), the tenant's manual and final backups not removed that retention keeps, newest
    first, each with the fields of C(backup) (no C(restored_last)); an empty list otherwise.
  returned: success
  type: list
  elements: dict
removed:
  description: With C(state=absent), the ids of the backups recorded as removed by this run.
  returned: success
  type: list
  elements: str
restore:
  description: With C(state=restored), the restore's row (null otherwise).
  returned: success
  type: dict
  sample: {"id": 12, "tenant_id": "acme-copy", "backup_id": "acme-20261121T101500123456Z",
           "restored_at": "2026-11-21 11:02:07.1+00", "forced": false}
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.saasodoo.platform.plugins.module_utils.registry import (
    REGISTRY_LOGIN_OPTIONS,
    connect_registry,
    run_registry_module,
)
from ansible_collections.saasodoo.platform.plugins.module_utils.registry_backups import (
    BackupError,
    backup_to_restore,
    expired_backups,
    kept_backups,
    mark_removed,
    point_in_time_reach,
    record_backup,
    record_drill,
    record_restore,
)


def run_module(module: AnsibleModule) -> dict:
    p = module.params
    tenant_id, state = p["tenant_id"], p["state"]
    result: dict = dict(changed=False, expired=[], kept=[], removed=[], restore=None)
    with connect_registry(p) as conn, conn.transaction(force_rollback=module.check_mode):
        if state == "present":
            backup = {
                "backup_id": p["backup_id"],
                "tenant_id": tenant_id,
                **{fact: p[fact] for fact in ("kind", "location", "db_name", "plan_name", "bytes", "manifest_sha256")},
            }
            result["changed"], result["backup"] = record_backup(conn, backup, p["actor"])
        elif state == "absent":
            result["removed"] = mark_removed(conn, tenant_id, p["backup_ids"])
            result["changed"] = bool(result["removed"])
        elif state == "restored":
            result["changed"], result["backup"], result["restore"] = record_restore(
                conn, tenant_id, p["backup_id"], p["forced"], p["actor"]
            )
        elif state == "drilled":
            result["drill"] = record_drill(
                conn, tenant_id, p["backup_id"] or None, p["drill_passed"], p["drill_seconds"], p["drill_detail"],
                p["actor"],
            )  # fmt: skip
            result["changed"] = True
        else:
            result["backup"] = backup_to_restore(conn, tenant_id, p["backup_id"], p["from_tenant"])
            if p["at"]:
                result["point_in_time"] = point_in_time_reach(conn, tenant_id, p["at"])
            if p["keep"] is not None:
                # A count templated from a plan may arrive as its text.
                keep = int(p["keep"]) if isinstance(p["keep"], str) and p["keep"].isdigit() else p["keep"]
                result["expired"] = expired_backups(conn, tenant_id, keep)
                result["kept"] = kept_backups(conn, tenant_id, result["expired"])
    return result


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            tenant_id=dict(type="str", required=True),
            state=dict(type="str", choices=["present", "absent", "restored", "drilled"]),
            drill_passed=dict(type="bool"),
            drill_seconds=dict(type="float"),
            drill_detail=dict(type="str"),
            backup_id=dict(type="str"),
            from_tenant=dict(type="str"),
            at=dict(type="str"),
            keep=dict(type="raw"),
            kind=dict(type="str", choices=["manual", "final", "point_in_time"], default="manual"),
            location=dict(type="str"),
            db_name=dict(type="str"),
            plan_name=dict(type="str"),
            bytes=dict(type="int"),
            manifest_sha256=dict(type="str"),
            backup_ids=dict(type="list", elements="str"),
            forced=dict(type="bool", default=False),
            actor=dict(type="str", default="registry_backup"),
            **REGISTRY_LOGIN_OPTIONS,
        ),
        required_if=[
            ("state", "present", ("backup_id", "location", "db_name", "plan_name", "bytes", "manifest_sha256")),
            ("state", "absent", ("backup_ids",)),
            ("state", "restored", ("backup_id",)),
            ("state", "drilled", ("drill_passed", "drill_seconds", "drill_detail")),
        ],
        supports_check_mode=True,
    )
    tenant_id = module.params["tenant_id"]
    run_registry_module(
        module, run_module, f"registry error for the backups of tenant {tenant_id}",
        refusals=(BackupError, ValueError), tenant_id=tenant_id,
    )  # fmt: skip


if __name__ == "__main__":
    main()
