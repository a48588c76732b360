"""The periodic jobs' runs (migration 0018, webhook_runner/schedules.py)."""

from __future__ import annotations

import psycopg

from .jobs import JOB_COLUMNS, insert_job

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
    playbook run of the job keeps its holder session (the saasodoo.platform.audit callback's,
    'saasodoo-run job-<id>-<n>'). Failed, and the schedule due again, so its next pass runs the work again."""
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


def bring_schedule_forward(conn: psycopg.Connection, name: str) -> None:
    """The schedule due now (its next pass runs it), however long its interval."""
    conn.execute("UPDATE registry.schedules SET next_run_at = least(next_run_at, now()) WHERE name = %s", (name,))


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
