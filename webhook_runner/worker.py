"""The worker: take the inbox per Kill Bill account, read the account back, run what its tenants need.

Several workers may run, on several machines; they coordinate only through the registry. A worker takes
an account with a lease (registry.account_leases), so one account's events are handled by one worker at a
time, in arrival order, and one job runs at a time per tenant (the registry's unique index backs this up).
The worker renews the lease while it works; a registry restart or a dropped connection does not free it. A
worker killed mid-job stops renewing: once the lease expires the next worker takes the account, finds the job
still 'running', queues it again and reruns it (playbooks are idempotent). Each take has a new fencing token
that the worker's writes and its playbook's carry, so a worker that lost the account writes nothing more.

What happens is decided by Kill Bill's state read back (module desired), never by the event itself, so
duplicate, late and reordered events lead to no second effect: once a job ran, the registry matches
Kill Bill and the same comparison asks for nothing.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import shlex
import shutil
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import ansible_runner
import psycopg

from . import logs, mail, store
from .config import RunnerSettings
from .desired import (
    PLAYBOOKS,
    UNKNOWN_BALANCE,
    Action,
    Skip,
    billing_status,
    customer_profile,
    database_name,
    desired_actions,
    email_hash,
    is_blocked,
    tenant_id_of,
    unpaid,
)
from .killbill import KillBill, KillBillError, KillBillNotFound
from .notification import IGNORED_EVENT_TYPES, KNOWN_EVENT_TYPES, written_off_tag
from .schedules import SCHEDULES, TENANT_ACTIONS

log = logging.getLogger("webhook_runner.worker")
PLAYBOOK_COMMAND = Path(__file__).with_name("ansible-playbook")  # dies with the worker (see the script)

# Jobs that only ask for an account to be read again (Kill Bill was unreachable, or reconcile found drift).
CONVERGE, RECONCILE = "converge", "reconcile"
PURGEABLE = ("terminated", "purged")  # what tenant_purge.yml takes: a purge queued before a reactivation is moot


def job_environment(project_dir: Path) -> dict[str, str]:
    """The environment of every job's ansible-playbook (bench/lifecycle.py runs its playbooks with it too)."""
    return {
        "ANSIBLE_CONFIG": str(project_dir / "ansible.cfg"),
        # ansible-runner sets the callback path, so ansible.cfg's would be lost: the audit callback's directory
        # goes first.
        "ANSIBLE_CALLBACK_PLUGINS": str(project_dir / "plugins/callback"),
        # No tenant hosts in the inventory (saasodoo.platform.registry's `tenants`): no playbook targets one, and
        # each would cost every job's start.
        "SAASODOO_INVENTORY_TENANTS": "false",
        # ansible-playbook from this venv, whatever PATH the worker was started with
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }


class Worker:
    def __init__(self, settings: RunnerSettings, name: str | None = None, killbill: KillBill | None = None):
        self.settings = settings
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.actor = f"webhook_runner {self.name}"
        self.killbill = killbill or KillBill(settings.killbill)
        self.conn = self._connect("worker")
        self._last_reconcile = self._last_housekeeping = self._last_recovery = time.monotonic()
        self._last_schedules = self._last_mail = 0.0  # the first idle moment looks at once
        self.lease: AccountLease | None = None  # the account this worker converges now

    def _connect(self, purpose: str, **options) -> psycopg.Connection:
        """A registry session that pg_stat_activity shows as this worker's (purpose: worker, listen, lease)."""
        name = f"saasodoo-runner-{purpose} {self.name}"[:63]  # PostgreSQL's limit for application_name
        options.setdefault("connect_timeout", 10)
        return store.connect(self.settings.registry_conninfo, application_name=name, **options)

    def _lease_connection(self) -> psycopg.Connection:
        """The renewal's session: no call on it may outlast a third of the lease (a half-open connection, a lock)."""
        third = max(1, int(self.settings.lease_seconds / 3))
        return self._connect(
            "lease", connect_timeout=third, keepalives=1, keepalives_idle=third, keepalives_interval=1,
            keepalives_count=3, tcp_user_timeout=third * 1000, options=f"-c statement_timeout={third * 1000}",
        )  # fmt: skip

    # -- the loop ------------------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Work until `stop` is set: handle what is pending, then wait for a NOTIFY or the poll interval."""
        listener = self._connect("listen")
        listener.execute(f"LISTEN {store.NOTIFY_CHANNEL}")
        log.info("worker %s started", self.name)
        try:
            self._work(stop, listener)
        finally:
            listener.close()
        log.info("worker %s stopped", self.name)

    def _work(self, stop: threading.Event, listener: psycopg.Connection) -> None:
        while not stop.is_set():
            # Between jobs too, at least every poll_seconds: a steady inbox does not hold the customers' mail back.
            if self.settings.mail and time.monotonic() - self._last_mail >= self.settings.poll_seconds:
                self._last_mail = time.monotonic()
                self.periodic_mail()
            if self.run_once():
                continue
            interval = self.settings.reconcile_interval_seconds
            if interval and time.monotonic() - self._last_reconcile >= interval:
                self._last_reconcile = time.monotonic()
                self.periodic_reconcile()
                continue
            interval = self.settings.recovery_interval_seconds
            if interval and time.monotonic() - self._last_recovery >= interval:
                self._last_recovery = time.monotonic()
                self.periodic_recovery()
                continue
            interval = self.settings.housekeeping_interval_seconds
            if interval and time.monotonic() - self._last_housekeeping >= interval:
                self._last_housekeeping = time.monotonic()
                self.periodic_housekeeping()
                continue
            if time.monotonic() - self._last_schedules >= self.settings.poll_seconds:
                self._last_schedules = time.monotonic()
                if self.periodic_schedules():
                    continue
            for _ in listener.notifies(timeout=self.settings.poll_seconds, stop_after=1):
                pass

    def run_once(self, only: str | None = None) -> bool:
        """Converge the first pending account (`only` that one) no other worker holds; False when there was none."""
        for account in store.pending_accounts(self.conn):
            if only is not None and account != only:
                continue
            token = store.take_lease(self.conn, account, self.name, self.settings.lease_seconds)
            if token is None:
                continue  # another worker has it
            self.lease = AccountLease(self._lease_connection, account, token, self.settings.lease_seconds)
            try:
                store.carry_lease(self.conn, token)
                self.converge_account(account)
            except psycopg.OperationalError:
                raise  # the registry is gone: serve() connects again (the lease expires if nobody renews it)
            except Exception as error:
                if store.is_fenced(error) or self.lease.lost.is_set():
                    log.warning("account %s: lease %s taken over by another worker; left to it", account, token)
                else:  # a bug, or a reply of a shape nobody foresaw: not the others' problem
                    self._fail_account(account, error)
            finally:
                self.lease.stop()
                self.lease = None
                with contextlib.suppress(psycopg.OperationalError):
                    store.carry_lease(self.conn, None)
                    store.release_lease(self.conn, token)
            return True
        return False

    def _fail_account(self, account: str, error: Exception) -> None:
        """Log the traceback, mark the account's pending events failed and park its due jobs with it: the worker
        goes on with the other accounts, and the account waits for someone to look (then replay)."""
        log.exception("account %s: unexpected error, its events marked failed", account or "(none)")
        trace = "".join(traceback.format_exception(error))
        reason = f"failed: {type(error).__name__}: {error} (the traceback is in the audit trail)"
        conn = self.conn
        events = [event["id"] for event in store.unprocessed_events(conn, account)]
        store.mark_processed(conn, events, reason)
        parked = store.park_due_jobs(conn, account, reason)
        store.audit(
            conn, actor=self.actor, tenant_id=None, kind="error", subject=f"account:{account}",
            detail={"events": events, "jobs_parked": parked, "traceback": trace},
        )  # fmt: skip

    def drain(self, timeout: float = 900.0, only: str | None = None) -> None:
        """Run until nothing is pending or due, of one account with `only` (`python -m webhook_runner worker
        --drain [--account ID]`)."""
        deadline = time.monotonic() + timeout
        while self.run_once(only):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the inbox did not drain within {timeout:.0f} s")

    # -- one account ---------------------------------------------------------------------------------------

    def converge_account(self, account: str) -> None:
        conn = self.conn
        for orphan in store.requeue_orphans(conn, account, self.settings.max_attempts):
            log.warning("job %s: %s", orphan["id"], orphan["error"])
        triggers = []
        for event in store.unprocessed_events(conn, account):
            kind = event["event_type"]
            if kind not in KNOWN_EVENT_TYPES:
                job = self._skip(account, None, event["id"], f"unknown event type {kind}: stored, no action")
                store.mark_processed(conn, [event["id"]], f"skipped: job {job['id']}")
            elif (kind in IGNORED_EVENT_TYPES and not written_off_tag(event)) or not account:
                store.mark_processed(conn, [event["id"]], f"no action: {kind} never changes a tenant")
            else:
                triggers.append(event)
        if account:  # a failed payment is told whatever else happens
            mail.queue_payment_failures(conn, account, triggers)
        if not account or not (triggers or store.has_due_job(conn, account)):
            return
        # A move no run finishes comes first: whatever Kill Bill asks for next assumes the tenant on one server.
        for recovery in store.due_chores(conn, account, (store.RECOVER_MOVE,)):
            self._execute(store.start_job(conn, recovery["id"], self.name, recovery["extravars"], recovery["reason"]))
        # What the schedules queued (a backup, a purge) goes first only when Kill Bill need not be read: no event,
        # no read of the account waiting (one queued when Kill Bill was unreachable may be a customer coming back).
        if not triggers and not store.reads_waiting(conn, account, (CONVERGE, RECONCILE)):
            self._run_tenant_chores(account)
        if not (triggers or store.has_due_job(conn, account)):
            return  # the chores were all: Kill Bill need not be read
        limits = self.settings.job_limits
        if not triggers and store.still_held_back(conn, account, limits, self.settings.limit_wait_seconds):
            return
        trigger_ids = [event["id"] for event in triggers]
        open_jobs = store.open_jobs(conn, account)
        account_jobs = [job for job in open_jobs if job["action"] in (CONVERGE, RECONCILE) and job["state"] == "queued"]

        try:
            bundles = self.killbill.account_bundles(account)
            overdue = self.killbill.account_overdue(account)
            written_off = self._written_off(account)
        except KillBillNotFound as error:
            job = self._skip(account, None, trigger_ids[0] if trigger_ids else None, f"unknown to Kill Bill: {error}")
            for stale in account_jobs:
                store.close_job(conn, stale["id"], "skipped", f"account unknown to Kill Bill (job {job['id']})")
            store.mark_processed(conn, trigger_ids, f"skipped: job {job['id']}")
            return
        except KillBillError as error:
            job = self._retry_later(account, account_jobs, trigger_ids, f"Kill Bill unreachable: {error}")
            store.mark_processed(conn, trigger_ids, f"Kill Bill unreachable: read again by job {job['id']}")
            return

        # Only what billing_status shows: unread, the tenants' statuses stay as they were, and the actions go on.
        try:
            balance, email = self.killbill.account_standing(account)
        except KillBillError as error:
            log.warning("account %s: its balance was not read (%s); billing statuses left as they are", account, error)
            balance, email = None, None
        address = self._address(email)
        outcomes, wanted, through = [], {}, {}
        decided = self._decide(account, bundles, overdue, balance, store.plan_names(conn), written_off, address)
        for subscription, tenant_id, decisions in decided:
            # Taken at once, one row per address: two new accounts of one address converging together get one trial.
            decisions = self._trial_by_address(account, address, subscription, balance, tenant_id, decisions, True)
            tenant_jobs = [job for job in open_jobs if tenant_id and job["tenant_id"] == tenant_id]
            self._audit_decision(tenant_id, triggers, subscription, overdue, decisions)
            done, wants, went_through = self._carry_out(account, tenant_id, decisions, tenant_jobs, trigger_ids)
            outcomes += done
            if tenant_id:  # a tenant may have several subscriptions (a returning customer's old, cancelled one)
                wanted.setdefault(tenant_id, set()).update(wants)
                through[tenant_id] = through.get(tenant_id, True) and went_through
            # After the actions (a new tenant's row exists once its provision ran); not for a subscription the
            # decision skipped (another account's claim, say).
            status = billing_status(subscription, overdue, balance)
            if tenant_id and status and not any(isinstance(decision, Skip) for decision in decisions):
                store.record_billing_status(conn, tenant_id, subscription, status)
                if status == "trial" and self.settings.mail:
                    mail.queue_trial_ending(conn, tenant_id, subscription, self.settings.mail.trial_warning_days)
        # A tenant's queued jobs that none of its subscriptions wants any more, once they all went through; a chore
        # (a move's recovery, a backup) is wanted whatever Kill Bill says.
        for job in open_jobs:
            tenant_id = job["tenant_id"]
            if (
                job["state"] == "queued"
                and through.get(tenant_id)
                and job["action"] not in wanted[tenant_id] | set(store.CHORES)
            ):
                store.close_job(conn, job["id"], "succeeded", "nothing left to do: the registry matches Kill Bill")
        # A billing rule that waits on the balance Kill Bill did not give: the account is read again after a backoff
        # (its read job parked when it keeps failing), not at its next event only.
        if any(isinstance(d, Skip) and d.recheck for _, _, decisions in decided for d in decisions):
            self._retry_later(account, account_jobs, [], "its balance could not be read: a billing rule waits on it")
            account_jobs = account_jobs[1:]
        for job in account_jobs:
            store.close_job(conn, job["id"], "succeeded", "Kill Bill read back; the account's tenants converged")
        store.mark_processed(conn, trigger_ids, "; ".join(outcomes) or "no change: the tenants match Kill Bill")
        self._run_tenant_chores(account)  # after what Kill Bill asked for: a customer who paid is not kept waiting

    def _run_tenant_chores(self, account: str) -> None:
        """The account's due jobs the schedules queued (webhook_runner/schedules.py): a backup, a purge (closed
        unrun when the tenant is no longer terminated: it was reactivated); and what an operator asked for (its
        Odoo restarted: closed unrun when the tenant is no longer active)."""
        conn = self.conn
        for chore in store.due_chores(conn, account, [*TENANT_ACTIONS, *store.OPERATOR_ACTIONS]):
            if chore["action"] == "purge" and store.tenant_status(conn, chore["tenant_id"]) not in PURGEABLE:
                store.close_job(conn, chore["id"], "skipped", "the tenant is no longer terminated (reactivated)")
                continue
            if chore["action"] == "odoo" and (status := store.tenant_status(conn, chore["tenant_id"])) != "active":
                store.close_job(conn, chore["id"], "skipped", f"the tenant is {status} now: its Odoo is not run")
                continue
            self._execute(store.start_job(conn, chore["id"], self.name, chore["extravars"], chore["reason"]))

    def _address(self, email: str | None) -> str | None:
        """The keyed hash of the account's e-mail address, for one trial per address (with its key and rule only)."""
        key, rules = self.settings.customer_email_key, self.settings.billing_rules
        if not (key and email and rules.one_trial_per_customer and rules.one_trial_per_email):
            return None
        return email_hash(key, email)

    def _trial_by_address(self, account, address, subscription, balance, tenant_id, decisions, claim=False) -> list:
        """A new tenant in its trial (or unpaid) has its account's e-mail address's trial, unless another account's
        tenant had it: then it waits until paid, as one trial per account says. With `claim`, the trial is taken
        (registry.trial_claims), else only looked up (reconcile's check writes nothing)."""
        provision = any(isinstance(d, Action) and d.action == "provision" for d in decisions)
        if not (address and provision and (why := unpaid(subscription, balance))):
            return decisions
        conn = self.conn
        holder = store.claim_trial(conn, address, account, tenant_id) if claim else store.trial_claim(conn, address)
        if holder is None or holder["account_id"] == account:
            return decisions
        return [
            Skip(
                tenant_id,
                f"one trial per customer (per e-mail address): the address of account {account} had its trial with"
                f" tenant {holder['tenant_id']} of account {holder['account_id']}; {tenant_id} is provisioned once"
                f" subscription {subscription.get('subscriptionId')} is past its trial and paid ({why})",
                recheck=why == UNKNOWN_BALANCE,
            )
        ]

    def _written_off(self, account: str) -> tuple[str, ...]:
        """The account's invoices written off since the platform listens (Kill Bill notified the tag) and still so:
        read from Kill Bill only for an account that had such a notification, with the rule on."""
        if not self.settings.billing_rules.terminate_written_off:
            return ()
        notified = store.notified_write_off_tags(self.conn, account)
        if not notified:
            return ()
        tags = self.killbill.written_off_tags(account)
        return tuple(sorted(invoice for tag, invoice in tags.items() if tag in notified))

    def _decide(
        self, account: str, bundles: list[dict], overdue: dict, balance, plans: set[str], written_off: tuple = (),
        address: str | None = None,
    ) -> list[tuple[dict, str | None, list]]:  # fmt: skip
        """(subscription, tenant id, decisions) for each of an account's subscriptions, against the registry."""
        subscriptions = [sub for bundle in bundles for sub in bundle.get("subscriptions") or []]
        tenant_ids = [tenant_id_of(sub) for sub in subscriptions]
        tenants = store.tenants_by_database(self.conn, [database_name(tid) for tid in tenant_ids if tid])
        rules = self.settings.billing_rules
        had = store.account_tenant_ids(self.conn, account)

        def started_before(sub: dict) -> frozenset[str]:
            """The tenants of the account's BASE subscriptions that started before `sub` (one trial per customer:
            the earliest has it, even before its tenant's row exists)."""
            order = (str(sub.get("startDate") or ""), str(sub.get("subscriptionId") or ""))
            return frozenset(
                tid for other, tid in zip(subscriptions, tenant_ids, strict=True)
                if tid and other.get("productCategory", "BASE") == "BASE"
                and (str(other.get("startDate") or ""), str(other.get("subscriptionId") or "")) < order
            )  # fmt: skip

        return [
            (
                sub,
                tid,
                self._trial_by_address(
                    account,
                    address,
                    sub,
                    balance,
                    tid,
                    desired_actions(
                        sub,
                        overdue,
                        tenants.get(database_name(tid)) if tid else None,
                        plans,
                        balance,
                        had | started_before(sub),
                        rules,
                        written_off,
                    ),
                ),
            )
            for sub, tid in zip(subscriptions, tenant_ids, strict=True)
        ]

    def _carry_out(self, account, tenant_id, decisions, tenant_jobs, trigger_ids) -> tuple[list[str], set, bool]:
        """Run one subscription's actions on its tenant in order, stopping at the first failure, parked or waiting
        action (a parked plan change, the last action, holds up nothing): (outcomes, the actions wanted, whether
        it went through)."""
        conn, outcomes = self.conn, []
        wanted = {decision.action for decision in decisions if isinstance(decision, Action)}
        event_id = trigger_ids[0] if trigger_ids else None
        for decision in decisions:
            if isinstance(decision, Skip):
                job = self._skip(account, decision.tenant_id, event_id, decision.reason)
                outcomes.append(f"skipped: job {job['id']}")
                continue
            if decision.action == "provision":
                decision.extravars.update(self._customer(account))
            same = [job for job in tenant_jobs if job["action"] == decision.action]
            parked = [job for job in same if job["state"] == "parked"]
            if parked:
                outcomes.append(f"{decision.action} {tenant_id}: job {parked[0]['id']} is parked, replay it")
                if decision.action == "change_plan":
                    continue  # a plan change comes last: nothing after it depends on it
                return outcomes, wanted, False  # the tenant's later actions assume this one happened
            job = store.start_within_limit(
                conn, limit=self.settings.job_limits.get(decision.action),
                wait_seconds=self.settings.limit_wait_seconds, queued=same[0] if same else None,
                new={"account": account, "tenant_id": tenant_id, "event_id": event_id, "action": decision.action,
                     "playbook": decision.playbook, "extravars": decision.extravars, "reason": decision.reason,
                     "worker": self.name},
            )  # fmt: skip
            if job["state"] != "running":  # the tenant's later actions wait with it: they assume this one happened
                log.info("job %s: waits (%s)", job["id"], job["waiting_for"])
                outcomes.append(f"{decision.action} {tenant_id}: job {job['id']} waits ({job['waiting_for']})")
                return outcomes, wanted, False
            job = self._execute(job)
            outcomes.append(f"{decision.action} {tenant_id}: job {job['id']} {job['state']}")
            if job["state"] != "succeeded":
                return outcomes, wanted, False
        return outcomes, wanted, True

    def _customer(self, account: str) -> dict:
        """A new tenant's company and admin, as Kill Bill knows the account: fields of a bad shape are dropped (the
        tenant gets defaults), and the rest go base64-encoded (customer_b64), so that no field is ever templated by
        Ansible, which renders `{{ ... }}` in extra vars. The admin's one-time sign-in link stays out of the job's
        artifacts (tenant_admin_link.yml issues one on request)."""
        try:
            found = self.killbill.account(account)
        except KillBillError as error:
            log.warning("account %s: cannot read its name and e-mail (%s): the tenant gets defaults", account, error)
            found = {}
        customer = customer_profile(found)
        encoded = base64.b64encode(json.dumps(customer).encode()).decode()
        return {"customer_b64": encoded, "saasodoo_show_admin_link": False}

    # -- jobs ------------------------------------------------------------------------------------------------

    def _execute(self, job: dict, retry: bool = True) -> dict:
        """Run the job's playbook with ansible-runner; record success, a retry with backoff, or parking (without
        `retry`: failure, for a periodic pass's job, which the next pass runs again). Every line logged meanwhile
        names the job, its tenant and the run."""
        run_id = f"job-{job['id']}-{job['attempts']}"  # the playbook run's id in the audit chain
        with logs.context(job=job["id"], tenant=job["tenant_id"], run=run_id):
            return self._run_job(job, run_id, retry)

    def _run_job(self, job: dict, run_id: str, retry: bool) -> dict:
        settings = self.settings
        private_dir = self._artifacts_home(job) / f"job-{job['id']:08d}"
        store.audit(
            self.conn, actor=self.actor, tenant_id=job["tenant_id"], kind="job", subject=f"job:{job['id']}",
            detail={"action": job["action"], "playbook": job["playbook"], "extravars": job["extravars"],
                    "attempt": job["attempts"], "run": run_id},
        )  # fmt: skip
        log.info("job %s: %s %s (attempt %s)", job["id"], job["playbook"], job["tenant_id"], job["attempts"])
        started = time.monotonic()
        try:
            private_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            result = ansible_runner.run(
                private_data_dir=str(private_dir),
                project_dir=str(settings.project_dir),
                # ansible-runner adds no playbook to a `binary`: it goes first on the command line
                binary=str(PLAYBOOK_COMMAND),
                cmdline=shlex.quote(str(settings.project_dir / "playbooks" / job["playbook"])),
                inventory=str(settings.inventory),
                envvars={
                    **job_environment(settings.project_dir),
                    # the run is recorded as this job's attempt
                    "SAASODOO_AUDIT_JOB": str(job["id"]),
                    "SAASODOO_AUDIT_RUN": run_id,
                },
                ident=f"attempt-{job['attempts']}",
                rotate_artifacts=settings.max_attempts,
                suppress_env_files=True,  # no copy of the environment or the extra vars in the artifacts
                timeout=settings.job_timeout_seconds,
                quiet=True,
                # Stop the run once another worker has taken the account over (its writes are fenced anyway).
                # With no cancel_callback, ansible-runner would also install its own SIGTERM handler for good:
                # the worker's own (finish this job, then stop) would be lost after the first job.
                cancel_callback=lambda: self.lease is not None and self.lease.lost.is_set(),
                extravars={**settings.playbook_extravars, **job["extravars"], **self._lease_vars()},
            )
            rc, error = result.rc, None if result.status == "successful" else _failure(result)
            parked_because = None if error is None else park_reason(result)
        except Exception as exc:  # ansible-runner could not start the run at all
            rc, error, parked_because = None, f"ansible-runner: {exc}", None
        seconds = time.monotonic() - started
        self._reconnect_if_dropped()
        outcome = {"rc": rc, "error": error, "artifacts_dir": str(private_dir)}
        if error is None:
            finished = store.finish_job(self.conn, job["id"], state="succeeded", **outcome)
        elif not retry:
            finished = store.finish_job(self.conn, job["id"], state="failed", **outcome)
        elif parked_because is not None:  # the playbook says that running it again would fail the same way
            outcome["error"] = parked_because
            finished = store.finish_job(self.conn, job["id"], state="parked", **outcome)
        elif job["attempts"] >= settings.max_attempts:
            finished = store.finish_job(self.conn, job["id"], state="parked", **outcome)
        else:
            finished = store.finish_job(
                self.conn, job["id"], state="queued", run_after_seconds=settings.backoff(job["attempts"]), **outcome
            )
        log.info("job %s: %s in %.1f s%s", job["id"], finished["state"], seconds, f" ({error})" if error else "")
        store.audit(
            self.conn, actor=self.actor, tenant_id=job["tenant_id"], kind="result", subject=f"job:{job['id']}",
            detail={"state": finished["state"], "rc": rc, "error": error, "seconds": round(seconds, 2)},
        )  # fmt: skip
        self._rotate_artifacts(private_dir.parent)
        return finished

    def _lease_vars(self) -> dict:
        """What passes the lease's fencing token to the playbook's registry modules (saasodoo_registry_login)."""
        return {"saasodoo_lease": self.lease.token} if self.lease else {}

    def _reconnect_if_dropped(self) -> None:
        """After a playbook run, which may take an hour: a registry restart meanwhile dropped the worker's
        connection. Connect again, carrying the lease (its fencing decides whether this worker may still write)."""
        try:
            self.conn.execute("SELECT 1")
        except psycopg.OperationalError as error:
            log.warning("registry connection lost during the run (%s): connecting again", error)
            self.conn.close()
            self.conn = self._connect("worker")
            store.carry_lease(self.conn, self.lease.token if self.lease else None)

    def _skip(self, account, tenant_id, event_id, reason) -> dict:
        log.info("skipped (%s): %s", account or "no account", reason)
        return store.insert_job(
            self.conn, account=account or None, tenant_id=tenant_id, event_id=event_id, action="none",
            playbook="", extravars={}, state="skipped", reason=reason,
        )  # fmt: skip

    def _retry_later(self, account, account_jobs, trigger_ids, reason) -> dict:
        """Kill Bill could not be read: read the account again after a backoff (parked when it keeps failing)."""
        conn = self.conn
        if account_jobs:
            job = store.start_job(conn, account_jobs[0]["id"], self.name, {}, account_jobs[0]["reason"])
        else:
            job = store.insert_job(
                conn, account=account, tenant_id=None, event_id=trigger_ids[0] if trigger_ids else None,
                action=CONVERGE, playbook="", extravars={}, state="running", reason="read the account again",
                worker=self.name,
            )  # fmt: skip
        state = "parked" if job["attempts"] >= self.settings.max_attempts else "queued"
        log.warning("account %s: %s (job %s %s)", account, reason, job["id"], state)
        return store.finish_job(
            conn, job["id"], state=state, error=reason, run_after_seconds=self.settings.backoff(job["attempts"])
        )

    def _artifacts_home(self, job: dict) -> Path:
        """Where a job's artifacts go: a schedule's runs (servers_probe alone makes 288 a day) apart from the
        tenants' jobs, so that they never push a parked tenant job's artifacts out."""
        if job["account_id"] is None and job["action"] in SCHEDULES:
            return self.settings.artifacts_dir / "schedules" / job["action"]
        return self.settings.artifacts_dir

    def _rotate_artifacts(self, home: Path) -> None:
        """Keep the newest `artifacts_keep` job directories in home (names sort by job id)."""
        directories = sorted(home.glob("job-*"))
        for old in directories[: max(0, len(directories) - self.settings.artifacts_keep)]:
            shutil.rmtree(old, ignore_errors=True)

    def _audit_decision(self, tenant_id, triggers, subscription, overdue, decisions) -> None:
        """The audit trail's event -> decision links for one tenant (job and result follow in _execute)."""
        if tenant_id is None:
            return
        for event in triggers:
            store.audit(
                self.conn, actor=self.actor, tenant_id=tenant_id, kind="event", subject=f"event:{event['id']}",
                detail={"event_type": event["event_type"], "object_type": event["object_type"],
                        "object_id": event["object_id"], "action_type": (event["meta_data"] or {}).get("actionType")},
            )  # fmt: skip
        store.audit(
            self.conn,
            actor=self.actor,
            tenant_id=tenant_id,
            kind="decision",
            subject=f"subscription:{subscription.get('subscriptionId')}",
            detail={
                "killbill": {key: subscription.get(key) for key in ("state", "planName", "phaseType")},
                "blocked": is_blocked(subscription, overdue),
                "actions": [d.action if isinstance(d, Action) else f"skip: {d.reason}" for d in decisions],
            },
        )

    # -- reconcile -------------------------------------------------------------------------------------------

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
                balance, email = None, None  # a rule waiting on it shows no drift: the account's own pass reads it
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

    def housekeeping(self) -> dict[str, int]:
        """Prune what `retention_days` no longer keeps (one worker at a time); what was deleted, by table."""
        if not store.try_lock(self.conn, store.HOUSEKEEPING_LOCK, "housekeeping"):
            return {}
        try:
            return store.prune(self.conn, self.settings.retention_days)
        finally:
            store.unlock(self.conn, store.HOUSEKEEPING_LOCK, "housekeeping")

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

    def periodic_housekeeping(self) -> None:
        if self.settings.retention_days > 0 and (pruned := self.housekeeping()):
            log.info("housekeeping: pruned %s", ", ".join(f"{n} {table}" for table, n in pruned.items()))

    # -- e-mail to customers -------------------------------------------------------------------------------------

    def send_mail(self) -> list[str]:
        """Send the customers' e-mails that are due (webhook_runner/mail.py); a line for each. Nothing without the
        `mail` settings."""
        if self.settings.mail is None:
            return []
        lines, unreachable = mail.send_due(self.conn, self.settings, self.killbill, self.actor)
        if unreachable:  # no pass until the messages it put off are due again: each would wait for its timeouts
            self._last_mail = time.monotonic() + self.settings.mail.retry_seconds
        return lines

    def periodic_mail(self) -> None:
        """The mail pass of the worker loop. A bug in it is logged, and the worker goes on with the inbox."""
        try:
            lines = self.send_mail()
        except psycopg.OperationalError:
            if self.conn.closed or self.conn.broken:
                raise  # the registry is gone: serve() connects again
            log.exception("the mail pass failed (tried again at the next)")  # a deadlock, a cancelled statement
            return
        except Exception:
            log.exception("the mail pass failed")
            return
        for line in lines:
            log.info("%s", line)

    # -- schedules -------------------------------------------------------------------------------------------

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
        """The schedules' pass of the worker loop: whether it ran anything. A bug in it is logged, and the worker
        goes on with the inbox (the registry gone is serve()'s to handle)."""
        try:
            lines = self.run_schedules()
        except psycopg.OperationalError:
            raise
        except Exception:
            log.exception("the schedules' pass failed")
            return False
        for line in lines:
            log.info("schedule %s", line)
        return bool(lines)


class AccountLease:
    """The renewal of a taken lease: a thread on a connection of its own renews it every third of lease_seconds
    while the worker works, riding out short registry outages (a lease outlives its sessions). `lost` is set, and
    the worker's run cancelled, when another worker has taken the account over, and also when no renewal has
    succeeded for two thirds of lease_seconds: the lease may expire before this worker hears of it, and the run
    must stop before another worker may start the job again."""

    def __init__(self, connect: Callable[[], psycopg.Connection], account: str, token: int, seconds: float):
        self.account, self.token, self.seconds = account, token, seconds
        self.lost, self._stopped = threading.Event(), threading.Event()
        self._connect = connect
        self._thread = threading.Thread(target=self._renew, name=f"lease-{token}", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        conn, renewed = None, time.monotonic()
        while not self._stopped.wait(self.seconds / 3):
            try:
                conn = conn or self._connect()
                if not store.renew_lease(conn, self.token, self.seconds):
                    log.warning("account %s: lease %s was taken over: cancelling the run", self.account, self.token)
                    self.lost.set()
                    break
                renewed = time.monotonic()
            except Exception as error:  # any failure is a missed renewal; the thread must go on renewing
                log.warning("account %s: cannot renew lease %s: %s", self.account, self.token, error)
                if conn is not None:
                    conn.close()
                conn = None
                if time.monotonic() - renewed >= self.seconds * 2 / 3:
                    log.warning("account %s: lease %s not renewed for %.0f s: cancelling the run", self.account,
                                self.token, time.monotonic() - renewed)  # fmt: skip
                    self.lost.set()
                    break
        if conn is not None:
            conn.close()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()


def park_reason(result) -> str | None:
    """Why the failed run needs the operator, when its playbook said so: `set_stats` of park_reason (ansible-runner
    passes what set_stats gathered as the playbook_on_stats event's artifact_data). None for any other failure."""
    for event in result.events:
        if event.get("event") == "playbook_on_stats":
            reason = (event.get("event_data", {}).get("artifact_data") or {}).get("park_reason")
            return str(reason)[:2000] if reason else None
    return None


def _failure(result) -> str:
    """The message of the task that failed (no_log tasks show only 'censored'), else the run's status."""
    message = None
    for event in result.events:
        data = event.get("event_data", {})
        if event.get("event") in ("runner_on_failed", "runner_on_unreachable") and not data.get("ignore_errors"):
            res = data.get("res") or {}
            message = f"{data.get('task', '?')}: {res.get('msg') or res.get('stderr') or 'failed'}"
    return (message or f"ansible-runner status {result.status}, rc {result.rc}")[:2000]
