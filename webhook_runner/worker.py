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

import contextlib
import logging
import os
import socket
import threading
import time
import traceback

import psycopg

from . import mail, store
from .config import RunnerSettings
from .convergence import Convergence
from .execution import AccountLease, Execution
from .killbill import KillBill
from .upkeep import Upkeep

log = logging.getLogger("webhook_runner.worker")


class Worker(Convergence, Execution, Upkeep):
    """A worker: the loop that takes the pending accounts one at a time (the convergence, the jobs' execution and
    the passes between accounts come from the classes it is made of)."""

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
                if self.periodic_schedules() | self.periodic_update():
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
        store.record_audit(
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
