"""One account's convergence: Kill Bill's state read back, the registry's, the decisions, the jobs they make."""

from __future__ import annotations

import base64
import json
import logging

from ansible_collections.saasodoo.platform.plugins.module_utils.lifecycle import ACTIONS

from . import mail, store
from .desired import (
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
from .killbill import KillBillError, KillBillNotFound
from .notification import IGNORED_EVENT_TYPES, KNOWN_EVENT_TYPES, written_off_tag
from .schedules import TENANT_ACTIONS

log = logging.getLogger("webhook_runner.worker")  # the worker's log, whichever file writes to it


# Jobs that only ask for an account to be read again (Kill Bill was unreachable, or reconcile found drift).
CONVERGE, RECONCILE = "converge", "reconcile"


# An account's e-mail address Kill Bill did not give (it did not answer): a new tenant not known to be paid waits for
# it. A marker no address can equal.
ADDRESS_UNREAD = object()
PURGEABLE = ACTIONS["tenant_purge"].starts_from  # a purge queued before a reactivation is moot


class Convergence:
    """A Worker's convergence of one Kill Bill account: read its state and the registry's, decide (desired.py),
    carry the decisions out as jobs (worker.py)."""

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
            balance, email = None, ADDRESS_UNREAD
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
        Odoo restarted or updated: closed unrun when the tenant is no longer active)."""
        conn = self.conn
        for chore in store.due_chores(conn, account, [*TENANT_ACTIONS, *store.OPERATOR_ACTIONS]):
            if chore["action"] == "purge" and store.tenant_status(conn, chore["tenant_id"]) not in PURGEABLE:
                store.close_job(conn, chore["id"], "skipped", "the tenant is no longer terminated (reactivated)")
                continue
            operator = chore["action"] in store.OPERATOR_ACTIONS
            if operator and (status := store.tenant_status(conn, chore["tenant_id"])) != "active":
                store.close_job(conn, chore["id"], "skipped", f"the tenant is {status} now: its Odoo is not run")
                continue
            self._execute(store.start_job(conn, chore["id"], self.name, chore["extravars"], chore["reason"]))

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

    def _address(self, email: str | object | None) -> str | object | None:
        """The keyed hash of the account's e-mail address, for one trial per address (with its key and rule only)."""
        key, rules = self.settings.customer_email_key, self.settings.billing_rules
        if not (key and email and rules.one_trial_per_customer and rules.one_trial_per_email):
            return None
        return ADDRESS_UNREAD if email is ADDRESS_UNREAD else email_hash(key, email)

    def _trial_by_address(self, account, address, subscription, balance, tenant_id, decisions, claim=False) -> list:
        """A new tenant in its trial (or unpaid) has its account's e-mail address's trial, unless another account's
        tenant had it: then it waits until paid, as one trial per account says. With `claim`, the trial is taken
        (registry.trial_claims), else only looked up (reconcile's check writes nothing)."""
        provision = any(isinstance(d, Action) and d.action == "provision" for d in decisions)
        if not (address and provision and (why := unpaid(subscription, balance))):
            return decisions
        if address is ADDRESS_UNREAD:  # Kill Bill did not answer: no trial on an address nobody checked
            return [
                Skip(
                    tenant_id,
                    f"one trial per customer (per e-mail address): the address of account {account} could not be read"
                    f" from Kill Bill; {tenant_id} is provisioned once it is ({why})",
                    recheck=True,
                )
            ]
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

    def _audit_decision(self, tenant_id, triggers, subscription, overdue, decisions) -> None:
        """The audit trail's event -> decision links for one tenant (job and result follow in _execute)."""
        if tenant_id is None:
            return
        for event in triggers:
            store.record_audit(
                self.conn, actor=self.actor, tenant_id=tenant_id, kind="event", subject=f"event:{event['id']}",
                detail={"event_type": event["event_type"], "object_type": event["object_type"],
                        "object_id": event["object_id"], "action_type": (event["meta_data"] or {}).get("actionType")},
            )  # fmt: skip
        store.record_audit(
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
