"""Every query the runner makes on the registry (the inbox, jobs, tenants, audit): one home for its SQL."""

from __future__ import annotations

import json

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from .desired import Tenant
from .schedules import TENANT_ACTIONS

NOTIFY_CHANNEL = "saasodoo_runner"  # the webhook NOTIFYs it after each stored event; idle workers LISTEN
# pg_try_advisory_lock(class, key) classes: the periodic reconcile, housekeeping and recovery passes and each
# schedule's run (a pass a restart interrupts is simply run again); pg_advisory_xact_lock(class, key): one job
# limit's count-and-start. An account's convergence is held by a lease row instead (registry.account_leases),
# which a restart does not free.
RECONCILE_LOCK = 0x5A0E
HOUSEKEEPING_LOCK = 0x5A0F
LIMIT_LOCK = 0x5A10
RECOVERY_LOCK = 0x5A11
SCHEDULE_LOCK = 0x5A12  # held by the worker running a schedule's job, for its length (key: the schedule's name)

RECOVER_MOVE = "recover_move"  # a job finishing or rolling back a move no run finishes (the recovery pass queues it)
# What an operator asks of a tenant through the admin API, queued in its account: its Odoo restarted, stopped or
# started (POST /tenants/<id>/odoo).
OPERATOR_ACTIONS = {"odoo": "tenant_restart.yml"}
ODOO_STATES = ("restarted", "stopped", "started")
# Jobs an account's worker runs whatever Kill Bill says: a move's recovery, what a tenant schedule queued
# (webhook_runner/schedules.py) and what an operator asked for.
CHORES = (RECOVER_MOVE, *TENANT_ACTIONS, *OPERATOR_ACTIONS)

JOB_COLUMNS = (
    "id, tenant_id, account_id, event_id, action, playbook, extravars, state, attempts, run_after, created_at,"
    " started_at, finished_at, rc, error, reason, worker, artifacts_dir, db_server, waiting_for, waits"
)


def connect(conninfo: str, **kwargs) -> psycopg.Connection:
    return psycopg.connect(conninfo, autocommit=True, row_factory=dict_row, **kwargs)


# -- the inbox -------------------------------------------------------------------------------------------


def insert_event(conn: psycopg.Connection, body: str, event_type, object_type, object_id, account_id) -> int:
    """Store one notification (metaData decoded from the body by PostgreSQL, amounts kept exact)."""
    with conn.transaction():
        row = conn.execute(
            """INSERT INTO registry.events (event_type, object_type, object_id, account_id, meta_data, body)
               VALUES (%s, %s, %s, %s, (%s::jsonb ->> 'metaData')::jsonb, %s::jsonb) RETURNING id""",
            (event_type, object_type, object_id, account_id, body, body),
        ).fetchone()
        conn.execute(f"NOTIFY {NOTIFY_CHANNEL}")
    return row["id"]


def pending_accounts(conn: psycopg.Connection, limit: int = 50) -> list[str]:
    """Accounts with unprocessed events, a retry that is due, or a running job (its worker may have died: the
    account's lease tells, and the one who takes it requeues the job), oldest first ('' = events with no
    account); those with only a schedule's chores due (a backup, a purge) after every other, so that a daily
    wave of backups never holds up a customer's event."""
    rows = conn.execute(
        """SELECT account, min(chores_only::int), min(since) FROM (
               SELECT coalesce(account_id, '') AS account, min(received_at) AS since, false AS chores_only
                 FROM registry.events WHERE processed_at IS NULL GROUP BY 1
               UNION ALL
               SELECT account_id, min(run_after), action = ANY(%(chores)s)
                 FROM registry.jobs WHERE state = 'queued' AND run_after <= now() AND account_id IS NOT NULL
                GROUP BY account_id, action = ANY(%(chores)s)
               UNION ALL
               SELECT account_id, min(started_at), false
                 FROM registry.jobs WHERE state = 'running' AND account_id IS NOT NULL GROUP BY 1
           ) AS work GROUP BY account ORDER BY 2, 3 LIMIT %(limit)s""",
        {"limit": limit, "chores": list(TENANT_ACTIONS)},
    ).fetchall()
    return [row["account"] for row in rows]


def try_lock(conn: psycopg.Connection, lock_class: int, key: str) -> bool:
    return conn.execute("SELECT pg_try_advisory_lock(%s, hashtext(%s)) AS ok", (lock_class, key)).fetchone()["ok"]


def unlock(conn: psycopg.Connection, lock_class: int, key: str) -> None:
    conn.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))", (lock_class, key))


# -- account leases (migration 0013) ---------------------------------------------------------------------

FENCED = "SAF01"  # the SQLSTATE registry.lease_fence() raises for a write carrying a lease taken over since


def is_fenced(error: BaseException) -> bool:
    return isinstance(error, psycopg.Error) and error.sqlstate == FENCED


def take_lease(conn: psycopg.Connection, account: str, worker: str, seconds: float) -> int | None:
    """The account for `seconds`, with a new fencing token, unless another worker's lease has not expired."""
    row = conn.execute(
        """INSERT INTO registry.account_leases AS held (account_id, worker, token, expires_at)
           VALUES (%(account)s, %(worker)s, nextval('registry.lease_token_seq'),
                   now() + make_interval(secs => %(seconds)s))
           ON CONFLICT (account_id) DO UPDATE
                 SET worker = EXCLUDED.worker, token = EXCLUDED.token, taken_at = now(),
                     expires_at = EXCLUDED.expires_at
               WHERE held.expires_at < now()
           RETURNING token""",
        {"account": account, "worker": worker, "seconds": seconds},
    ).fetchone()
    return row["token"] if row else None


def renew_lease(conn: psycopg.Connection, token: int, seconds: float) -> bool:
    """Push the lease's expiry `seconds` ahead; False when another worker has taken the account over."""
    return bool(
        conn.execute(
            """UPDATE registry.account_leases SET expires_at = now() + make_interval(secs => %s)
                WHERE token = %s RETURNING 1""",
            (seconds, token),
        ).fetchone()
    )


def release_lease(conn: psycopg.Connection, token: int) -> None:
    conn.execute("DELETE FROM registry.account_leases WHERE token = %s", (token,))


def carry_lease(conn: psycopg.Connection, token: int | None) -> None:
    """Make every later write of this session carry the lease's token (None: carry none)."""
    conn.execute("SELECT set_config('saasodoo.lease', %s, false)", (str(token or ""),))


def unprocessed_events(conn: psycopg.Connection, account: str) -> list[dict]:
    return conn.execute(
        """SELECT id, event_type, object_type, object_id, meta_data FROM registry.events
            WHERE coalesce(account_id, '') = %s AND processed_at IS NULL ORDER BY id""",
        (account,),
    ).fetchall()


def mark_processed(conn: psycopg.Connection, event_ids: list[int], outcome: str) -> None:
    if event_ids:
        conn.execute(
            "UPDATE registry.events SET processed_at = now(), outcome = %s WHERE id = ANY(%s) AND processed_at IS NULL",
            (outcome, event_ids),
        )


# -- schedules (migration 0018, webhook_runner/schedules.py) ------------------------------------------------
# `now` is the scheduler's time: the registry's now() (registry_now), or a later one a test passes to advance
# the clock.


def registry_now(conn: psycopg.Connection):
    return conn.execute("SELECT now() AS now").fetchone()["now"]


def sync_schedules(conn: psycopg.Connection, intervals: dict[str, float], now) -> None:
    """Record the configured intervals (a schedule turned off, 0, keeps its row, and GET /schedules and /metrics
    leave it out). A new schedule first comes due one interval from now; a shorter interval brings the next run
    forward. Writes only what changed."""
    recorded = {
        r["name"]: r["interval_seconds"] for r in conn.execute("SELECT name, interval_seconds FROM registry.schedules")
    }
    for name, seconds in intervals.items():
        if seconds and recorded.get(name) != seconds:
            conn.execute(
                """INSERT INTO registry.schedules AS s (name, interval_seconds, next_run_at)
                   VALUES (%(name)s, %(seconds)s, %(now)s + make_interval(secs => %(seconds)s))
                   ON CONFLICT (name) DO UPDATE SET interval_seconds = EXCLUDED.interval_seconds,
                                                    next_run_at = least(s.next_run_at, EXCLUDED.next_run_at)""",
                {"name": name, "seconds": seconds, "now": now},
            )


def due_schedules(conn: psycopg.Connection, names: list[str], now) -> list[str]:
    """The schedules to look at: those due, and those with a job running (a live worker holds its lock; else
    the worker died and the job is an orphan, fail_orphaned_schedule_jobs)."""
    return [
        r["name"]
        for r in conn.execute(
            """SELECT s.name FROM registry.schedules AS s
                WHERE s.name = ANY(%s)
                  AND (s.next_run_at <= %s
                       OR EXISTS (SELECT 1 FROM registry.jobs AS j
                                   WHERE j.account_id IS NULL AND j.action = s.name AND j.state = 'running'))
                ORDER BY s.name""",
            (names, now),
        )
    ]


def fail_orphaned_schedule_jobs(conn: psycopg.Connection, name: str) -> list[dict]:
    """The schedule's jobs left running by a worker that died: the caller holds the schedule's lock, and no
    playbook run of the job keeps its holder session (the saasodoo_audit callback's, 'saasodoo-run job-<id>-<n>').
    Failed, and the schedule due again, so its next pass runs the work again."""
    orphans = conn.execute(
        f"""UPDATE registry.jobs AS j SET state = 'failed', finished_at = now(),
                   error = 'the worker running it stopped (' || coalesce(worker, '?') || '): run again'
             WHERE account_id IS NULL AND action = %s AND state = 'running'
               -- a playbook still running (its worker lost its session, not its run) keeps its audit holder
               AND NOT EXISTS (
                   SELECT 1 FROM pg_catalog.pg_stat_activity AS a
                    WHERE a.application_name = registry.run_holder_name('job-' || j.id || '-' || j.attempts))
         RETURNING {JOB_COLUMNS}""",
        (name,),
    ).fetchall()
    if orphans:
        conn.execute("UPDATE registry.schedules SET next_run_at = least(next_run_at, now()) WHERE name = %s", (name,))
    return orphans


def claim_schedule(conn: psycopg.Connection, name: str, now) -> dict | None:
    """The schedule's run due at `now`, or None when it is not due (another worker claimed it, or it was run). The
    next run comes one interval after `now`, however many were missed. Under READ COMMITTED a concurrent claim
    waits for this one and then finds the row no longer due: one claim per due time."""
    return conn.execute(
        """UPDATE registry.schedules
              SET last_run_at = %(now)s,
                  next_run_at = %(now)s + make_interval(secs => interval_seconds)
            WHERE name = %(name)s AND next_run_at <= %(now)s
        RETURNING name, interval_seconds, last_run_at""",
        {"name": name, "now": now},
    ).fetchone()


def record_schedule_job(conn: psycopg.Connection, name: str, job_id: int) -> None:
    conn.execute("UPDATE registry.schedules SET last_job_id = %s WHERE name = %s", (job_id, name))


def queue_tenant_chores(conn: psycopg.Connection, schedule, reason: str, now) -> tuple[list[dict], list[str]]:
    """One queued job of the schedule's tenant action for each tenant it is due for (schedules.Schedule) and that
    has no such job open, in the tenant's account (the workers take them after every account with other work:
    pending_accounts); and the tenants due that name no Kill Bill account."""
    due = conn.execute(
        f"""SELECT t.tenant_id, t.customer_id FROM registry.tenants AS t
             WHERE {schedule.tenants_due}
               AND NOT EXISTS (SELECT 1 FROM registry.jobs AS j WHERE j.tenant_id = t.tenant_id
                                  AND j.action = %(action)s AND j.state IN ('queued', 'running', 'parked'))
             ORDER BY t.tenant_id""",
        {"now": now, "action": schedule.tenant_action},
    ).fetchall()
    queued = []
    for row in due:
        if row["customer_id"]:
            job = insert_job(
                conn, account=row["customer_id"], tenant_id=row["tenant_id"], event_id=None,
                action=schedule.tenant_action, playbook=schedule.playbook, extravars={"tenant_id": row["tenant_id"]},
                state="queued", reason=reason,
            )  # fmt: skip
            queued.append(job)
    return queued, [row["tenant_id"] for row in due if not row["customer_id"]]


def schedules_view(conn: psycopg.Connection, names: list[str]) -> list[dict]:
    """GET /schedules and /metrics: each of these schedules (the runner's own, turned on), its last run's time and
    job, and its next run."""
    return conn.execute(
        """SELECT s.name, s.interval_seconds, s.last_run_at, s.next_run_at, s.last_job_id, j.state AS last_job_state
             FROM registry.schedules AS s LEFT JOIN registry.jobs AS j ON j.id = s.last_job_id
            WHERE s.name = ANY(%s) ORDER BY s.name""",
        (names,),
    ).fetchall()


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


# -- tenants, plans, audit ---------------------------------------------------------------------------------


def tenants_by_database(conn, db_names: list[str]) -> dict[str, Tenant]:
    """The tenants holding these database names, by name (one name, one tenant: see desired.database_name)."""
    rows = conn.execute(
        "SELECT db_name, tenant_id, status, plan_name, customer_id, subscription_id FROM registry.tenants"
        " WHERE db_name = ANY(%s)",
        (db_names,),
    ).fetchall()
    return {row.pop("db_name"): Tenant(**row) for row in rows}


def record_billing_status(conn, tenant_id: str, subscription: dict, status: str) -> None:
    """The tenant's billing status as Kill Bill's state says, written only for the account and subscription the
    tenant was provisioned for (desired.foreign_claim), and only when it changed."""
    conn.execute(
        """UPDATE registry.tenants SET billing_status = %(status)s
            WHERE tenant_id = %(tenant)s AND customer_id = %(account)s
              AND (subscription_id IS NULL OR subscription_id = %(subscription)s)
              AND billing_status IS DISTINCT FROM %(status)s""",
        {"status": status, "tenant": tenant_id, "account": subscription.get("accountId"),
         "subscription": subscription.get("subscriptionId")},
    )  # fmt: skip


def plan_names(conn) -> set[str]:
    return {row["name"] for row in conn.execute("SELECT DISTINCT name FROM registry.plans").fetchall()}


def queue_odoo_job(conn, tenant_id: str, odoo: str) -> tuple[dict | None, int, str]:
    """POST /tenants/<id>/odoo: a job of the tenant's account that makes its Odoo `odoo` (ODOO_STATES) with
    tenant_restart.yml, recorded in the audit trail; or why not, as an HTTP status and a message. One such job queued
    or running per tenant at a time (a parked one is superseded); an active tenant with a Kill Bill account only (a
    suspended one stays stopped)."""
    with conn.transaction():
        tenant = conn.execute(
            "SELECT status, customer_id FROM registry.tenants WHERE tenant_id = %s FOR UPDATE", (tenant_id,)
        ).fetchone()
        if tenant is None:
            return None, 404, f"no tenant {tenant_id}"
        if tenant["status"] != "active":
            return None, 409, f"tenant {tenant_id} is {tenant['status']}: only an active tenant's Odoo runs"
        if not tenant["customer_id"]:
            return None, 409, (f"tenant {tenant_id} has no Kill Bill account to queue the job in: run"
                               f" playbooks/tenant_restart.yml -e tenant_id={tenant_id} -e odoo={odoo}")  # fmt: skip
        open_jobs = conn.execute(
            "SELECT id, state FROM registry.jobs WHERE tenant_id = %s AND action = 'odoo'"
            " AND state IN ('queued', 'running', 'parked') ORDER BY id",
            (tenant_id,),
        ).fetchall()
        for open_job in open_jobs:
            if open_job["state"] != "parked":
                return None, 409, f"job {open_job['id']} for tenant {tenant_id}'s Odoo is {open_job['state']}"
        job = insert_job(
            conn, account=tenant["customer_id"], tenant_id=tenant_id, event_id=None, action="odoo",
            playbook=OPERATOR_ACTIONS["odoo"], extravars={"tenant_id": tenant_id, "odoo": odoo}, state="queued",
            reason=f"the admin API asked for its Odoo {odoo}",
        )  # fmt: skip
        for parked in open_jobs:  # its runs failed: what this request asks again, superseded rather than replayed
            close_job(conn, parked["id"], "skipped", f"superseded by job {job['id']}")
        audit(conn, actor="webhook_runner admin", tenant_id=tenant_id, kind="odoo", subject=f"job:{job['id']}",
              detail={"odoo": odoo})  # fmt: skip
        conn.execute(f"NOTIFY {NOTIFY_CHANNEL}")
    return job, 202, ""


def tenant_view(conn, tenant_id: str) -> dict | None:
    """GET /tenants/<id>: the registry row (no secrets are stored there), its server, recent jobs, its database
    moves (db_migrate) and audit."""
    tenant = conn.execute(
        """SELECT t.tenant_id, t.customer_id, t.subscription_id, t.plan_name, t.plan_version, t.db_type,
                  t.db_server, t.db_name, t.status, t.billing_status, t.storage_path, t.http_port, t.quotas,
                  t.extra_modules, t.created_at, t.updated_at, t.retain_until
             FROM registry.tenants AS t WHERE t.tenant_id = %s""",
        (tenant_id,),
    ).fetchone()
    jobs = list_jobs(conn, tenant_id=tenant_id, limit=20)
    if tenant is None and not jobs:
        return None
    # The tenant's rows, and the playbook runs that wrote them (run rows name no tenant: a run may touch many).
    audit = conn.execute(
        """WITH own AS (SELECT * FROM registry.audit WHERE tenant_id = %(tenant)s ORDER BY id DESC LIMIT 50)
           SELECT id, at, actor, kind, subject, detail FROM own
           UNION ALL
           SELECT a.id, a.at, a.actor, a.kind, a.subject, a.detail FROM registry.audit AS a
            WHERE a.kind = 'run' AND a.detail ? 'run' AND a.tenant_id IS NULL
              AND a.detail ->> 'run' IN (SELECT detail ->> 'run' FROM own WHERE detail ? 'run')
           ORDER BY id DESC""",
        {"tenant": tenant_id},
    ).fetchall()
    moves = conn.execute(
        """SELECT id, source_server, target_server, plan_name, method, phase, started_at, finished_at, copy_ms,
                  total_ms, write_downtime_ms, verification, error, retained_db, retain_until
             FROM registry.migrations WHERE tenant_id = %s ORDER BY id DESC LIMIT 20""",
        (tenant_id,),
    ).fetchall()
    return {"tenant": tenant, "jobs": jobs, "moves": moves, "audit": audit}


def audit(conn, *, actor: str, tenant_id, kind: str, subject: str, detail: dict) -> None:
    conn.execute(
        "INSERT INTO registry.audit (actor, tenant_id, kind, subject, detail) VALUES (%s, %s, %s, %s, %s)",
        (actor, tenant_id, kind, subject, Jsonb(json.loads(json.dumps(detail, default=str)))),
    )


def prune(conn: psycopg.Connection, days: float) -> dict[str, int]:
    """Delete finished work older than `days`: jobs that succeeded, were skipped or failed (queued, running and
    parked ones stay), processed events no remaining job refers to, placements older than the latest one that
    placed their tenant, and customer e-mails sent or dropped (the audit trail records each one sent).
    The audit trail is never pruned (its chain holds). /metrics' counters are rows of their own
    (registry.runner_counters, registry.job_durations): notifications received and job run times stay counted.
    Each delete commits on its own (the connection autocommits), so the counter rows it changes stay locked no
    longer than it runs: a worker finishing a job meanwhile waits for one delete at most."""
    params = {"days": days}
    jobs = conn.execute(
        """DELETE FROM registry.jobs WHERE state IN ('succeeded', 'skipped', 'failed')
               AND finished_at < now() - make_interval(secs => %(days)s * 86400)""",
        params,
    ).rowcount
    events = conn.execute(
        """DELETE FROM registry.events e WHERE processed_at IS NOT NULL
               AND received_at < now() - make_interval(secs => %(days)s * 86400)
               AND NOT EXISTS (SELECT 1 FROM registry.jobs j WHERE j.event_id = e.id)""",
        params,
    ).rowcount
    placements = conn.execute(
        """DELETE FROM registry.placements p WHERE decided_at < now() - make_interval(secs => %(days)s * 86400)
               AND id < (SELECT max(id) FROM registry.placements q
                          WHERE q.tenant_id = p.tenant_id AND q.chosen_server IS NOT NULL)""",
        params,
    ).rowcount
    mails = conn.execute(
        """DELETE FROM registry.customer_mail WHERE state IN ('sent', 'dropped')
               AND coalesce(sent_at, queued_at) < now() - make_interval(secs => %(days)s * 86400)""",
        params,
    ).rowcount
    return {"jobs": jobs, "events": events, "placements": placements, "customer mails": mails}


def metrics_snapshot(conn, schedules: list[str] = ()) -> dict:
    """What /metrics reports, from the counters the registry's triggers keep (migration 0017) and the open jobs
    only: notifications received by type and pending, jobs by state, jobs running and waiting by action, and
    succeeded jobs' run times per action (cumulative counts at each bound of `bounds`; a parked or failed job may
    be replayed, so its run time is not final), and the last and next run of each of `schedules`."""
    with conn.transaction():  # one snapshot
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        counters = conn.execute("SELECT metric, label, value FROM registry.runner_counters").fetchall()
        by_action = conn.execute(
            """SELECT action, count(*) FILTER (WHERE state = 'running') AS running,
                      count(*) FILTER (WHERE state = 'queued' AND waiting_for IS NOT NULL) AS waiting
                 FROM registry.jobs WHERE state IN ('running', 'queued') GROUP BY 1"""
        ).fetchall()
        bounds = conn.execute("SELECT registry.job_duration_bounds() AS bounds").fetchone()["bounds"]
        durations = conn.execute(
            "SELECT action, count AS n, seconds AS total, at_most AS le FROM registry.job_durations ORDER BY action"
        ).fetchall()
        scheduled = schedules_view(conn, list(schedules))
        fleet = fleet_snapshot(conn)
    counted = {metric: {} for metric in ("events_received", "events_pending", "jobs")}
    for row in counters:
        counted[row["metric"]][row["label"]] = row["value"]
    return {
        "received": sum(counted["events_received"].values()),
        "pending": counted["events_pending"].get("", 0),
        "by_type": counted["events_received"],
        "jobs": counted["jobs"],
        "running": {r["action"]: r["running"] for r in by_action},
        "waiting": {r["action"]: r["waiting"] for r in by_action},
        "bounds": bounds,
        "durations": durations,
        "schedules": scheduled,
        **fleet,
    }


def fleet_snapshot(conn) -> dict:
    """What the alert rules watch in the registry (roles/monitoring/templates/alerts.yml.j2): tenants by status, each
    active tenant's newest backup kept (its creation when it has none yet), the parked jobs by tenant and action,
    the last restore drill, the moves not finished, when Kill Bill's last notification arrived, and the customer
    e-mails due, sent and dropped. Times are Unix times."""
    return {
        "tenants": {
            row["status"]: row["n"]
            for row in conn.execute("SELECT status, count(*) AS n FROM registry.tenants GROUP BY 1")
        },
        "last_backups": conn.execute(
            """SELECT t.tenant_id, extract(epoch FROM coalesce(max(b.taken_at), t.created_at))::float8 AS at
                 FROM registry.tenants t
                 LEFT JOIN registry.backups b ON b.tenant_id = t.tenant_id AND b.removed_at IS NULL
                WHERE t.status = 'active' GROUP BY t.tenant_id, t.created_at ORDER BY 1"""
        ).fetchall(),
        "last_drill": conn.execute(
            """SELECT passed, extract(epoch FROM drilled_at)::float8 AS at
                 FROM registry.restore_drills ORDER BY id DESC LIMIT 1"""
        ).fetchone(),
        "parked": conn.execute(
            """SELECT coalesce(tenant_id, '') AS tenant_id, action, count(*) AS n FROM registry.jobs
                WHERE state = 'parked' GROUP BY 1, 2 ORDER BY 1, 2"""
        ).fetchall(),
        "open_moves": conn.execute(
            """SELECT tenant_id, phase, extract(epoch FROM started_at)::float8 AS at FROM registry.migrations
                WHERE finished_at IS NULL AND phase NOT IN ('done', 'rolled_back') ORDER BY id"""
        ).fetchall(),
        "last_event_at": conn.execute(
            "SELECT extract(epoch FROM max(received_at))::float8 AS at FROM registry.events"
        ).fetchone()["at"],
        "customer_mail": conn.execute(
            """SELECT count(*) FILTER (WHERE due) AS due,
                      extract(epoch FROM min(send_after) FILTER (WHERE due))::float8 AS oldest_due,
                      count(*) FILTER (WHERE state = 'sent') AS sent,
                      count(*) FILTER (WHERE state = 'dropped') AS dropped
                 FROM (SELECT state, send_after, state = 'queued' AND send_after <= now() AS due
                         FROM registry.customer_mail) AS m"""
        ).fetchone(),
    }


def active_tenants(conn) -> list[str]:
    """GET /sd/tenants: the tenants whose Odoo should answer now."""
    return [row["tenant_id"] for row in conn.execute(
        "SELECT tenant_id FROM registry.tenants WHERE status = 'active' ORDER BY tenant_id"
    )]  # fmt: skip
