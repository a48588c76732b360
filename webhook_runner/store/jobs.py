"""The jobs: queued, started, limited, retried, parked, finished."""

from __future__ import annotations

import psycopg
from psycopg.types.json import Jsonb

from ..schedules import TENANT_ACTIONS
from .inbox import LIMIT_LOCK

RECOVER_MOVE = "recover_move"  # a job finishing or rolling back a move no run finishes (the recovery pass queues it)
# What an operator asks of a tenant through the admin API, queued in its account: its Odoo restarted, stopped or
# started (POST /tenants/<id>/odoo), its Odoo updated to the platform's build (a rollout, store/updates.py).
OPERATOR_ACTIONS = {"odoo": "tenant_restart.yml", "update": "tenant_update.yml"}
ODOO_STATES = ("restarted", "stopped", "started")
# Jobs an account's worker runs whatever Kill Bill says: a move's recovery, what a tenant schedule queued
# (webhook_runner/schedules.py) and what an operator asked for.
CHORES = (RECOVER_MOVE, *TENANT_ACTIONS, *OPERATOR_ACTIONS)

JOB_COLUMNS = (
    "id, tenant_id, account_id, event_id, action, playbook, extravars, state, attempts, run_after, created_at,"
    " started_at, finished_at, rc, error, reason, worker, artifacts_dir, db_server, waiting_for, waits"
)


# -- jobs --------------------------------------------------------------------------------------------------


def requeue_orphans(conn: psycopg.Connection, account: str, max_attempts: int) -> list[dict]:
    """Jobs left 'running' by a worker that died: the caller holds the account's lease, so nobody runs them. Each
    such run was an attempt: a job that has had its `max_attempts` (one that kills its worker) is parked."""
    return conn.execute(
        f"""UPDATE registry.jobs
               SET state = CASE WHEN attempts >= %(max)s THEN 'parked' ELSE 'queued' END, run_after = now(),
                   finished_at = CASE WHEN attempts >= %(max)s THEN now() END,
                   error = 'the worker running it stopped (' || coalesce(worker, '?') || ') during attempt '
                           || attempts || CASE WHEN attempts >= %(max)s THEN ': parked' ELSE ': run again' END
             WHERE account_id = %(account)s AND state = 'running' RETURNING {JOB_COLUMNS}""",
        {"account": account, "max": max_attempts},
    ).fetchall()


def park_due_jobs(conn: psycopg.Connection, account: str, error: str) -> list[int]:
    """The account's due queued jobs (and the one its failed pass left running), parked with the error: replayed
    by hand once it is understood. The caller holds the account's lease."""
    rows = conn.execute(
        """UPDATE registry.jobs SET state = 'parked', error = %s, finished_at = now(), waiting_for = NULL
            WHERE coalesce(account_id, '') = %s AND (state = 'running' OR state = 'queued' AND run_after <= now())
            RETURNING id""",
        (error, account),
    ).fetchall()
    return [row["id"] for row in rows]


def stuck_moves(conn: psycopg.Connection, seconds: float) -> list[dict]:
    """Open moves no run holds (db_migrate holds the tenant's move lock while it runs, the playbook run the tenant
    while it lives) whose current phase began over `seconds` ago, or that are rolled back but left open (a logical
    move undone after its block once its run was gone: the tenant's runtime may point at the dropped target),
    with their tenant's Kill Bill account and whether a recovery job is open for it already."""
    return conn.execute(
        """SELECT m.id, m.tenant_id, m.phase, m.plan_name, m.source_server, m.target_server, m.since,
                  t.customer_id AS account_id,
                  EXISTS (SELECT 1 FROM registry.jobs AS j WHERE j.tenant_id = m.tenant_id AND j.action = %(action)s
                             AND j.state IN ('queued', 'running', 'parked')) AS queued
             FROM (SELECT *, greatest(started_at, (phase_history -> -1 ->> 'at')::timestamptz) AS since
                     FROM registry.migrations WHERE finished_at IS NULL) AS m
             JOIN registry.tenants AS t USING (tenant_id)
            WHERE (m.since < now() - make_interval(secs => %(seconds)s) OR m.phase = 'rolled_back')
              AND NOT registry.move_is_held(m.tenant_id)
              AND NOT registry.tenant_run_is_alive(m.tenant_id)
            ORDER BY m.id""",
        {"seconds": seconds, "action": RECOVER_MOVE},
    ).fetchall()


def due_chores(conn: psycopg.Connection, account: str, actions) -> list[dict]:
    """The account's due jobs of these CHORES, in the order they were queued."""
    return conn.execute(
        f"""SELECT {JOB_COLUMNS} FROM registry.jobs
             WHERE account_id = %s AND action = ANY(%s) AND state = 'queued' AND run_after <= now() ORDER BY id""",
        (account, list(actions)),
    ).fetchall()


def open_jobs(conn: psycopg.Connection, account: str) -> list[dict]:
    """The account's queued (retry pending) and parked jobs."""
    return conn.execute(
        f"SELECT {JOB_COLUMNS} FROM registry.jobs WHERE account_id = %s AND state IN ('queued', 'parked') ORDER BY id",
        (account,),
    ).fetchall()


def has_due_job(conn: psycopg.Connection, account: str) -> bool:
    return bool(
        conn.execute(
            "SELECT 1 FROM registry.jobs WHERE account_id = %s AND state = 'queued' AND run_after <= now()", (account,)
        ).fetchone()
    )


def insert_job(
    conn, *, account, tenant_id, event_id, action, playbook, extravars, state, reason, worker=None, db_server=None
) -> dict:
    """A new job: 'running' (attempt 1, started now), 'queued' (for a worker to pick up) or 'skipped' (done)."""
    return conn.execute(
        f"""INSERT INTO registry.jobs (account_id, tenant_id, event_id, action, playbook, extravars, state, reason,
                                       worker, db_server, attempts, started_at, finished_at)
            VALUES (%(account)s, %(tenant)s, %(event)s, %(action)s, %(playbook)s, %(extravars)s, %(state)s,
                    %(reason)s, %(worker)s, %(db_server)s, CASE WHEN %(state)s = 'running' THEN 1 ELSE 0 END,
                    CASE WHEN %(state)s = 'running' THEN now() END, CASE WHEN %(state)s = 'skipped' THEN now() END)
            RETURNING {JOB_COLUMNS}""",
        {"account": account, "tenant": tenant_id, "event": event_id, "action": action, "playbook": playbook,
         "extravars": Jsonb(extravars), "state": state, "reason": reason, "worker": worker, "db_server": db_server},
    ).fetchone()  # fmt: skip


def start_job(conn, job_id: int, worker: str, extravars: dict, reason: str, db_server: str | None = None) -> dict:
    """An existing queued job running again: one more attempt."""
    return conn.execute(
        f"""UPDATE registry.jobs SET state = 'running', attempts = attempts + 1, started_at = now(),
                   finished_at = NULL, rc = NULL, worker = %s, extravars = %s, reason = %s, db_server = %s,
                   waiting_for = NULL
             WHERE id = %s RETURNING {JOB_COLUMNS}""",
        (worker, Jsonb(extravars), reason, db_server, job_id),
    ).fetchone()


def tenant_server(conn, tenant_id: str | None) -> str | None:
    """The tenant's database server now (None for a tenant not placed yet)."""
    row = conn.execute("SELECT db_server FROM registry.tenants WHERE tenant_id = %s", (tenant_id,)).fetchone()
    return row["db_server"] if row else None


def reads_waiting(conn, account: str, actions) -> bool:
    """Whether a queued job of these actions (a read of the account again) waits for the account."""
    return bool(
        conn.execute(
            "SELECT 1 FROM registry.jobs WHERE account_id = %s AND action = ANY(%s) AND state = 'queued'",
            (account, list(actions)),
        ).fetchone()
    )


def account_tenant_ids(conn, account: str) -> frozenset[str]:
    """The tenants a Kill Bill account has or had (purged ones too): one trial per customer counts them."""
    rows = conn.execute("SELECT tenant_id FROM registry.tenants WHERE customer_id = %s", (account,)).fetchall()
    return frozenset(row["tenant_id"] for row in rows)


def notified_write_off_tags(conn, account: str) -> frozenset[str]:
    """The ids of the WRITTEN_OFF tags Kill Bill told the runner of for the account (TAG_CREATION events in the
    inbox, kept for retention_days): write-offs made while the platform listens, not an account's older history."""
    rows = conn.execute(
        "SELECT object_id FROM registry.events WHERE account_id = %s AND event_type = 'TAG_CREATION'"
        " AND meta_data->>'tagDefinitionName' = 'WRITTEN_OFF' AND object_id IS NOT NULL",
        (account,),
    ).fetchall()
    return frozenset(row["object_id"] for row in rows)


def trial_claim(conn, email_hash: str) -> dict | None:
    """The account and tenant that had the trial of the e-mail address of this keyed hash, if any."""
    return conn.execute(
        "SELECT account_id, tenant_id FROM registry.trial_claims WHERE email_hash = %s", (email_hash,)
    ).fetchone()


def claim_trial(conn, email_hash: str, account: str, tenant_id: str) -> dict:
    """The address's trial for this account and tenant unless another has it (one row per address: two accounts
    converging at once cannot both take it); who has it now."""
    conn.execute(
        "INSERT INTO registry.trial_claims (email_hash, account_id, tenant_id) VALUES (%s, %s, %s)"
        " ON CONFLICT (email_hash) DO NOTHING",
        (email_hash, account, tenant_id),
    )
    return trial_claim(conn, email_hash)


def tenant_status(conn, tenant_id: str | None) -> str | None:
    row = conn.execute("SELECT status FROM registry.tenants WHERE tenant_id = %s", (tenant_id,)).fetchone()
    return row["status"] if row else None


def running_jobs(conn, action: str, server: str | None) -> int:
    """Jobs of `action` running on `server` (None: for tenants not placed when they started)."""
    return conn.execute(
        "SELECT count(*) AS n FROM registry.jobs WHERE state = 'running' AND action = %s"
        " AND db_server IS NOT DISTINCT FROM %s",
        (action, server),
    ).fetchone()["n"]


def still_held_back(conn, account: str, limits: dict, wait_seconds: float) -> bool:
    """Whether every due job of the account is one a limit held back and that limit still binds; then they wait
    again, and the account's pass ends before reading Kill Bill (a waiting tenant costs one count per try)."""
    due = conn.execute(
        """SELECT id, action, tenant_id, waiting_for FROM registry.jobs
            WHERE account_id = %s AND state = 'queued' AND run_after <= now()""",
        (account,),
    ).fetchall()
    if not due or any(job["waiting_for"] is None or job["action"] not in limits for job in due):
        return False
    for job in due:
        if running_jobs(conn, job["action"], tenant_server(conn, job["tenant_id"])) < limits[job["action"]]:
            return False
    conn.execute(
        "UPDATE registry.jobs SET run_after = now() + make_interval(secs => %s), waits = waits + 1 WHERE id = ANY(%s)",
        (wait_seconds, [job["id"] for job in due]),
    )
    return True


def start_within_limit(conn, *, limit: int | None, wait_seconds: float, queued: dict | None, new: dict) -> dict:
    """Start a job (the queued one, else a new one from `new`: insert_job's arguments) unless `limit` jobs of its
    action already run on its tenant's server; then it waits, queued, with `waiting_for` saying why. The count and
    the start are one transaction under the limit's lock, so two workers never both take the last place."""
    action, tenant_id, worker = new["action"], new["tenant_id"], new["worker"]
    with conn.transaction():
        server = tenant_server(conn, tenant_id)
        if limit is not None:
            conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (LIMIT_LOCK, f"{action} {server}"))
            running = running_jobs(conn, action, server)
            if running >= limit:
                waiting = f"{action} limit on {server or 'new tenants'}: {running} of {limit} running"
                job = queued or insert_job(conn, **{**new, "state": "queued", "worker": None})
                return conn.execute(
                    f"""UPDATE registry.jobs SET waiting_for = %s, waits = waits + 1, extravars = %s, reason = %s,
                               run_after = now() + make_interval(secs => %s)
                         WHERE id = %s RETURNING {JOB_COLUMNS}""",
                    (waiting, Jsonb(new["extravars"]), new["reason"], wait_seconds, job["id"]),
                ).fetchone()
        if queued:
            return start_job(conn, queued["id"], worker, new["extravars"], new["reason"], server)
        return insert_job(conn, **{**new, "state": "running", "db_server": server})


def finish_job(conn, job_id: int, *, state: str, rc=None, error=None, run_after_seconds=0.0, artifacts_dir=None):
    """Close a run: succeeded or parked, or back to 'queued' to be retried after a backoff."""
    return conn.execute(
        f"""UPDATE registry.jobs SET state = %s, rc = %s, error = %s,
                   finished_at = CASE WHEN %s = 'queued' THEN NULL ELSE now() END,
                   run_after = now() + make_interval(secs => %s),
                   artifacts_dir = coalesce(%s, artifacts_dir)
             WHERE id = %s RETURNING {JOB_COLUMNS}""",
        (state, rc, error, state, run_after_seconds, artifacts_dir, job_id),
    ).fetchone()


def close_job(conn, job_id: int, state: str, reason: str) -> None:
    """A queued or parked job Kill Bill's state made moot: done already, or superseded."""
    conn.execute(
        "UPDATE registry.jobs SET state = %s, reason = %s, finished_at = now(), waiting_for = NULL WHERE id = %s",
        (state, reason, job_id),
    )


def replay_job(conn, job_id: int) -> dict | None:
    """A parked (or failed) job of an account back in the queue, its attempts reset; None when it is not one (a
    periodic pass's job, which has no account, runs again at the next pass)."""
    return conn.execute(
        f"""UPDATE registry.jobs SET state = 'queued', attempts = 0, run_after = now(), finished_at = NULL,
                   waiting_for = NULL
             WHERE id = %s AND state IN ('parked', 'failed') AND account_id IS NOT NULL RETURNING {JOB_COLUMNS}""",
        (job_id,),
    ).fetchone()


def get_job(conn, job_id: int) -> dict | None:
    return conn.execute(f"SELECT {JOB_COLUMNS} FROM registry.jobs WHERE id = %s", (job_id,)).fetchone()


def list_jobs(conn, *, state=None, tenant_id=None, limit=100) -> list[dict]:
    return conn.execute(
        f"""SELECT {JOB_COLUMNS} FROM registry.jobs
             WHERE (%(state)s::text IS NULL OR state = %(state)s)
               AND (%(tenant)s::text IS NULL OR tenant_id = %(tenant)s)
             ORDER BY id DESC LIMIT %(limit)s""",
        {"state": state, "tenant": tenant_id, "limit": limit},
    ).fetchall()
