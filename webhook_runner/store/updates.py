"""Rollouts of the platform's Odoo build to its tenants (registry.odoo_updates, migration 0029): `canary` tenants
first, then `batch` at a time, each a tenant_update.yml job in its tenant's account (the build is the inventory's
saasodoo_odoo_build, which that playbook reads for the canary; the batches are given the build the canary got, even
if the inventory names another meanwhile). A failed update pauses the rollout, naming it; a resume goes on with
the tenants not tried yet, and a failure no pause has named yet pauses it again. A tenant no Kill Bill account names
gets no job: the rollout lists it, for an operator. Active tenants only: a suspended one's database refuses its
login, and its resume starts the build it is at."""

from __future__ import annotations

import psycopg

from ansible_collections.saasodoo.platform.plugins.module_utils.audit import record_audit

from .inbox import NOTIFY_CHANNEL
from .jobs import OPERATOR_ACTIONS, insert_job

UPDATE_ACTION = "update"
# The tenants a rollout updates, oldest first (the canary is the platform's longest-served tenants).
_ELIGIBLE = "t.status = 'active'"
_COLUMNS = "id, canary, batch, state, reason, acknowledged, build, created_at, state_since, finished_at"
_TRIED = ("succeeded", "parked", "failed", "skipped")


def _audit(conn: psycopg.Connection, update_id: int, detail: dict, actor: str = "webhook_runner", tenant_id=None):
    subject = f"odoo_update:{update_id}"
    record_audit(conn, actor=actor, tenant_id=tenant_id, kind="odoo_update", subject=subject, detail=detail)


def _open_update(conn: psycopg.Connection, lock: bool = False) -> dict | None:
    return conn.execute(
        f"SELECT {_COLUMNS} FROM registry.odoo_updates WHERE state <> 'finished'" + (" FOR UPDATE" if lock else "")
    ).fetchone()


def start_update(conn: psycopg.Connection, canary: int, batch: int) -> tuple[dict | None, int, str]:
    """POST /odoo-update: a new rollout, recorded in the audit trail; or why not (an HTTP status and a message)."""
    with conn.transaction():
        conn.execute("LOCK TABLE registry.odoo_updates IN SHARE ROW EXCLUSIVE MODE")  # two POSTs: one rollout
        current = _open_update(conn)
        if current is not None:
            return None, 409, f"update {current['id']} is {current['state']}: resume it or let it finish first"
        row = conn.execute(
            f"INSERT INTO registry.odoo_updates (canary, batch) VALUES (%s, %s) RETURNING {_COLUMNS}", (canary, batch)
        ).fetchone()
        _audit(conn, row["id"], {"state": "running", "canary": canary, "batch": batch}, "webhook_runner admin")
        conn.execute(f"NOTIFY {NOTIFY_CHANNEL}")
    return row, 202, ""


def set_update_state(conn: psycopg.Connection, state: str) -> tuple[dict | None, int, str]:
    """POST /odoo-update/pause (state paused) or /resume (running): the open rollout's new state, or why not."""
    with conn.transaction():
        current = _open_update(conn, lock=True)
        if current is None:
            return None, 404, "no update is open: POST /odoo-update starts one"
        if current["state"] == state:
            return current, 200, ""
        reason = "paused by an operator" if state == "paused" else "resumed by an operator"
        row = conn.execute(
            f"""UPDATE registry.odoo_updates SET state = %s, reason = %s, state_since = now() WHERE id = %s
                RETURNING {_COLUMNS}""",
            (state, reason, current["id"]),
        ).fetchone()
        _audit(conn, row["id"], {"state": state}, "webhook_runner admin")
        conn.execute(f"NOTIFY {NOTIFY_CHANNEL}")
    return row, 200, ""


def update_view(conn: psycopg.Connection) -> dict | None:
    """GET /odoo-update: the newest rollout and its progress: the tenants it covers, updated, failed (with their
    job and error), queued or running, and those no account names."""
    update = conn.execute(f"SELECT {_COLUMNS} FROM registry.odoo_updates ORDER BY id DESC LIMIT 1").fetchone()
    if update is None:
        return None
    jobs = _jobs(conn, update["id"])
    updated = sorted({job["tenant_id"] for job in jobs if job["state"] == "succeeded"})
    failed = [
        {"tenant_id": job["tenant_id"], "job": job["id"], "state": job["state"], "error": job["error"]}
        for job in jobs
        if job["state"] in ("parked", "failed") and job["tenant_id"] not in updated
    ]
    counts = conn.execute(
        f"""SELECT count(*) FILTER (WHERE t.customer_id IS NOT NULL) AS tenants,
                   coalesce(array_agg(t.tenant_id ORDER BY t.tenant_id) FILTER (WHERE t.customer_id IS NULL), '{{}}')
                       AS unowned
              FROM registry.tenants AS t WHERE {_ELIGIBLE}"""
    ).fetchone()
    return {
        **update,
        "tenants": counts["tenants"],
        "updated": len(updated),
        "failed": failed,
        "queued": [job["tenant_id"] for job in jobs if job["state"] == "queued"],
        "running": [job["tenant_id"] for job in jobs if job["state"] == "running"],
        "unowned": counts["unowned"],
    }


def _jobs(conn: psycopg.Connection, update_id: int) -> list[dict]:
    return conn.execute(
        "SELECT id, tenant_id, state, error FROM registry.jobs WHERE odoo_update = %s ORDER BY id",
        (update_id,),
    ).fetchall()


def advance_update(conn: psycopg.Connection) -> list[str]:
    """One step of the running rollout (the upkeep pass, one worker at a time): pause it at the failures no pause
    has named yet, naming them; else, once its jobs have ended, queue the next tenants (the canary first, then a
    batch); finish it when none is left. What it did, one line each."""
    with conn.transaction():
        update = _open_update(conn, lock=True)
        if update is None or update["state"] != "running":
            return []
        uid, jobs = update["id"], _jobs(conn, update["id"])
        failures = [
            job for job in jobs if job["state"] in ("parked", "failed") and job["id"] not in update["acknowledged"]
        ]
        if failures:
            reason = "; ".join(
                f"tenant {job['tenant_id']}'s update failed (job {job['id']}, {job['state']}): "
                f"{(job['error'] or '').strip().splitlines()[0] if job['error'] else 'see the job'}"
                for job in failures
            )
            conn.execute(
                """UPDATE registry.odoo_updates SET state = 'paused', reason = %s, state_since = now(),
                          acknowledged = acknowledged || %s WHERE id = %s""",
                (reason, [job["id"] for job in failures], uid),
            )
            _audit(conn, uid, {"state": "paused", "reason": reason, "jobs": [job["id"] for job in failures]})
            return [f"update {uid} paused: {reason}"]
        if any(job["state"] in ("queued", "running") for job in jobs):
            return []
        tried = sorted({job["tenant_id"] for job in jobs if job["state"] in _TRIED})
        size = update["batch"] if jobs else update["canary"]
        due = conn.execute(
            f"""SELECT t.tenant_id, t.customer_id FROM registry.tenants AS t
                 WHERE {_ELIGIBLE} AND t.customer_id IS NOT NULL AND t.tenant_id <> ALL(%s)
                 ORDER BY t.created_at, t.tenant_id LIMIT %s""",
            (tried, size),
        ).fetchall()
        if not due:
            updated = len({job["tenant_id"] for job in jobs if job["state"] == "succeeded"})
            reason = f"{updated} tenants updated, {len(tried) - updated} not"
            conn.execute(
                """UPDATE registry.odoo_updates SET state = 'finished', reason = %s, state_since = now(),
                          finished_at = now() WHERE id = %s""",
                (reason, uid),
            )
            _audit(conn, uid, {"state": "finished", "reason": reason})
            return [f"update {uid} finished: {reason}"]
        step = "canary" if not jobs else "batch"
        build = update["build"]
        if jobs and build is None:  # the build the canary was updated to: the one every batch gets
            canary = conn.execute(
                """SELECT t.odoo_build FROM registry.jobs AS j JOIN registry.tenants AS t USING (tenant_id)
                    WHERE j.odoo_update = %s AND j.state = 'succeeded' ORDER BY j.id LIMIT 1""",
                (uid,),
            ).fetchone()
            build = canary["odoo_build"] if canary else None  # none succeeded: the inventory's, as for the canary
            conn.execute("UPDATE registry.odoo_updates SET build = %s WHERE id = %s", (build, uid))
        extravars = {"build": build} if build else {}
        for tenant in due:
            job = insert_job(
                conn, account=tenant["customer_id"], tenant_id=tenant["tenant_id"], event_id=None,
                action=UPDATE_ACTION, playbook=OPERATOR_ACTIONS[UPDATE_ACTION],
                extravars={"tenant_id": tenant["tenant_id"], **extravars}, state="queued",
                reason=f"odoo update {uid}: {step} of {len(due)}",
            )  # fmt: skip
            conn.execute("UPDATE registry.jobs SET odoo_update = %s WHERE id = %s", (uid, job["id"]))
        conn.execute(f"NOTIFY {NOTIFY_CHANNEL}")
        return [f"update {uid}: {step} of {len(due)} queued ({', '.join(t['tenant_id'] for t in due)})"]
