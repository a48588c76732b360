"""webhook_runner.execution.AccountLease: when its renewal gives the account up (integration:
test_webhook_runner.py)."""

import threading
import time

import psycopg

from webhook_runner.execution import AccountLease


class Registry:
    """A registry session as AccountLease uses it: renew_lease's UPDATE finds the token, or does not."""

    def __init__(self, token_held: bool, renewed: threading.Event):
        self.token_held, self.renewed = token_held, renewed

    def execute(self, query, params):
        self.renewed.set()
        return self

    def fetchone(self):
        return {"?column?": 1} if self.token_held else None

    def close(self):
        pass


def test_a_lease_its_worker_cannot_renew_is_given_up_within_two_thirds_of_it():
    """The registry unreachable (every connect fails): the lease may expire without the worker hearing of it, so the
    worker cancels its run first, after two thirds of lease_seconds without a renewal, not after the expiry."""

    def unreachable():
        raise psycopg.OperationalError("connection refused")

    started = time.monotonic()
    lease = AccountLease(unreachable, "acct", 7, seconds=0.9)
    try:
        assert lease.lost.wait(timeout=30)
        assert 0.6 <= time.monotonic() - started < 0.9  # renewals are tried every 0.3 s; none succeeds
    finally:
        lease.stop()


def test_a_lease_taken_over_is_given_up_at_the_first_renewal_and_a_held_one_is_kept():
    renewed = threading.Event()
    taken_over = AccountLease(lambda: Registry(False, renewed), "acct", 7, seconds=0.9)
    try:
        assert taken_over.lost.wait(timeout=30) and renewed.is_set()
    finally:
        taken_over.stop()

    renewals = threading.Event()
    kept = AccountLease(lambda: Registry(True, renewals), "acct", 8, seconds=0.9)
    try:
        for _ in range(4):  # four renewals, past two thirds of the lease: it stays the worker's
            assert renewals.wait(timeout=30)
            renewals.clear()
        assert not kept.lost.is_set()
    finally:
        kept.stop()
