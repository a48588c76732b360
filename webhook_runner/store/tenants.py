"""The tenants, plans and audit trail as the runner reads and writes them, and what the API and /metrics show."""

from __future__ import annotations

import psycopg

from ansible_collections.saasodoo.platform.plugins.module_utils.audit import record_audit

from ..desired import Tenant
from .inbox import NOTIFY_CHANNEL
from .jobs import OPERATOR_ACTIONS, close_job, insert_job, list_jobs
from .schedules import schedules_view

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
        record_audit(conn, actor="webhook_runner admin", tenant_id=tenant_id, kind="odoo", subject=f"job:{job['id']}",
              detail={"odoo": odoo})  # fmt: skip
        conn.execute(f"NOTIFY {NOTIFY_CHANNEL}")
    return job, 202, ""


def tenant_view(conn, tenant_id: str) -> dict | None:
    """GET /tenants/<id>: the registry row (no secrets are stored there), its server, recent jobs, its database
    moves (db_migrate) and audit."""
    tenant = conn.execute(
        """SELECT t.tenant_id, t.customer_id, t.subscription_id, t.plan_name, t.plan_version, t.db_type,
                  t.db_server, t.db_name, t.status, t.billing_status, t.storage_path, t.http_port, t.quotas,
                  t.extra_modules, t.odoo_build, t.created_at, t.updated_at, t.retain_until
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
