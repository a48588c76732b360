#!/usr/bin/env python3
"""Stand-in for Kill Bill's REST API and push notifications: NOT Kill Bill. See README.md beside it.

Kill Bill (a Java server with MySQL/PostgreSQL) cannot run on this machine. The webhook runner must work
unchanged against a real Kill Bill, so this double copies the parts of the wire contract the runner sees,
as Kill Bill's own sources and docs define them:

- the push notification (killbill/killbill PushNotificationListener.java, NotificationJson.java;
  https://docs.killbill.io/latest/push_notifications.html): the 5-field body byte for byte (metaData
  double-encoded), the headers of Kill Bill's JDK client, no auth, 15 s timeout, redirects not followed, 2xx
  only counts as success, retries on the `15m,30m,2h,12h,1d` schedule (NotificationConfig.java) with a
  byte-identical body, then a WARN and the event is dropped;
- the events per operation (BeatrixListener.java; Kill Bill's REST tests TestEntitlement.java, TestOverdue.java)
  with the metaData schemas in constructor order (killbill-plugin-api ExtBusEventType.java and metaData classes);
- the REST calls the runner makes (https://apidocs.killbill.io) with Kill Bill's field names, auth, 401/400/404
  and BillingExceptionJson bodies, the single-valued callback registration (TenantResource.java, killbill-api
  TenantKV.java) and the test clock (TestResource.java).

Simplified on purpose (documented in README.md):
- Catalog: an uploaded catalog XML (tenant_config.py) gives a plan's product, trial and recurring price; a plan it
  does not have (or any plan before an upload) is still accepted: `basic-monthly` is product "Basic", MONTHLY,
  price list DEFAULT, with an optional trial (days) and a recurring price given to the constructor. BASE
  subscriptions only.
- No proration: a plan change out of trial charges the new plan's full price up to the current charged-through date.
- Overdue: with an uploaded overdue configuration (tenant_config.py), its states by the age of the earliest unpaid
  invoice, reevaluated at each invoice, payment and clock move; without one, any invoice with a balance > 0 puts
  the account at once into state `BLOCKED` (entitlement and changes blocked). Paying everything clears it. No
  AUTO_INVOICING_OFF tag, no payment retries (use the stand-in's `/standin/accounts/{id}/pay`); changes are not
  refused while BLOCKED. Every account has a pretend default payment method.
- Plan changes are immediate; pause/resume ignore requestedDate; each subscription keeps its own bill cycle day.
- The test clock only moves when it is set.
"""

from __future__ import annotations

import argparse
import calendar
import heapq
import http.client
import itertools
import json
import logging
import re
import signal
import sys
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from werkzeug.exceptions import HTTPException, UnsupportedMediaType

try:  # a package import (tests), or the file run as a script (make demo, the CLI)
    from .tenant_config import ConfigRefused, TenantConfig
except ImportError:
    from tenant_config import ConfigRefused, TenantConfig
from werkzeug.routing import Map, Rule
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

log = logging.getLogger("killbill.standin")

START_CLOCK = datetime(2026, 10, 1, tzinfo=UTC)
CATALOG_EFFECTIVE = datetime(2026, 1, 1, tzinfo=UTC)
DEFAULT_RETRIES = tuple(timedelta(minutes=m) for m in (15, 30, 120, 720, 1440))  # 15m,30m,2h,12h,1d
DEFAULT_PRICE = Decimal("10.00")
CLEAR_STATE = "__KILLBILL__CLEAR__OVERDUE_STATE__"
BLOCKED_STATE = "BLOCKED"
OVERDUE_SERVICE = "overdue-service"
HTTP2_SETTINGS = "AAEAAEAAAAIAAAABAAMAAABkAAQBAAAAAAUAAEAA"
API = "/1.0/kb"

ACCOUNT_EXC = "org.killbill.billing.account.api.AccountApiException"
SUBSCRIPTION_EXC = "org.killbill.billing.entitlement.api.SubscriptionApiException"
ENTITLEMENT_EXC = "org.killbill.billing.entitlement.api.EntitlementApiException"
INVOICE_EXC = "org.killbill.billing.invoice.api.InvoiceApiException"
ARGUMENT_EXC = "java.lang.IllegalArgumentException"
CATALOG_EXC = "org.killbill.billing.catalog.api.CatalogApiException"
TAG_EXC = "org.killbill.billing.util.api.TagApiException"
# killbill-api util/tag/ControlTagType.java: WRITTEN_OFF is new UUID(0, 4), for invoices only. The only tag here.
WRITTEN_OFF = ("00000000-0000-0000-0000-000000000004", "WRITTEN_OFF")


# ---------------------------------------------------------------------------------------------- wire format


def dumps(value) -> str:
    """Compact JSON like Jackson: keys in insertion order, nulls written, Decimal as Java's BigDecimal.toString().

    For values without Decimal this equals `json.dumps(value, separators=(",", ":"), ensure_ascii=False)`.
    Python's str(Decimal) and Java's BigDecimal.toString() both follow the to-scientific-string rules (`0E-9`).
    """
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k, ensure_ascii=False)}:{dumps(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(dumps(v) for v in value) + "]"
    if isinstance(value, Decimal):
        return str(value)
    return json.dumps(value, ensure_ascii=False)


def encode_notification(event_type: str, account_id, object_type: str, object_id, meta: dict | None) -> bytes:
    """NotificationJson (killbill/killbill NotificationJson.java): 5 keys in creator order; metaData is a JSON
    string, or null."""
    body = {
        "eventType": event_type,
        "accountId": account_id,
        "objectType": object_type,
        "objectId": object_id,
        "metaData": None if meta is None else dumps(meta),
    }
    return dumps(body).encode()


def kb_datetime(value: datetime) -> str:
    """Joda DateTime as Kill Bill writes it: ISO UTC with milliseconds, `2026-10-01T00:00:00.000Z`."""
    value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S") + f".{value.microsecond // 1000:03d}Z"


def subscription_meta(action: str, bundle_external_key: str, undo: bool = False) -> dict:
    return {"actionType": action, "bundleExternalKey": bundle_external_key, "subscriptionChangeUndo": undo}


def invoice_payment_meta(payment_id, attempt_id, payment_date: datetime, amount: Decimal, currency: str, cookie_id):
    return {
        "paymentId": payment_id,
        "paymentAttemptId": attempt_id,
        "invoicePaymentType": "ATTEMPT",
        "paymentDate": kb_datetime(payment_date),
        "amount": amount,
        "currency": currency,
        "linkedInvoicePaymentId": None,
        "paymentCookieId": cookie_id,
        "processedCurrency": currency,
    }


def payment_meta(transaction_id, amount: Decimal, currency: str, status: str, effective_date: datetime) -> dict:
    return {
        "paymentTransactionId": transaction_id,
        "amount": amount,
        "currency": currency,
        "status": status,
        "transactionType": "PURCHASE",
        "effectiveDate": kb_datetime(effective_date),
    }


def blocking_state_meta(blockable_id, state_name: str, blocked: bool, effective_date: datetime) -> dict:
    """An overdue-service blocking state on the account: entitlement blocked (or unblocked), billing untouched."""
    return {
        "blockableId": blockable_id,
        "service": OVERDUE_SERVICE,
        "stateName": state_name,
        "blockingType": "ACCOUNT",
        "effectiveDate": kb_datetime(effective_date),
        "transitionedToBlockedBilling": False,
        "transitionedToUnblockedBilling": False,
        "transitionedToBlockedEntitlement": blocked,
        "transitionedToUnblockedEntitlement": not blocked,
    }


@dataclass(frozen=True)
class Notification:
    event_type: str
    body: bytes


def _request_headers(parts, body: bytes, h2c_headers: bool) -> list[tuple[str, str]]:
    """Headers in the order and case of the real capture (https://docs.killbill.io/latest/push_notifications.html);
    the h2c trio only over plain http."""
    host = parts.netloc.rpartition("@")[2]
    head = [("content-length", str(len(body))), ("host", host)]
    if h2c_headers and parts.scheme == "http":
        head = [
            ("connection", "Upgrade, HTTP2-Settings"),
            *head,
            ("http2-settings", HTTP2_SETTINGS),
            ("upgrade", "h2c"),
        ]
    return [*head, ("content-type", "application/json; charset=UTF-8"), ("user-agent", "KillBill/1.0")]


def _post(url: str, body: bytes, timeout: float, h2c_headers: bool) -> tuple[int | None, str | None]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None, f"unsupported callback URL scheme {parts.scheme!r}"
    connection_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = connection_class(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.putrequest("POST", (parts.path or "/") + (f"?{parts.query}" if parts.query else ""), True, True)
        for name, value in _request_headers(parts, body, h2c_headers):
            conn.putheader(name, value)
        conn.endheaders(body)
        response = conn.getresponse()  # never follows redirects: a 3xx is just a status
        response.read()
        return response.status, None
    except (OSError, http.client.HTTPException) as exc:
        return None, f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()


def post_notification(url: str, body: bytes, timeout: float = 15.0, h2c_headers: bool = True) -> int | None:
    """POST one notification body exactly as Kill Bill does; the status, or None on a connection error/timeout."""
    return _post(url, body, timeout, h2c_headers)[0]


def parse_span(text: str) -> float:
    """`15m`, `2h`, `1d`, `30s`, `0.2` (seconds) -> seconds, like Kill Bill's retries property."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*", text)
    if not match:
        raise ValueError(f"bad time span {text!r}")
    scale = {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
    return float(match.group(1)) * scale


def add_months(value: datetime, months: int, day: int | None = None) -> datetime:
    index = value.month - 1 + months
    year, month = value.year + index // 12, index % 12 + 1
    return value.replace(year=year, month=month, day=min(day or value.day, calendar.monthrange(year, month)[1]))


# ---------------------------------------------------------------------------------------------- model


class KbError(Exception):
    """Rendered as Kill Bill's BillingExceptionJson."""

    def __init__(self, status: int, class_name: str, code: int | None, message: str):
        super().__init__(message)
        self.status, self.class_name, self.code, self.message = status, class_name, code, message

    def response(self) -> Response:
        body = {"className": self.class_name, "code": self.code, "message": self.message}
        body |= {"causeClassName": None, "causeMessage": None, "stackTrace": []}
        return Response(dumps(body), self.status, content_type="application/json")


def _bad_request(message: str) -> KbError:
    return KbError(400, ARGUMENT_EXC, None, message)


def _new_id() -> str:
    return str(uuid.uuid4())


@dataclass
class Account:
    id: str
    name: str | None
    external_key: str
    email: str | None
    currency: str
    reference_time: datetime
    payment_method_id: str = field(default_factory=_new_id)
    bcd: int = 0
    fail_payments: bool = False
    overdue_blocked: bool = False  # entitlement and changes blocked by the overdue state
    overdue_state: str = CLEAR_STATE
    # Kept as given (AccountJson); Kill Bill's DefaultAccount falls back to UTC for a missing time zone.
    locale: str | None = None
    time_zone: str = "UTC"
    country: str | None = None


@dataclass
class Bundle:
    id: str
    account_id: str
    external_key: str
    paused: bool = False


@dataclass
class SubEvent:
    """One EventSubscriptionJson entry; future ones (phase, pending stop) are listed too, as Kill Bill does."""

    when: datetime
    type: str
    plan: str
    phase: str
    service: str
    state: str
    blocks_billing: bool = False
    blocks_entitlement: bool = False
    id: str = field(default_factory=_new_id)


@dataclass
class Subscription:
    id: str
    account_id: str
    bundle_id: str
    external_key: str
    plan: str
    start: datetime
    phase: str  # TRIAL or EVERGREEN
    trial_end: datetime | None
    ctd: datetime  # charged-through
    bcd: int
    ent_end: datetime | None = None
    bill_end: datetime | None = None
    ent_done: bool = False
    bill_done: bool = False
    events: list[SubEvent] = field(default_factory=list)

    def phase_name(self, phase: str | None = None) -> str:
        return f"{self.plan}-{(phase or self.phase).lower()}"


@dataclass
class Invoice:
    id: str
    account_id: str
    number: int
    created: datetime
    currency: str
    items: list[dict]
    paid: Decimal = Decimal(0)
    written_off_tag: str | None = None  # the id of its WRITTEN_OFF tag

    @property
    def amount(self) -> Decimal:
        return sum((item["amount"] for item in self.items), Decimal(0))

    @property
    def balance(self) -> Decimal:
        # invoice/.../model/DefaultInvoice.java getBalance: zero for a written-off invoice, so it leaves the account's
        # balance (DefaultInvoiceDao.getAccountBalance) and its overdue state.
        return Decimal(0) if self.written_off_tag else self.amount - self.paid


@dataclass
class _Delivery:
    notification: Notification
    attempt: int = 0
    url: str | None = None  # retries keep the URL of the failed attempt; first attempts use the current one


def product_name(plan: str) -> str:
    return plan.split("-")[0].capitalize()


class KillBillStandin:
    """In-memory Kill Bill for one tenant: REST API under /1.0/kb and a push notification sender."""

    def __init__(
        self,
        *,
        username: str = "admin",
        password: str,
        api_key: str,
        api_secret: str,
        retries=DEFAULT_RETRIES,
        trials: dict[str, int] | None = None,
        prices: dict | None = None,
        deliver: bool = True,
        dispatch_threads: int = 1,
        timeout: float = 15.0,
        h2c_headers: bool = True,
    ):
        self._credentials = (username, password, api_key, api_secret)
        self.retries = [r.total_seconds() if isinstance(r, timedelta) else float(r) for r in retries]
        self.trials = dict(trials or {})  # used for a plan no uploaded catalog has (there is none at first)
        self.config = TenantConfig()  # the uploaded catalog and overdue configuration
        self.prices = {plan: Decimal(str(price)).quantize(Decimal("0.01")) for plan, price in (prices or {}).items()}
        self.deliver, self.dispatch_threads = deliver, dispatch_threads
        self.timeout, self.h2c_headers = timeout, h2c_headers
        self._lock = threading.Lock()
        self._cv = threading.Condition(self._lock)  # one lock: model, outbox, retries
        self._now = START_CLOCK
        self._accounts: dict[str, Account] = {}
        self._bundles: dict[str, Bundle] = {}
        self._subs: dict[str, Subscription] = {}
        self._invoices: dict[str, Invoice] = {}
        self._invoice_numbers = itertools.count(1)
        self._callback: str | None = None
        self._manual: list[Notification] = []
        self._outbox: deque[_Delivery] = deque()
        self._retry_heap: list[tuple[float, int, datetime, _Delivery]] = []
        self._seq = itertools.count()
        self._inflight = 0
        self._stopping = False
        self._threads: list[threading.Thread] = []
        self._server = None
        self.url: str | None = None
        self.deliveries: list[tuple[bytes, int, int | str]] = []  # (body, attempt, status or error text)
        self._routes = Map([Rule(path, methods=methods, endpoint=name) for path, methods, name in _ROUTES])

    # ------------------------------------------------------------------ lifecycle and test helpers

    def start(self, host: str = "127.0.0.1", port: int = 0) -> KillBillStandin:
        self._server = make_server(host, port, self.wsgi, threaded=True)
        self.url = f"http://{host}:{self._server.server_port}"
        workers = [self._dispatch_loop] * self.dispatch_threads + [self._retry_loop] if self.deliver else []
        serve = lambda: self._server.serve_forever(poll_interval=0.05)  # noqa: E731  (shutdown() waits one poll)
        for target in [serve, *workers]:
            thread = threading.Thread(target=target, daemon=True, name="kb-standin")
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        for thread in self._threads:
            thread.join(timeout=self.timeout + 1)

    def drain_notifications(self) -> list[Notification]:
        """Manual mode (deliver=False): every notification so far, oldest first; the list is emptied."""
        with self._lock:
            drained, self._manual = self._manual, []
            return drained

    def wait_idle(self, timeout: float = 5.0, within: float = 0.0) -> tuple[bool, int]:
        """Wait until nothing is queued or in flight and no retry is due within `within` seconds.

        Returns (idle, number of retries still scheduled): idle does not mean that no retry is pending.
        """
        deadline = time.monotonic() + timeout
        with self._cv:
            while True:
                due_soon = bool(self._retry_heap) and self._retry_heap[0][0] <= time.monotonic() + within
                if not self._outbox and not self._inflight and not due_soon:
                    return True, len(self._retry_heap)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False, len(self._retry_heap)
                self._cv.wait(remaining)

    @property
    def now(self) -> datetime:
        return self._now

    # ------------------------------------------------------------------ sender

    def _emit(self, event_type: str, account_id, object_type: str, object_id, meta: dict | None = None) -> None:
        notification = Notification(
            event_type, encode_notification(event_type, account_id, object_type, object_id, meta)
        )
        if self.deliver:
            self._outbox.append(_Delivery(notification))
            self._cv.notify_all()
        else:
            self._manual.append(notification)

    def _emit_sub(self, sub: Subscription, event_type: str, *actions: str) -> None:
        for action in actions:
            meta = subscription_meta(action, self._bundles[sub.bundle_id].external_key)
            self._emit(event_type, sub.account_id, "SUBSCRIPTION", sub.id, meta)

    def _dispatch_loop(self) -> None:
        while True:
            with self._cv:
                while not self._outbox and not self._stopping:
                    self._cv.wait()
                if self._stopping:
                    return
                delivery = self._outbox.popleft()
                url = delivery.url or self._callback
                self._inflight += 1
            status = error = None
            if url is None:
                log.debug("no callback registered: %s not sent", delivery.notification.event_type)
            else:
                status, error = _post(url, delivery.notification.body, self.timeout, self.h2c_headers)
                log.info(
                    "push %s attempt=%d to %s -> %s",
                    delivery.notification.event_type,
                    delivery.attempt,
                    _loggable(url),
                    status if error is None else error,
                )
            with self._cv:
                self._inflight -= 1
                if url is not None:
                    self.deliveries.append((delivery.notification.body, delivery.attempt, error or status))
                    if status is None or not 200 <= status < 300:
                        self._schedule_retry(delivery, url)
                self._cv.notify_all()

    def _schedule_retry(self, delivery: _Delivery, url: str) -> None:
        if delivery.attempt >= len(self.retries):
            log.warning(
                "Max attempt number reached for push notification %s to %s: dropped",
                delivery.notification.event_type,
                _loggable(url),
            )
            return
        delay = self.retries[delivery.attempt]
        retry = _Delivery(delivery.notification, delivery.attempt + 1, url)
        due_clock = self._now + timedelta(seconds=delay)
        heapq.heappush(self._retry_heap, (time.monotonic() + delay, next(self._seq), due_clock, retry))

    def _retry_loop(self) -> None:
        """Moves retries to the outbox when they are due on the real clock; sleeps on the condition variable."""
        with self._cv:
            while not self._stopping:
                now = time.monotonic()
                while self._retry_heap and self._retry_heap[0][0] <= now:
                    self._outbox.append(heapq.heappop(self._retry_heap)[3])
                    self._cv.notify_all()
                self._cv.wait(self._retry_heap[0][0] - now if self._retry_heap else None)

    def _fire_retries_due_on_test_clock(self) -> None:
        due = [entry for entry in self._retry_heap if entry[2] <= self._now]
        if due:
            self._retry_heap = [entry for entry in self._retry_heap if entry[2] > self._now]
            heapq.heapify(self._retry_heap)
            self._outbox.extend(entry[3] for entry in sorted(due))
            self._cv.notify_all()

    # ------------------------------------------------------------------ lookups (lock held)

    def _account(self, account_id) -> Account:
        if (account := self._accounts.get(str(account_id))) is None:
            raise KbError(404, ACCOUNT_EXC, 3002, f"Account does not exist for id {account_id}")
        return account

    def _subscription(self, sub_id) -> Subscription:
        if (sub := self._subs.get(sub_id)) is None:
            raise KbError(404, SUBSCRIPTION_EXC, 1082, f"Unknown subscription {sub_id}")
        return sub

    def _bundle(self, bundle_id) -> Bundle:
        if (bundle := self._bundles.get(bundle_id)) is None:
            raise KbError(404, SUBSCRIPTION_EXC, 1081, f"Could not find a bundle matching id {bundle_id}")
        return bundle

    def _invoice(self, invoice_id) -> Invoice:
        if (invoice := self._invoices.get(invoice_id)) is None:
            raise KbError(404, INVOICE_EXC, 4006, f"No invoice could be found for id {invoice_id}.")
        return invoice

    def _price(self, plan: str) -> Decimal:
        defined = self.config.plan(plan, self._now)
        return defined.price if defined else self.prices.get(plan, DEFAULT_PRICE)

    def _product(self, plan: str) -> str:
        defined = self.config.plan(plan, self._now)
        return defined.product if defined else product_name(plan)

    def _trial_days(self, plan: str) -> int:
        defined = self.config.plan(plan, self._now)
        return (defined.trial_days or 0) if defined else int(self.trials.get(plan, 0))

    def _state(self, sub: Subscription) -> str:
        if sub.ent_done:
            return "CANCELLED"
        if self._bundles[sub.bundle_id].paused or self._accounts[sub.account_id].overdue_blocked:
            return "BLOCKED"
        return "ACTIVE"

    # ------------------------------------------------------------------ operations (lock held)

    def create_account(self, body: dict) -> Account:
        account_id = _new_id()
        key = body.get("externalKey") or account_id
        if any(a.external_key == key for a in self._accounts.values()):
            raise KbError(409, ACCOUNT_EXC, 3000, f"Account already exists for key {key}")
        account = Account(
            account_id, body.get("name"), key, body.get("email"), body.get("currency") or "USD", self._now,
            locale=body.get("locale"), time_zone=body.get("timeZone") or "UTC", country=body.get("country"),
        )  # fmt: skip
        self._accounts[account_id] = account
        self._emit("ACCOUNT_CREATION", account_id, "ACCOUNT", account_id)
        return account

    def create_subscription(self, body: dict) -> Subscription:
        account = self._account(body.get("accountId"))
        plan = _plan_from(body)
        bundle_key = body.get("bundleExternalKey")
        if bundle_key and any(
            b.external_key == bundle_key and any(s.bundle_id == b.id and not s.ent_done for s in self._subs.values())
            for b in self._bundles.values()
        ):
            raise KbError(400, ENTITLEMENT_EXC, 1014, f"Active bundle with external key {bundle_key} already exists")
        bundle = Bundle(_new_id(), account.id, "")
        bundle.external_key = bundle_key or bundle.id
        self._bundles[bundle.id] = bundle
        sub_id, now, trial_days = _new_id(), self._now, self._trial_days(plan)
        trial_end = now + timedelta(days=trial_days) if trial_days > 0 else None
        first_bill = trial_end or now
        sub = Subscription(
            sub_id, account.id, bundle.id, body.get("externalKey") or sub_id, plan, now,
            "TRIAL" if trial_end else "EVERGREEN", trial_end, now, first_bill.day,
        )  # fmt: skip
        self._subs[sub_id] = sub
        self._add_event(sub, now, "START_ENTITLEMENT", "entitlement-service", "ENT_STARTED")
        self._add_event(sub, now, "START_BILLING", "billing-service", "START_BILLING")
        if trial_end:
            self._add_event(sub, trial_end, "PHASE", "entitlement+billing-service", "PHASE", phase="EVERGREEN")
        self._emit("ENTITLEMENT_CREATION", account.id, "SUBSCRIPTION", sub_id)
        self._emit_sub(sub, "SUBSCRIPTION_CREATION", "REQUESTED", "EFFECTIVE")
        if account.bcd == 0:
            account.bcd = sub.bcd
            self._emit("ACCOUNT_CHANGE", account.id, "ACCOUNT", account.id)
        if trial_end:
            self._create_invoice(account, [self._item(sub, "FIXED", now, None, Decimal(0))])
        else:
            self._bill_period(sub, now)
        return sub

    def change_plan(self, sub: Subscription, body: dict) -> None:
        if body.get("requestedDate") is not None and body.get("billingPolicy") is not None:
            raise _bad_request("Only one of requestedDate or billingPolicy can be specified")
        plan = _plan_from(body)
        if sub.ent_done:
            raise KbError(
                400, SUBSCRIPTION_EXC, 1021, f"Subscription {sub.id} is in state CANCELLED: Failed to change plan"
            )
        if sub.ent_end is not None:
            raise KbError(
                400, SUBSCRIPTION_EXC, 1022, f"Subscription {sub.id} is future cancelled: Failed to change plan"
            )
        sub.plan = plan
        for event in sub.events:
            if event.type == "PHASE" and event.when > self._now:
                event.plan, event.phase = plan, sub.phase_name("EVERGREEN")
        self._add_event(sub, self._now, "CHANGE", "entitlement+billing-service", "CHANGE")
        self._emit_sub(sub, "SUBSCRIPTION_CHANGE", "REQUESTED", "EFFECTIVE")
        account = self._accounts[sub.account_id]
        if sub.phase == "TRIAL":
            self._create_invoice(account, [self._item(sub, "FIXED", self._now, None, Decimal(0))])
        elif sub.ctd > self._now:  # no proration: the new plan's full price up to the charged-through date
            self._create_invoice(account, [self._item(sub, "RECURRING", self._now, sub.ctd, self._price(plan))])
        else:
            self._bill_period(sub, self._now)

    def cancel(self, sub: Subscription, args) -> None:
        if sub.ent_done:
            raise KbError(500, SUBSCRIPTION_EXC, 1031, f"Subscription {sub.id} is in state CANCELLED: Failed to cancel")
        ent_policy, bill_policy = args.get("entitlementPolicy"), args.get("billingPolicy")
        for value in (ent_policy, bill_policy):
            if value not in (None, "IMMEDIATE", "END_OF_TERM", "START_OF_TERM"):
                raise _bad_request(f"No enum constant {value}")
        eot = max(sub.ctd, self._now)
        if ent_policy is None and args.get("requestedDate"):
            ent_end = bill_end = max(_parse_when(args["requestedDate"]), self._now)
        else:
            ent_end = eot if ent_policy == "END_OF_TERM" else self._now
            bill_end = eot if bill_policy in (None, "END_OF_TERM") else self._now  # catalog default: END_OF_TERM
        sub.events = [e for e in sub.events if e.type not in ("STOP_ENTITLEMENT", "STOP_BILLING")]
        sub.ent_end, sub.bill_end = ent_end, bill_end
        self._add_event(sub, ent_end, "STOP_ENTITLEMENT", "entitlement-service", "ENT_CANCELLED", entitlement=True)
        self._add_event(sub, bill_end, "STOP_BILLING", "billing-service", "STOP_BILLING", billing=True)
        self._emit_sub(sub, "SUBSCRIPTION_CANCEL", "REQUESTED")
        self._advance(self._now)  # what is effective now happens now

    def uncancel(self, sub: Subscription) -> None:
        if sub.ent_end is None or sub.ent_done or sub.bill_done:
            message = f"Subscription {sub.id} was not in a cancelled state: Failed to uncancel plan"
            raise KbError(500, SUBSCRIPTION_EXC, 1070, message)
        sub.ent_end = sub.bill_end = None
        sub.events = [e for e in sub.events if e.type not in ("STOP_ENTITLEMENT", "STOP_BILLING")]
        self._emit_sub(sub, "SUBSCRIPTION_UNCANCEL", "EFFECTIVE")

    def pause(self, bundle: Bundle, paused: bool) -> None:
        if paused and bundle.paused:
            raise KbError(400, ENTITLEMENT_EXC, 8001, f"The blockable entity {bundle.id} is already blocked")
        if paused == bundle.paused:
            return
        bundle.paused = paused
        verb, state = ("PAUSE", "ENT_BLOCKED") if paused else ("RESUME", "ENT_CLEAR")
        for sub in self._subs.values():
            if sub.bundle_id == bundle.id and not sub.ent_done:
                for what in ("ENTITLEMENT", "BILLING"):
                    self._add_event(
                        sub,
                        self._now,
                        f"{verb}_{what}",
                        "entitlement-service",
                        state,
                        billing=paused,
                        entitlement=paused,
                    )
                if not paused and sub.phase == "EVERGREEN":
                    sub.ctd = max(sub.ctd, self._now)  # paused time is not billed; billing restarts today
        self._emit(f"BUNDLE_{verb}", bundle.account_id, "BUNDLE", bundle.id)
        if not paused:
            self._advance(self._now)

    def pay(self, account: Account) -> None:
        for invoice in self._invoices.values():
            if invoice.account_id == account.id and invoice.balance > 0:
                self._attempt_payment(account, invoice)
        self._reevaluate_overdue(account)

    def write_off(self, invoice: Invoice, written_off: bool) -> None:
        """An invoice tagged WRITTEN_OFF, or the tag removed (InvoiceResource createInvoiceTags / deleteInvoiceTags,
        through TagUserApi): TAG_CREATION or TAG_DELETION of a TAG with TagMetadata (beatrix BeatrixListener
        CONTROL_TAG_*), then the account's overdue state reevaluated (overdue OverdueListener handleTagInsert and
        handleTagRemoval). Adding a tag the invoice has does nothing."""
        if bool(invoice.written_off_tag) == written_off:
            return
        tag_id = _new_id() if written_off else invoice.written_off_tag
        invoice.written_off_tag = tag_id if written_off else None
        event = "TAG_CREATION" if written_off else "TAG_DELETION"
        self._emit(event, invoice.account_id, "TAG", tag_id, {"tagDefinitionName": WRITTEN_OFF[1]})
        self._reevaluate_overdue(self._accounts[invoice.account_id])

    def set_clock(self, target: datetime) -> None:
        self._advance(target)
        self._now = target
        if self.config.overdue:  # the states are reached by time (Kill Bill reevaluates on its schedule)
            for account in self._accounts.values():
                self._reevaluate_overdue(account)
        self._fire_retries_due_on_test_clock()

    # ------------------------------------------------------------------ billing engine (lock held)

    def _add_event(self, sub, when, event_type, service, state, *, billing=False, entitlement=False, phase=None):
        sub.events.append(
            SubEvent(when, event_type, sub.plan, sub.phase_name(phase), service, state, billing, entitlement)
        )

    def _item(self, sub: Subscription, item_type: str, start: datetime, end: datetime | None, amount: Decimal) -> dict:
        return {"id": _new_id(), "sub": sub, "plan": sub.plan, "phase": sub.phase_name(), "type": item_type,
                "start": start.date(), "end": end and end.date(), "amount": amount}  # fmt: skip

    def _bill_period(self, sub: Subscription, start: datetime) -> None:
        end = add_months(start, 1, sub.bcd)
        sub.ctd = end
        self._create_invoice(
            self._accounts[sub.account_id], [self._item(sub, "RECURRING", start, end, self._price(sub.plan))]
        )

    def _create_invoice(self, account: Account, items: list[dict]) -> None:
        invoice = Invoice(_new_id(), account.id, next(self._invoice_numbers), self._now, account.currency, items)
        self._invoices[invoice.id] = invoice
        self._emit("INVOICE_CREATION", account.id, "INVOICE", invoice.id)
        if invoice.balance > 0:
            self._attempt_payment(account, invoice)
            self._reevaluate_overdue(account)

    def _attempt_payment(self, account: Account, invoice: Invoice) -> None:
        payment_id, attempt_id, cookie_id, transaction_id = (_new_id() for _ in range(4))
        amount, currency, now = invoice.balance, invoice.currency, self._now
        if account.fail_payments:
            meta = invoice_payment_meta(payment_id, attempt_id, now, Decimal(0), currency, cookie_id)
            self._emit("INVOICE_PAYMENT_FAILED", account.id, "INVOICE", invoice.id, meta)
            self._emit("PAYMENT_FAILED", account.id, "PAYMENT", payment_id,
                       payment_meta(transaction_id, amount, currency, "PAYMENT_FAILURE", now))  # fmt: skip
        else:
            invoice.paid += amount
            meta = invoice_payment_meta(payment_id, attempt_id, now, amount, currency, cookie_id)
            self._emit("INVOICE_PAYMENT_SUCCESS", account.id, "INVOICE", invoice.id, meta)
            self._emit("PAYMENT_SUCCESS", account.id, "PAYMENT", payment_id,
                       payment_meta(transaction_id, amount, currency, "SUCCESS", now))  # fmt: skip

    def _reevaluate_overdue(self, account: Account) -> None:
        unpaid = [i.created for i in self._invoices.values() if i.account_id == account.id and i.balance > 0]
        if self.config.overdue:  # the uploaded states, by the age of the earliest unpaid invoice
            days = (self._now - min(unpaid)).total_seconds() / 86400 if unpaid else None
            reached = self.config.overdue_state(days)
            state, blocked = (reached.name, reached.disable_entitlement) if reached else (CLEAR_STATE, False)
        else:  # none uploaded: BLOCKED at once (the simplification README.md documents)
            blocked = bool(unpaid)
            state = BLOCKED_STATE if blocked else CLEAR_STATE
        if state == account.overdue_state:
            return
        account.overdue_blocked, account.overdue_state = blocked, state
        for sub in self._subs.values():
            if sub.account_id == account.id and not sub.ent_done:
                self._add_event(sub, self._now, "SERVICE_STATE_CHANGE", OVERDUE_SERVICE, state, entitlement=blocked)
        self._emit(
            "BLOCKING_STATE",
            account.id,
            "ACCOUNT",
            account.id,
            blocking_state_meta(account.id, state, blocked, self._now),
        )
        self._emit("OVERDUE_CHANGE", account.id, "ACCOUNT", account.id)

    def _due(self, sub: Subscription, target: datetime):
        """(when, priority, action) of the transitions of `sub` that are due at `target`."""
        if sub.bill_end and not sub.bill_done and sub.bill_end <= target:
            yield sub.bill_end, 0, self._billing_stopped
        if sub.ent_end and not sub.ent_done and sub.ent_end <= target:
            yield sub.ent_end, 1, self._entitlement_stopped
        if sub.bill_done:
            return
        if sub.phase == "TRIAL" and sub.trial_end <= target:
            yield sub.trial_end, 2, self._trial_ended
        elif (
            sub.phase == "EVERGREEN"
            and not self._bundles[sub.bundle_id].paused
            and sub.ctd <= target
            and (sub.bill_end is None or sub.ctd < sub.bill_end)
        ):
            yield sub.ctd, 3, self._renew

    def _advance(self, target: datetime) -> None:
        """Apply every due transition in time order, the clock stepping to each one (like Kill Bill's queues)."""
        while True:
            subs = enumerate(self._subs.values())
            due = [(when, prio, n, action, sub) for n, sub in subs for when, prio, action in self._due(sub, target)]
            if not due:
                return
            when, _, _, action, sub = min(due, key=lambda entry: entry[:3])
            self._now = max(self._now, when)
            action(sub)

    def _billing_stopped(self, sub: Subscription) -> None:
        sub.bill_done = True
        self._emit_sub(sub, "SUBSCRIPTION_CANCEL", "EFFECTIVE")

    def _entitlement_stopped(self, sub: Subscription) -> None:
        sub.ent_done = True
        self._emit("ENTITLEMENT_CANCEL", sub.account_id, "SUBSCRIPTION", sub.id)

    def _trial_ended(self, sub: Subscription) -> None:
        sub.phase = "EVERGREEN"
        self._emit_sub(sub, "SUBSCRIPTION_PHASE", "EFFECTIVE")
        sub.ctd = self._now
        if not self._bundles[sub.bundle_id].paused:
            self._bill_period(sub, self._now)

    def _renew(self, sub: Subscription) -> None:
        self._bill_period(sub, sub.ctd)

    # ------------------------------------------------------------------ JSON views (lock held)

    def account_json(self, account: Account, with_balance: bool = False, with_cba: bool = False) -> dict:
        balance = sum((i.balance for i in self._invoices.values() if i.account_id == account.id), Decimal(0))
        return {
            "accountId": account.id, "name": account.name, "firstNameLength": None, "externalKey": account.external_key,
            "email": account.email, "billCycleDayLocal": account.bcd, "currency": account.currency,
            "parentAccountId": None, "isPaymentDelegatedToParent": False, "paymentMethodId": account.payment_method_id,
            "referenceTime": kb_datetime(account.reference_time), "timeZone": account.time_zone, "address1": None,
            "address2": None, "postalCode": None, "company": None, "city": None, "state": None,
            "country": account.country, "locale": account.locale,
            "phone": None, "notes": None, "isMigrated": None,
            "accountBalance": balance if with_balance or with_cba else None,
            "accountCBA": Decimal(0) if with_cba else None, "auditLogs": [],
        }  # fmt: skip

    def _event_json(self, event: SubEvent) -> dict:
        return {
            "eventId": event.id, "billingPeriod": "MONTHLY", "effectiveDate": kb_datetime(event.when),
            "catalogEffectiveDate": kb_datetime(CATALOG_EFFECTIVE), "plan": event.plan,
            "product": self._product(event.plan), "priceList": "DEFAULT", "eventType": event.type,
            "isBlockedBilling": event.blocks_billing, "isBlockedEntitlement": event.blocks_entitlement,
            "serviceName": event.service, "serviceStateName": event.state, "phase": event.phase, "auditLogs": [],
        }  # fmt: skip

    def subscription_json(self, sub: Subscription) -> dict:
        phases = [("TRIAL", Decimal(0), None)] if sub.trial_end else []
        phases.append(("EVERGREEN", None, self._price(sub.plan)))
        prices = [{"planName": sub.plan, "phaseName": sub.phase_name(phase), "phaseType": phase, "fixedPrice": fixed,
                   "recurringPrice": recurring, "usagePrices": []} for phase, fixed, recurring in phases]  # fmt: skip
        return {
            "accountId": sub.account_id, "bundleId": sub.bundle_id,
            "bundleExternalKey": self._bundles[sub.bundle_id].external_key, "subscriptionId": sub.id,
            "externalKey": sub.external_key, "startDate": kb_datetime(sub.start),
            "productName": self._product(sub.plan), "productCategory": "BASE", "billingPeriod": "MONTHLY",
            "phaseType": sub.phase, "priceList": "DEFAULT",
            "planName": sub.plan, "state": self._state(sub), "sourceType": "NATIVE",
            "cancelledDate": sub.ent_end and kb_datetime(sub.ent_end), "chargedThroughDate": sub.ctd.date().isoformat(),
            "billingStartDate": kb_datetime(sub.start), "billingEndDate": sub.bill_end and kb_datetime(sub.bill_end),
            "billCycleDayLocal": sub.bcd, "quantity": 1, "events": [self._event_json(e) for e in _ordered(sub.events)],
            "priceOverrides": None, "prices": prices, "auditLogs": [],
        }  # fmt: skip

    def bundle_json(self, bundle: Bundle) -> dict:
        subs = [s for s in self._subs.values() if s.bundle_id == bundle.id]
        events = _ordered([e for s in subs for e in s.events])
        head = {"accountId": bundle.account_id, "bundleId": bundle.id, "externalKey": bundle.external_key}
        timeline = {**head, "events": [self._event_json(e) for e in events], "auditLogs": []}
        return {
            **head,
            "subscriptions": [self.subscription_json(s) for s in subs],
            "timeline": timeline,
            "auditLogs": [],
        }

    def invoice_json(self, invoice: Invoice) -> dict:
        items = [{
            "invoiceItemId": item["id"], "invoiceId": invoice.id, "linkedInvoiceItemId": None,
            "accountId": invoice.account_id, "childAccountId": None, "bundleId": item["sub"].bundle_id,
            "subscriptionId": item["sub"].id, "productName": self._product(item["plan"]), "planName": item["plan"],
            "phaseName": item["phase"], "usageName": None, "prettyProductName": None, "prettyPlanName": None,
            "prettyPhaseName": None, "prettyUsageName": None, "itemType": item["type"], "description": item["phase"],
            "startDate": item["start"].isoformat(), "endDate": item["end"] and item["end"].isoformat(),
            "amount": item["amount"], "rate": item["amount"] if item["type"] == "RECURRING" else None,
            "currency": invoice.currency, "quantity": None, "itemDetails": None,
            "catalogEffectiveDate": kb_datetime(CATALOG_EFFECTIVE), "childItems": None, "auditLogs": [],
        } for item in invoice.items]  # fmt: skip
        created = invoice.created.date().isoformat()
        return {
            "amount": invoice.amount, "currency": invoice.currency, "status": "COMMITTED", "creditAdj": Decimal(0),
            "refundAdj": Decimal(0), "invoiceId": invoice.id, "invoiceDate": created, "targetDate": created,
            "invoiceNumber": str(invoice.number), "balance": invoice.balance, "accountId": invoice.account_id,
            "bundleKeys": None, "credits": None, "items": items, "trackingIds": [], "isParentInvoice": False,
            "parentInvoiceId": None, "parentAccountId": None, "auditLogs": [],
        }  # fmt: skip

    def overdue_json(self, account: Account) -> dict:
        reached = next((s for s in self.config.overdue if s.name == account.overdue_state), None)
        if reached:
            return {
                "name": reached.name, "externalMessage": reached.external_message,
                "isDisableEntitlementAndChangesBlocked": reached.disable_entitlement,
                "isBlockChanges": reached.block_changes, "isClearState": False,
                "reevaluationIntervalDays": reached.auto_reevaluation_days,
            }  # fmt: skip
        blocked = account.overdue_blocked
        return {
            "name": account.overdue_state,
            "externalMessage": "Reached BLOCKED" if blocked else "",
            "isDisableEntitlementAndChangesBlocked": blocked,
            "isBlockChanges": blocked,
            "isClearState": not blocked,
            "reevaluationIntervalDays": None,
        }

    def clock_json(self, time_zone: str = "UTC") -> dict:
        try:
            zone = ZoneInfo(time_zone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise _bad_request(f"The datetime zone id '{time_zone}' is not recognised") from exc
        return {
            "currentUtcTime": kb_datetime(self._now),
            "timeZone": time_zone,
            "localDate": self._now.astimezone(zone).date().isoformat(),
        }

    # ------------------------------------------------------------------ HTTP

    def wsgi(self, environ, start_response):
        request = Request(environ)
        try:
            endpoint, params = self._routes.bind_to_environ(environ).match()
            response = self._authorize(request)
            if response is None:
                handler = getattr(self, f"_ep_{endpoint}")
                if endpoint in ("clock", "queues"):  # they wait for the sender, so they take the lock themselves
                    result = handler(request, **params)
                else:
                    with self._lock:
                        result = handler(request, **params)
                response = result if isinstance(result, Response) else _json_response(result)
        except KbError as exc:
            response = exc.response()
        except ValueError as exc:  # a malformed number or date in the query string
            response = _bad_request(str(exc)).response()
        except HTTPException as exc:
            response = exc.get_response(environ)
        return response(environ, start_response)

    def _authorize(self, request: Request) -> Response | None:
        username, password, api_key, api_secret = self._credentials
        auth = request.authorization
        if auth is None or auth.type != "basic" or (auth.username, auth.password) != (username, password):
            return Response("", 401, {"WWW-Authenticate": 'BASIC realm="application"'})
        headers = request.headers
        if (headers.get("X-Killbill-ApiKey"), headers.get("X-Killbill-ApiSecret")) != (api_key, api_secret):
            return Response("", 401)
        writing = request.method in ("POST", "PUT", "DELETE") and request.path.startswith(API)
        if writing and not headers.get("X-Killbill-CreatedBy"):
            raise _bad_request("Header X-Killbill-CreatedBy needs to be set")
        return None

    # Handlers run with the lock held (except clock and queues). They return a Response, JSON data (200) or None (204).

    def _ep_create_account(self, request):
        return _created(request, f"accounts/{self.create_account(_body(request)).id}")

    def _ep_account_by_key(self, request):
        key = request.args.get("externalKey")
        if (account := next((a for a in self._accounts.values() if a.external_key == key), None)) is None:
            raise KbError(404, ACCOUNT_EXC, 3003, f"Account does not exist for key {key}")
        return self.account_json(account, *_balance_flags(request))

    def _ep_list_accounts(self, request):
        offset, limit = int(request.args.get("offset", 0)), int(request.args.get("limit", 100))
        accounts = list(self._accounts.values())
        page = [self.account_json(a, *_balance_flags(request)) for a in accounts[offset : offset + limit]]
        headers = {"X-Killbill-Pagination-CurrentOffset": str(offset)}
        if offset + limit < len(accounts):
            headers["X-Killbill-Pagination-NextOffset"] = str(offset + limit)
            headers["X-Killbill-Pagination-NextPageUri"] = (
                f"{API}/accounts/pagination?offset={offset + limit}&limit={limit}"
            )
        headers["X-Killbill-Pagination-TotalNbRecords"] = headers["X-Killbill-Pagination-MaxNbRecords"] = str(
            len(accounts)
        )
        return _json_response(page, headers)

    def _ep_get_account(self, request, account_id):
        return self.account_json(self._account(account_id), *_balance_flags(request))

    def _ep_account_bundles(self, request, account_id):
        self._account(account_id)
        return [self.bundle_json(b) for b in self._bundles.values() if b.account_id == account_id]

    def _ep_account_invoices(self, request, account_id):
        self._account(account_id)
        return [self.invoice_json(i) for i in self._invoices.values() if i.account_id == account_id]

    def _ep_account_tags(self, request, account_id):
        """AccountResource getAllTags: the tags of the account's objects of `objectType` (all without it), here only
        its invoices' WRITTEN_OFF (TagJson); no deleted tag is kept, so includedDeleted changes nothing."""
        self._account(account_id)
        if request.args.get("objectType") not in (None, "INVOICE"):
            return []
        return [
            {"tagId": i.written_off_tag, "objectType": "INVOICE", "objectId": i.id, "tagDefinitionId": WRITTEN_OFF[0],
             "tagDefinitionName": WRITTEN_OFF[1], "auditLogs": []}
            for i in self._invoices.values() if i.account_id == account_id and i.written_off_tag
        ]  # fmt: skip

    def _ep_invoice_tags(self, request, invoice_id):
        """InvoiceResource createInvoiceTags (POST, a JSON list of tag definition ids; 201 with the tags' location,
        whether or not the invoice had them) and deleteInvoiceTags (DELETE, ?tagDef=…; 204). util DefaultTagDao:
        an unknown definition is TagApiException 3902 (400, TagApiExceptionMapper), removing a tag the invoice has
        not 3950 (404)."""
        invoice = self._invoice(invoice_id)
        adding = request.method == "POST"
        definitions = _body(request, list) if adding else request.args.getlist("tagDef")
        for definition in definitions:
            if definition != WRITTEN_OFF[0]:
                raise KbError(400, TAG_EXC, 3902, f"The tag definition {definition} does not exist")
        if definitions and not adding and not invoice.written_off_tag:
            raise KbError(404, TAG_EXC, 3950, f"The tag does not exist (name: {WRITTEN_OFF[1]})")
        if definitions:
            self.write_off(invoice, adding)
        return _created(request, f"invoices/{invoice_id}/tags") if adding else None

    def _ep_account_overdue(self, request, account_id):
        return self.overdue_json(self._account(account_id))

    def _ep_create_subscription(self, request):
        return _created(request, f"subscriptions/{self.create_subscription(_body(request)).id}")

    def _ep_get_subscription(self, request, sub_id):
        return self.subscription_json(self._subscription(sub_id))

    def _ep_change_subscription(self, request, sub_id):
        if request.args.get("requestedDate") and request.args.get("billingPolicy"):
            raise _bad_request("Only one of requestedDate or billingPolicy can be specified")
        self.change_plan(self._subscription(sub_id), _body(request))

    def _ep_cancel_subscription(self, request, sub_id):
        self.cancel(self._subscription(sub_id), request.args)

    def _ep_uncancel_subscription(self, request, sub_id):
        self.uncancel(self._subscription(sub_id))

    def _ep_get_bundle(self, request, bundle_id):
        return self.bundle_json(self._bundle(bundle_id))

    def _ep_pause_bundle(self, request, bundle_id):
        self.pause(self._bundle(bundle_id), True)

    def _ep_resume_bundle(self, request, bundle_id):
        self.pause(self._bundle(bundle_id), False)

    def _ep_get_invoice(self, request, invoice_id):
        return self.invoice_json(self._invoice(invoice_id))

    def _ep_callback(self, request):
        key = {"key": "PUSH_NOTIFICATION_CB"}
        if request.method == "GET":
            return {**key, "values": [self._callback] if self._callback else []}
        if request.method == "DELETE":
            self._callback = None
            self._emit("TENANT_CONFIG_DELETION", None, "TENANT_KVS", None, key)
            return None
        if not (url := request.args.get("cb")):
            raise _bad_request("Notification callback cb needs to be specified")
        self._callback = url  # single-valued key: registering replaces the previous URL
        self._emit("TENANT_CONFIG_CHANGE", None, "TENANT_KVS", _new_id(), key)
        return _created(request, "tenants/registerNotificationCallback")

    def _ep_upload_catalog(self, request):
        try:
            self.config.upload_catalog(_xml_body(request))
        except ConfigRefused as exc:
            raise KbError(400, CATALOG_EXC, exc.code, str(exc)) from exc
        self._emit("TENANT_CONFIG_CHANGE", None, "TENANT_KVS", _new_id(), {"key": "CATALOG"})
        return _created(request, "catalog")

    def _ep_catalog(self, request):
        return self.config.catalog_json()

    def _ep_upload_overdue(self, request):
        replacing = self.config.overdue_xml is not None
        self.config.upload_overdue(_xml_body(request))
        if replacing:  # the single-valued key is deleted, then added (DefaultOverdueApi.uploadOverdueConfig)
            self._emit("TENANT_CONFIG_DELETION", None, "TENANT_KVS", None, {"key": "OVERDUE_CONFIG"})
        self._emit("TENANT_CONFIG_CHANGE", None, "TENANT_KVS", _new_id(), {"key": "OVERDUE_CONFIG"})
        return _created(request, "overdue")

    def _ep_overdue(self, request):
        return self.config.overdue_json()

    def _ep_user_key_value(self, request, key):
        return self.config.user_key_values(key)

    def _ep_clock(self, request):
        args = request.args
        with self._lock:
            if request.method == "POST":
                requested = args.get("requestedDate")
                self.set_clock(_parse_when(requested) if requested else datetime.now(UTC).replace(microsecond=0))
            elif request.method == "PUT":
                unit = next((u for u in ("days", "weeks", "months", "years") if u in args), None)  # only the first
                if unit:
                    self.set_clock(_shift(self._now, unit, int(args[unit])))
        if request.method != "GET":
            self.wait_idle(float(args.get("timeoutSec", 5)))  # Kill Bill waits for its queues too
        with self._lock:
            return self.clock_json(args.get("timeZone", "UTC"))

    def _ep_queues(self, request):
        return Response("", 200 if self.wait_idle(float(request.args.get("timeoutSec", 5)))[0] else 412)

    def _ep_payment_behaviour(self, request, account_id):
        self._account(account_id).fail_payments = bool(_body(request).get("fail"))

    def _ep_pay(self, request, account_id):
        self.pay(self._account(account_id))


_ROUTES = [
    (f"{API}/accounts", ["POST"], "create_account"),
    (f"{API}/accounts", ["GET"], "account_by_key"),
    (f"{API}/accounts/pagination", ["GET"], "list_accounts"),
    (f"{API}/accounts/<account_id>", ["GET"], "get_account"),
    (f"{API}/accounts/<account_id>/bundles", ["GET"], "account_bundles"),
    (f"{API}/accounts/<account_id>/invoices", ["GET"], "account_invoices"),
    (f"{API}/accounts/<account_id>/overdue", ["GET"], "account_overdue"),
    (f"{API}/accounts/<account_id>/allTags", ["GET"], "account_tags"),
    (f"{API}/subscriptions", ["POST"], "create_subscription"),
    (f"{API}/subscriptions/<sub_id>", ["GET"], "get_subscription"),
    (f"{API}/subscriptions/<sub_id>", ["PUT"], "change_subscription"),
    (f"{API}/subscriptions/<sub_id>", ["DELETE"], "cancel_subscription"),
    (f"{API}/subscriptions/<sub_id>/uncancel", ["PUT"], "uncancel_subscription"),
    (f"{API}/bundles/<bundle_id>", ["GET"], "get_bundle"),
    (f"{API}/bundles/<bundle_id>/pause", ["PUT"], "pause_bundle"),
    (f"{API}/bundles/<bundle_id>/resume", ["PUT"], "resume_bundle"),
    (f"{API}/invoices/<invoice_id>", ["GET"], "get_invoice"),
    (f"{API}/invoices/<invoice_id>/tags", ["POST", "DELETE"], "invoice_tags"),
    (f"{API}/tenants/registerNotificationCallback", ["GET", "POST", "DELETE"], "callback"),
    (f"{API}/catalog/xml", ["POST"], "upload_catalog"),
    (f"{API}/catalog", ["GET"], "catalog"),
    (f"{API}/overdue/xml", ["POST"], "upload_overdue"),
    (f"{API}/overdue", ["GET"], "overdue"),
    (f"{API}/tenants/userKeyValue/<key>", ["GET"], "user_key_value"),
    (f"{API}/test/clock", ["GET", "POST", "PUT"], "clock"),
    (f"{API}/test/queues", ["GET"], "queues"),
    ("/standin/accounts/<account_id>/payment_behaviour", ["POST"], "payment_behaviour"),
    ("/standin/accounts/<account_id>/pay", ["POST"], "pay"),
]


def _json_response(value, headers=None) -> Response:
    if value is None:
        return Response("", 204)
    return Response(dumps(value), 200, headers, content_type="application/json")


def _created(request: Request, path: str) -> Response:
    return Response("", 201, {"Location": f"{request.host_url.rstrip('/')}{API}/{path}"})


def _body(request: Request, shape: type = dict):
    if request.mimetype != "application/json":
        raise UnsupportedMediaType()
    try:
        body = json.loads(request.get_data() or b"null", parse_float=Decimal)
    except ValueError as exc:
        raise _bad_request(f"Unable to parse the JSON body: {exc}") from exc
    if not isinstance(body, shape):
        raise _bad_request(f"Expected a JSON {'object' if shape is dict else 'array'}")
    return body


def _xml_body(request: Request) -> str:
    if request.mimetype != "text/xml":  # the resources consume text/xml only
        raise UnsupportedMediaType()
    return request.get_data(as_text=True)


def _ordered(events: list[SubEvent]) -> list[SubEvent]:
    return sorted(events, key=lambda e: e.when)  # stable: same instant keeps insertion order


def _balance_flags(request: Request) -> tuple[bool, bool]:
    return request.args.get("accountWithBalance") == "true", request.args.get("accountWithBalanceAndCBA") == "true"


def _plan_from(body: dict) -> str:
    if body.get("planName"):
        return str(body["planName"])
    if body.get("productName"):
        return f"{body['productName'].lower()}-{(body.get('billingPeriod') or 'MONTHLY').lower()}"
    raise _bad_request("SubscriptionJson planName or productName needs to be set")


def _parse_when(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise _bad_request(f'Invalid format: "{text}"') from exc
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _shift(value: datetime, unit: str, amount: int) -> datetime:
    if unit in ("days", "weeks"):
        return value + timedelta(days=amount * (7 if unit == "weeks" else 1))
    return add_months(value, amount * (12 if unit == "years" else 1))


def _loggable(url: str) -> str:
    """The callback URL without its query string, where the runner's token usually is."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"


# ---------------------------------------------------------------------------------------------- command line


def _pairs(values: list[str], convert) -> dict:
    result = {}
    for value in values:
        name, sep, number = value.partition("=")
        if not sep:
            raise SystemExit(f"expected PLAN=VALUE, got {value!r}")
        result[name] = convert(number)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Kill Bill stand-in (REST API + push notifications). NOT Kill Bill.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    parser.add_argument("--username", default="admin")
    parser.add_argument("--password-file", type=Path, required=True)
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--api-secret-file", type=Path, required=True)
    parser.add_argument("--retries", default="15m,30m,2h,12h,1d", help="comma-separated delays, e.g. 1m,5m or 0.2s")
    parser.add_argument("--trial", action="append", default=[], metavar="PLAN=DAYS")
    parser.add_argument("--price", action="append", default=[], metavar="PLAN=AMOUNT")
    parser.add_argument("--timeout", type=float, default=15.0, help="seconds per push notification POST")
    parser.add_argument("--dispatch-threads", type=int, default=1)
    parser.add_argument("--no-h2c-headers", action="store_true", help="omit Connection/Upgrade/HTTP2-Settings")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # request lines would show the callback URL's query
    try:
        standin = KillBillStandin(
            username=args.username,
            password=args.password_file.read_text().rstrip("\r\n"),
            api_key=args.api_key,
            api_secret=args.api_secret_file.read_text().rstrip("\r\n"),
            retries=[parse_span(s) for s in args.retries.split(",") if s.strip()],
            trials=_pairs(args.trial, int),
            prices=_pairs(args.price, Decimal),
            dispatch_threads=args.dispatch_threads,
            timeout=args.timeout,
            h2c_headers=not args.no_h2c_headers,
        )
        standin.start(args.host, args.port)
    except (OSError, ValueError, InvalidOperation) as exc:
        log.error("cannot start: %s", exc)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    log.info("Kill Bill stand-in listening on %s (test clock %s)", standin.url, kb_datetime(standin.now))
    stop.wait()
    standin.stop()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
