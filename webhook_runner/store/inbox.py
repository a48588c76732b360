"""The inbox of Kill Bill's notifications, the accounts' leases and the passes' advisory locks."""

from __future__ import annotations

import psycopg
from psycopg.rows import dict_row

from ..schedules import TENANT_ACTIONS

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
UPDATE_LOCK = 0x5A13  # the rollout of an Odoo build, one step at a time


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
