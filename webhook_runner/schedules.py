"""The runner's periodic jobs: what each schedule runs. How often is the settings' `schedules` (seconds between
runs, by name; 0 turns one off); when, and by whom, the registry's registry.schedules decides (migration 0018).

Each run is an ordinary job in registry.jobs whose action is the schedule's name, shown by GET /jobs and counted
in /metrics like any other:
- a platform schedule runs its playbook once, in the worker that claimed the run (no account, never retried: the
  next run does the same work again);
- a tenant schedule queues one job of its tenant action for each tenant due, in the tenant's Kill Bill account,
  where the account's worker runs it like any other job (under the account's lease, one job per tenant at a
  time, retried with backoff, parked when it keeps failing). Its own job says what it queued. A tenant no
  Kill Bill account names gets no job: the schedule's job lists it, for an operator to run the playbook.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Schedule:
    name: str
    playbook: str  # the platform playbook, or the one each tenant job runs
    tenant_action: str | None = None  # a tenant schedule: the action of the jobs it queues
    # A tenant schedule: the registry.tenants rows (t) it is due for, an SQL condition written here, never configured
    # (%(now)s: the run's time).
    tenants_due: str = ""
    # Its runs start servers that then serve customers (a local pool's PostgreSQL and PgBouncer): execution.py
    # nices only the run's session, which a server leaves, never its processes, whose niceness a server would keep.
    starts_servers: bool = False


# Never by a later clock than the registry's (python -m webhook_runner schedule --now): a purge needs the retention
# over for real, or tenant_purge.yml refuses it.
_TERMINATED_AND_DUE = "t.status = 'terminated' AND t.retain_until <= least(%(now)s, now())"
SCHEDULES = {
    schedule.name: schedule
    for schedule in (
        Schedule("moves_cleanup", "moves_cleanup.yml"),  # old copies past retention
        Schedule("servers_retire", "servers_retire.yml"),  # dedicated servers nothing holds
        Schedule("servers_probe", "servers_probe.yml"),  # each server's and PgBouncer's health, for placement
        # New shared pools and warm dedicated spares brought up before the sign-ups need them (the inventory's
        # saasodoo_pool_headroom_tenants, saasodoo_dedicated_spares); due at once after a provision or plan change
        # succeeded (GROWS_POOLS), whatever its interval.
        Schedule("pools_grow", "pools_grow.yml", starts_servers=True),
        Schedule("restore_drill", "backups_drill.yml"),  # a random tenant's newest backup restored and checked
        # Each server's base backup, the start of its point-in-time recovery (with its archived WAL).
        Schedule("base_backups", "servers_base_backup.yml"),
        # The audit chain verified and its head sealed on this host (saasodoo_audit_seal_file).
        Schedule("audit_verify", "registry_audit_verify.yml"),
        # The plan's backup_keep says which backups stay (tenant_backup.yml).
        Schedule("tenant_backups", "tenant_backup.yml", tenant_action="backup", tenants_due="t.status = 'active'"),
        Schedule("tenant_purges", "tenant_purge.yml", tenant_action="purge", tenants_due=_TERMINATED_AND_DUE),
    )
}
TENANT_ACTIONS = {s.tenant_action: s.playbook for s in SCHEDULES.values() if s.tenant_action}
# The jobs that can take a shared pool's slot: their success brings pools_grow forward.
GROWS_POOLS = ("provision", "change_plan")
# The runner's defaults: health every 5 minutes, room in the pools every 10 (and after each sign-up), hourly
# housekeeping of the fleet, the purges and the audit chain's seal, a base backup of each server and a backup of each
# tenant a day, a restore drill a week.
DEFAULT_INTERVALS = {
    "moves_cleanup": 3600,
    "servers_retire": 3600,
    "servers_probe": 300,
    "pools_grow": 600,
    "restore_drill": 604800,
    "base_backups": 86400,
    "audit_verify": 3600,
    "tenant_backups": 86400,
    "tenant_purges": 3600,
}
MIN_INTERVAL_SECONDS = 60


def intervals_problem(intervals) -> str | None:
    """Why the settings' `schedules` cannot be used, or None."""
    if not isinstance(intervals, dict):
        return f"schedules maps schedule names ({', '.join(SCHEDULES)}) to seconds between runs, not {intervals!r}"
    bad = [
        f"{name}={seconds!r}"
        for name, seconds in intervals.items()
        if name not in SCHEDULES
        or isinstance(seconds, bool)
        or not isinstance(seconds, int | float)
        or not (seconds == 0 or seconds >= MIN_INTERVAL_SECONDS)
    ]
    if bad:
        return (
            f"schedules maps {', '.join(SCHEDULES)} to seconds between runs (0: off, else at least"
            f" {MIN_INTERVAL_SECONDS}); not {', '.join(bad)}"
        )
    return None
