"""The passes a worker makes between accounts: reconcile (Kill Bill against the registry), the recovery of stuck
moves, housekeeping, and the periodic jobs (schedules.py)."""

from __future__ import annotations

import contextlib
import logging
from datetime import datetime

import psycopg

from . import store
from .convergence import ADDRESS_UNREAD, RECONCILE
from .desired import PLAYBOOKS, Action
from .killbill import KillBillError
from .schedules import SCHEDULES

log = logging.getLogger("webhook_runner.worker")  # the worker's log, whichever file writes to it


class Upkeep:
    """A Worker's passes between accounts, one worker at a time each (worker.py)."""

    def reconcile(self, repair: bool = True) -> list[str]:
        """Compare every Kill Bill account with the registry; queue a convergence for each that drifted."""
        conn, drift = self.conn, []
        plans = store.plan_names(conn)
        for account in self.killbill.account_ids():
            bundles = self.killbill.account_bundles(account)
            overdue = self.killbill.account_overdue(account)
            written_off = self._written_off(account)
            try:
                balance, email = self.killbill.account_standing(account)
            except KillBillError:
                # A rule waiting on them shows no drift: the account's own pass reads them.
                balance, email = None, ADDRESS_UNREAD
            address = self._address(email)
            queued = False
            for _, tenant_id, decisions in self._decide(
                account, bundles, overdue, balance, plans, written_off, address
            ):
                actions = [decision for decision in decisions if isinstance(decision, Action)]
                if not actions:
                    continue
                drift.append(f"{tenant_id}: needs {', '.join(a.action for a in actions)} ({actions[0].reason})")
                if (
                    repair
                    and not queued
                    and not any(job["state"] == "queued" for job in store.open_jobs(conn, account))
                ):
                    store.insert_job(
                        conn, account=account, tenant_id=None, event_id=None, action=RECONCILE, playbook="",
                        extravars={}, state="queued", reason=f"reconcile: {drift[-1]}",
                    )  # fmt: skip
                    queued = True
        if repair and drift:
            conn.execute(f"NOTIFY {store.NOTIFY_CHANNEL}")
        return drift

    def periodic_reconcile(self) -> None:
        if not store.try_lock(self.conn, store.RECONCILE_LOCK, "reconcile"):
            return
        try:
            for line in self.reconcile():
                log.info("reconcile: %s", line)
        except KillBillError as error:
            log.warning("reconcile skipped: %s", error)
        finally:
            store.unlock(self.conn, store.RECONCILE_LOCK, "reconcile")

    def recover(self) -> list[str]:
        """The recovery pass (one worker at a time): a job for each move no run has finished for move_stuck_seconds
        (tenant_change_plan.yml with the move's plan, which finishes it or rolls it back, in its tenant's account,
        so it runs under the account's lease before the account's next action). What it found and did, one line
        each."""
        if not store.try_lock(self.conn, store.RECOVERY_LOCK, "recovery"):
            return []
        conn, lines, queued = self.conn, [], False
        try:
            for move in store.stuck_moves(conn, self.settings.move_stuck_seconds):
                tenant_id, plan = move["tenant_id"], move["plan_name"]
                found = (
                    f"{tenant_id}: move {move['id']} ({move['source_server']} -> {move['target_server']}) in"
                    f" {move['phase']} since {move['since']:%Y-%m-%d %H:%M:%S %Z}, no run finishing it"
                )
                if move["queued"]:
                    lines.append(f"{found}: its recovery job is open already (GET /jobs?tenant={tenant_id})")
                elif not move["account_id"]:
                    by_hand = f"playbooks/tenant_change_plan.yml -e tenant_id={tenant_id} -e plan={plan}"
                    lines.append(f"{found}: the tenant names no Kill Bill account, so no job: run {by_hand}")
                else:
                    job = store.insert_job(
                        conn, account=move["account_id"], tenant_id=tenant_id, event_id=None,
                        action=store.RECOVER_MOVE, playbook=PLAYBOOKS["change_plan"],
                        extravars={"tenant_id": tenant_id, "plan": plan}, state="queued",
                        reason=f"recovery: {found}; the playbook finishes it or rolls it back",
                    )  # fmt: skip
                    lines.append(f"{found}: job {job['id']} queued")
                    queued = True
            if queued:
                conn.execute(f"NOTIFY {store.NOTIFY_CHANNEL}")  # the accounts' workers, at once
            return lines
        finally:  # a lost connection freed it
            with contextlib.suppress(psycopg.OperationalError):
                store.unlock(self.conn, store.RECOVERY_LOCK, "recovery")

    def periodic_recovery(self) -> None:
        for line in self.recover():
            log.info("recovery: %s", line)

    def housekeeping(self) -> dict[str, int]:
        """Prune what `retention_days` no longer keeps (one worker at a time); what was deleted, by table."""
        if not store.try_lock(self.conn, store.HOUSEKEEPING_LOCK, "housekeeping"):
            return {}
        try:
            return store.prune(self.conn, self.settings.retention_days)
        finally:
            store.unlock(self.conn, store.HOUSEKEEPING_LOCK, "housekeeping")

    def advance_update(self) -> list[str]:
        """The rollout of an Odoo build (store/updates.py), one step, one worker at a time: what it did."""
        if not store.try_lock(self.conn, store.UPDATE_LOCK, "update"):
            return []
        try:
            return store.advance_update(self.conn)
        finally:
            with contextlib.suppress(psycopg.OperationalError):
                store.unlock(self.conn, store.UPDATE_LOCK, "update")

    def periodic_update(self) -> bool:
        """The rollout's pass of the worker loop: whether it did anything."""
        return self._logged_pass(self.advance_update, "odoo update:", "the Odoo update's pass")

    def periodic_housekeeping(self) -> None:
        if self.settings.retention_days > 0 and (pruned := self.housekeeping()):
            log.info("housekeeping: pruned %s", ", ".join(f"{n} {table}" for table, n in pruned.items()))

    def run_schedules(self, now: datetime | None = None) -> list[str]:
        """Run each schedule whose time has come (webhook_runner/schedules.py) at `now` (the registry's now unless
        given: a test advances the clock with it): one line each. A schedule another worker is running is left
        to it; a due time another worker claimed is not run again."""
        lines = []
        store.sync_schedules(self.conn, self.settings.schedules, now or store.registry_now(self.conn))
        configured = [name for name, seconds in self.settings.schedules.items() if seconds]
        for name in store.due_schedules(self.conn, configured, now or store.registry_now(self.conn)):
            # self.conn each time: a playbook run may have connected it again (and freed the lock it held)
            if not store.try_lock(self.conn, store.SCHEDULE_LOCK, name):
                continue  # another worker's run of it
            try:
                lines += self._run_schedule(name, now or store.registry_now(self.conn))  # after the last run
            finally:
                with contextlib.suppress(psycopg.OperationalError):
                    store.unlock(self.conn, store.SCHEDULE_LOCK, name)
        return lines

    def _run_schedule(self, name: str, now: datetime) -> list[str]:
        conn, schedule, lines = self.conn, SCHEDULES[name], []
        for orphan in store.fail_orphaned_schedule_jobs(conn, name):  # this worker holds its lock: none runs
            lines.append(f"{name}: job {orphan['id']} failed: {orphan['error']}")
        with conn.transaction():  # the claim and its job together: a worker dying between them loses no run
            claimed = store.claim_schedule(conn, name, now)
            if claimed is None:
                return lines  # claimed meanwhile by another worker, which ran it before this one took the lock
            reason = f"schedule {name} (every {claimed['interval_seconds']:g} s), due {now:%Y-%m-%d %H:%M:%S %Z}"
            # The queued jobs before the running one: each job write updates the runner's counters (registry
            # count_jobs), whose rows a worker starting a job locks queued first, then running. Taken in the other
            # order here, the two transactions could deadlock (seen with two runner hosts).
            if schedule.tenant_action:
                queued, unowned = store.queue_tenant_chores(conn, schedule, reason, now)
            job = store.insert_job(
                conn, account=None, tenant_id=None, event_id=None, action=name,
                playbook="" if schedule.tenant_action else schedule.playbook, extravars={}, state="running",
                reason=reason, worker=self.name,
            )  # fmt: skip
            store.record_schedule_job(conn, name, job["id"])
        if not schedule.tenant_action:
            # What runs is the schedule's, never what the registry handed back (its owner could change the row).
            job = self._execute({**job, "playbook": schedule.playbook, "extravars": {}}, retry=False)
            return [*lines, f"{name}: {schedule.playbook} job {job['id']} {job['state']}"]
        outcome = f"{schedule.tenant_action} jobs queued in their tenants' accounts: {len(queued)}"
        if queued:
            ids = [str(queued_job["id"]) for queued_job in queued]
            outcome += f" (jobs {', '.join(ids[:10])}{', ...' if len(ids) > 10 else ''})"
            conn.execute(f"NOTIFY {store.NOTIFY_CHANNEL}")  # the accounts' workers, at once
        if unowned:
            outcome += (
                f"; no Kill Bill account names {', '.join(unowned)}, so no job: run playbooks/{schedule.playbook}"
                " -e tenant_id=<id> for each"
            )
        store.close_job(conn, job["id"], "succeeded", f"{reason}: {outcome}")
        return [*lines, f"{name}: job {job['id']}: {outcome}"]

    def periodic_schedules(self) -> bool:
        """The schedules' pass of the worker loop: whether it ran anything."""
        return self._logged_pass(self.run_schedules, "schedule", "the schedules' pass")

    @staticmethod
    def _logged_pass(run, prefix: str, name: str) -> bool:
        """A pass of the worker loop, its lines logged: whether it did anything. A bug in it is logged, and the
        worker goes on with the inbox (the registry gone is serve()'s to handle)."""
        try:
            lines = run()
        except psycopg.OperationalError:
            raise
        except Exception:
            log.exception("%s failed", name)
            return False
        for line in lines:
            log.info("%s %s", prefix, line)
        return bool(lines)
