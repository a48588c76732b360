"""A tenant's backups and restores in the registry (module registry_backup): what is kept, what retention
removes, which backup a restore takes, and the record (with its audit row) of each backup and restore.

Every function takes an open psycopg connection; the caller holds the transaction.
"""

from __future__ import annotations

from datetime import UTC

from ansible_collections.saasodoo.platform.plugins.module_utils.audit import record_audit

try:
    from psycopg.rows import dict_row
except ImportError:  # reported by the module with missing_required_lib
    dict_row = None

BACKUP_COLUMNS = (
    "b.backup_id, b.tenant_id, b.kind, b.taken_at::text AS taken_at, b.location, b.db_name, b.plan_name, b.bytes,"
    " b.manifest_sha256, b.removed_at::text AS removed_at"
)

# The facts a backup is recorded with; recording it again with the same ones changes nothing.
RECORDED_FACTS = ("tenant_id", "kind", "location", "db_name", "plan_name", "bytes", "manifest_sha256")


class BackupError(Exception):
    """A request the registry refuses; the message names the backup or tenant and what to do."""


def _rows(conn, query: str, params) -> list[dict]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(query, params).fetchall()


def read_backup(conn, backup_id: str) -> dict | None:
    """The backup's row, removed or not; None for an unknown id."""
    rows = _rows(
        conn,
        f"SELECT {BACKUP_COLUMNS} FROM registry.backups AS b WHERE b.backup_id = %s",  # noqa: S608 - fixed columns
        (backup_id,),
    )
    return rows[0] if rows else None


def last_restored(conn, tenant_id: str) -> str | None:
    """The backup the tenant was restored from last, if it ever was."""
    row = conn.execute(
        "SELECT backup_id FROM registry.restores WHERE tenant_id = %s ORDER BY id DESC LIMIT 1", (tenant_id,)
    ).fetchone()
    return row[0] if row else None


def backup_to_restore(conn, tenant_id: str, backup_id: str | None, from_tenant: str | None) -> dict | None:
    """The backup a restore into tenant_id takes: backup_id (any tenant's), or else the newest whole backup of
    from_tenant (default: tenant_id itself; a point-in-time one holds no filestore); never a removed one.
    restored_last says whether tenant_id was last restored from it. None when there is no such backup."""
    if backup_id:
        where, params = "b.backup_id = %s", (backup_id,)
    else:
        where, params = "b.tenant_id = %s AND b.kind <> 'point_in_time'", (from_tenant or tenant_id,)
    rows = _rows(
        conn,
        f"SELECT {BACKUP_COLUMNS} FROM registry.backups AS b WHERE b.removed_at IS NULL AND {where}"  # noqa: S608
        " ORDER BY b.taken_at DESC, b.backup_id DESC LIMIT 1",
        params,
    )
    if not rows:
        return None
    return {**rows[0], "restored_last": rows[0]["backup_id"] == last_restored(conn, tenant_id)}


GFS_PERIODS = {  # backup_keep's keys: the period each newest backup stands for, from its taken_at
    "daily": lambda taken: taken.date(),
    "weekly": lambda taken: taken.isocalendar()[:2],
    "monthly": lambda taken: (taken.year, taken.month),
}


def retention_problem(keep) -> str | None:
    """What is wrong with a plan's backup_keep, or None: a count of newest backups, or GFS counts
    {daily, weekly, monthly} (each 0 or more, at least one given)."""
    if isinstance(keep, bool):
        return f"backup_keep must be a count or {{daily, weekly, monthly}} counts, not {keep!r}"
    if isinstance(keep, int):
        return None if keep >= 0 else f"backup_keep must be 0 or more, not {keep}"
    if not isinstance(keep, dict) or not keep or set(keep) - set(GFS_PERIODS):
        return (
            f"backup_keep must be a count of newest backups or counts per period ({', '.join(GFS_PERIODS)}), "
            f"not {keep!r}"
        )
    # bool is an int to isinstance; a count must be a real whole number
    bad = [f"{p}={n!r}" for p, n in keep.items() if isinstance(n, bool) or not isinstance(n, int) or n < 0]
    if bad:
        return f"backup_keep counts must be whole numbers, 0 or more: {', '.join(bad)}"
    return None if any(keep.values()) else f"backup_keep {keep!r} keeps no backup: give one count above 0"


def kept_ids(backups: list[dict], keep) -> set[str]:
    """Of `backups` (newest first, taken_at a datetime), the ids `keep` keeps: its count of newest ones; or, GFS, the
    newest backup of each of the `daily` latest days with a backup, of each of the `weekly` latest ISO weeks and of
    each of the `monthly` latest months (one backup may stand for all three). Days, weeks and months are taken_at's
    own (expired_backups gives UTC)."""
    if isinstance(keep, int):
        return {backup["backup_id"] for backup in backups[:keep]}
    kept: set[str] = set()
    for period, count in keep.items():
        newest_of_period: dict = {}
        for backup in backups:
            newest_of_period.setdefault(GFS_PERIODS[period](backup["taken_at"]), backup["backup_id"])
        kept.update(list(newest_of_period.values())[:count])
    return kept


def point_in_time_reach(conn, tenant_id: str, at: str) -> dict:
    """Whether the tenant's database can be brought back to `at` from its current server's archive: {'since': when
    its database came onto that server in its current life (its latest placement, or the end of its latest move
    there), 'reachable': `at` is not before that, 'filestore_backup': the newest whole backup taken by then, or
    None}. Before `since`, the database was another server's, or another life's (a purged tenant provisioned
    anew), or a move's copy in the making."""
    row = _rows(
        conn,
        "SELECT since::text AS since, %(at)s::timestamptz >= since AS reachable FROM ("
        " SELECT greatest("
        "  (SELECT max(p.decided_at) FROM registry.placements AS p WHERE p.tenant_id = t.tenant_id),"
        "  (SELECT max(m.finished_at) FROM registry.migrations AS m WHERE m.tenant_id = t.tenant_id"
        "    AND m.target_server = t.db_server AND m.phase = 'done')) AS since"
        " FROM registry.tenants AS t WHERE t.tenant_id = %(tenant)s) AS s",
        {"at": at, "tenant": tenant_id},
    )
    if not row or row[0]["since"] is None:
        raise BackupError(f"tenant {tenant_id!r} has no placement on record: there is no moment to go back to")
    # Odoo deletes the file of an attachment unlinked since (its file store's garbage collection): the newest whole
    # backup taken before the moment has the files the database of that moment names, as far as any backup does.
    filestore = _rows(
        conn,
        f"SELECT {BACKUP_COLUMNS} FROM registry.backups AS b WHERE b.tenant_id = %s"  # noqa: S608 - fixed columns
        " AND b.kind IN ('manual', 'final') AND b.removed_at IS NULL AND b.taken_at <= %s::timestamptz"
        " ORDER BY b.taken_at DESC, b.backup_id DESC LIMIT 1",
        (tenant_id, at),
    )
    return {**row[0], "filestore_backup": filestore[0] if filestore else None}


def expired_backups(conn, tenant_id: str, keep) -> list[dict]:
    """The tenant's backups not yet removed that retention no longer keeps, newest first: manual ones beyond what
    the plan's `keep` (retention_problem) keeps, and point-in-time ones but the newest (a restore's record, kept for
    its audit and until the next). Final backups (tenant_terminate.yml) are never among them: they stay until the
    purge."""
    problem = retention_problem(keep)
    if problem:
        raise BackupError(problem)
    backups = _rows(
        conn,
        f"SELECT {BACKUP_COLUMNS}, b.taken_at AS taken FROM registry.backups AS b"  # noqa: S608 - fixed columns
        " WHERE b.tenant_id = %s AND b.kind IN ('manual', 'point_in_time') AND b.removed_at IS NULL"
        " ORDER BY b.taken_at DESC, b.backup_id DESC",
        (tenant_id,),
    )
    manual = [{**b, "taken_at": b["taken"].astimezone(UTC)} for b in backups if b["kind"] == "manual"]
    kept = kept_ids(manual, keep) | {next((b["backup_id"] for b in backups if b["kind"] == "point_in_time"), None)}
    return [{k: v for k, v in backup.items() if k != "taken"} for backup in backups if backup["backup_id"] not in kept]


def kept_backups(conn, tenant_id: str, expired: list[dict]) -> list[dict]:
    """The tenant's manual and final backups not removed and not in `expired`, newest first: what should have a copy
    off site (tenant_backup.yml copies those that have none yet)."""
    gone = {backup["backup_id"] for backup in expired}
    backups = _rows(
        conn,
        f"SELECT {BACKUP_COLUMNS} FROM registry.backups AS b"  # noqa: S608 - fixed columns
        " WHERE b.tenant_id = %s AND b.kind IN ('manual', 'final') AND b.removed_at IS NULL"
        " ORDER BY b.taken_at DESC, b.backup_id DESC",
        (tenant_id,),
    )
    return [backup for backup in backups if backup["backup_id"] not in gone]


def audit(conn, actor: str, tenant_id: str, backup_id: str, detail: dict) -> None:
    record_audit(conn, actor=actor, tenant_id=tenant_id, kind="result", subject=f"backup:{backup_id}", detail=detail)


def differing_facts(recorded: dict, wanted: dict) -> list[str]:
    """The facts of an already recorded backup that differ from those asked for."""
    return [fact for fact in RECORDED_FACTS if recorded[fact] != wanted[fact]]


def record_backup(conn, backup: dict, actor: str) -> tuple[bool, dict]:
    """Records the backup (RECORDED_FACTS plus backup_id) and its audit row; (changed, its row). A backup
    already recorded with the same facts is left as it is; with other facts it is refused."""
    inserted = conn.execute(
        "INSERT INTO registry.backups (backup_id, tenant_id, kind, location, db_name, plan_name, bytes,"
        " manifest_sha256) VALUES (%(backup_id)s, %(tenant_id)s, %(kind)s, %(location)s, %(db_name)s,"
        " %(plan_name)s, %(bytes)s, %(manifest_sha256)s) ON CONFLICT (backup_id) DO NOTHING RETURNING backup_id",
        backup,
    ).fetchone()
    recorded = read_backup(conn, backup["backup_id"])
    if not inserted and recorded["removed_at"] and recorded["kind"] == backup["kind"] == "point_in_time":
        # The same moment asked for again after retention removed its dump: taken anew under its id.
        conn.execute(
            "UPDATE registry.backups SET location = %(location)s, bytes = %(bytes)s,"
            " manifest_sha256 = %(manifest_sha256)s, taken_at = now(), removed_at = NULL"
            " WHERE backup_id = %(backup_id)s AND tenant_id = %(tenant_id)s",
            backup,
        )
        inserted, recorded = True, read_backup(conn, backup["backup_id"])
    if not inserted:
        differing = differing_facts(recorded, backup)
        if differing:
            raise BackupError(
                f"backup {backup['backup_id']} is already recorded with another {', '.join(differing)}: "
                "a backup's record never changes; take a new backup (a new backup_id)"
            )
        return False, recorded
    audit(
        conn,
        actor,
        backup["tenant_id"],
        backup["backup_id"],
        {
            "action": "backup",
            "kind": backup["kind"],
            "bytes": backup["bytes"],
            "manifest_sha256": backup["manifest_sha256"],
        },
    )
    return True, recorded


def mark_removed(conn, tenant_id: str, backup_ids: list[str]) -> list[str]:
    """Records the tenant's backups among backup_ids as removed (their files deleted); the ids newly marked."""
    if not backup_ids:
        return []
    rows = conn.execute(
        "UPDATE registry.backups SET removed_at = now()"
        " WHERE tenant_id = %s AND backup_id = ANY(%s::text[]) AND removed_at IS NULL RETURNING backup_id",
        (tenant_id, list(backup_ids)),
    ).fetchall()
    return sorted(row[0] for row in rows)


def record_restore(conn, tenant_id: str, backup_id: str, forced: bool, actor: str) -> tuple[bool, dict, dict | None]:
    """Records that backup_id was restored into tenant_id, with its audit row; (changed, the backup, the
    restore's row). Every call is a restore that was done: whether one was wanted is the caller's question."""
    backup = read_backup(conn, backup_id)
    if backup is None:
        raise BackupError(f"unknown backup {backup_id!r}: the registry has no such backup to record a restore of")
    if conn.execute("SELECT 1 FROM registry.tenants WHERE tenant_id = %s", (tenant_id,)).fetchone() is None:
        raise BackupError(f"unknown tenant {tenant_id!r}: the registry has no such tenant to record a restore into")
    restore = _rows(
        conn,
        "INSERT INTO registry.restores (tenant_id, backup_id, forced) VALUES (%s, %s, %s)"
        " RETURNING id, tenant_id, backup_id, restored_at::text AS restored_at, forced",
        (tenant_id, backup_id, forced),
    )[0]
    detail = {"action": "restore", "from_tenant": backup["tenant_id"], "forced": forced}
    audit(conn, actor, tenant_id, backup_id, detail)
    return True, backup, restore


def record_drill(conn, tenant_id: str, backup_id: str | None, passed: bool, seconds: float, detail: str, actor: str):
    """Records a restore drill of tenant_id's backup_id (None: it had none) and its audit row; the drill's row."""
    drill = _rows(
        conn,
        "INSERT INTO registry.restore_drills (tenant_id, backup_id, passed, seconds, detail)"
        " VALUES (%s, %s, %s, %s, %s)"
        " RETURNING id, tenant_id, backup_id, drilled_at::text AS drilled_at, seconds, passed, detail",
        (tenant_id, backup_id, passed, seconds, detail),
    )[0]
    record_audit(
        conn, actor=actor, tenant_id=tenant_id, kind="result", subject=f"drill:{drill['id']}",
        detail={"action": "restore_drill", "backup_id": backup_id, "passed": passed, "seconds": seconds},
    )  # fmt: skip
    return drill
