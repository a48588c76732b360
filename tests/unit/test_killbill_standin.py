"""Kill Bill stand-in: the wire format byte for byte, the events per operation, the REST shapes and errors,
the test clock and the sender with its retries (see tests/standins/killbill/README.md for the upstream sources)."""

from __future__ import annotations

import base64
import json
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from standins.killbill import killbill_standin as kb
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from conftest import REPO

SCRIPT = REPO / "tests/standins/killbill/killbill_standin.py"
PASSWORD, API_KEY, API_SECRET = "pw-not-logged", "bob", "lazar"
ACCT = "2ad52f53-85ae-408a-9879-32a7e59dd03d"
SUB = "8ab101b6-15e8-433b-b4f7-f99eeaa56a77"
START = "2026-10-01T00:00:00.000Z"

# The real capture from https://docs.killbill.io/latest/push_notifications.html (content-length: 164).
CAPTURE = (
    b'{"eventType":"TENANT_CONFIG_CHANGE","accountId":null,"objectType":"TENANT_KVS",'
    b'"objectId":"5cf9c272-a493-4178-af30-3b8de0344a26","metaData":"{\\"key\\":\\"CATALOG\\"}"}'
)
# Example bodies as killbill-plugin-api's metaData classes serialize them, byte for byte.
SUBSCRIPTION_CREATION = (
    '{"eventType":"SUBSCRIPTION_CREATION","accountId":"2ad52f53-85ae-408a-9879-32a7e59dd03d","objectType":"SUBSCRIPTION",'
    '"objectId":"8ab101b6-15e8-433b-b4f7-f99eeaa56a77","metaData":"{\\"actionType\\":\\"EFFECTIVE\\",'
    '\\"bundleExternalKey\\":\\"odoo-acme\\",\\"subscriptionChangeUndo\\":false}"}'
)
INVOICE_PAYMENT_FAILED = (
    '{"eventType":"INVOICE_PAYMENT_FAILED","accountId":"2ad52f53-85ae-408a-9879-32a7e59dd03d","objectType":"INVOICE",'
    '"objectId":"4b964a85-ed83-45a5-9938-88ff53bc513f","metaData":"{\\"paymentId\\":\\"c0a1e5c2-9f5e-4d4b-8a53-0d6a1b3f7e21\\",'
    '\\"paymentAttemptId\\":\\"246986a1-4f5a-4b1b-beee-9e215300a89e\\",\\"invoicePaymentType\\":\\"ATTEMPT\\",'
    '\\"paymentDate\\":\\"2026-10-01T00:00:07.000Z\\",\\"amount\\":0,\\"currency\\":\\"USD\\",\\"linkedInvoicePaymentId\\":null,'
    '\\"paymentCookieId\\":\\"d9d60a48-8b79-4e8d-9141-0bced88bb359\\",\\"processedCurrency\\":\\"USD\\"}"}'
)
SUBSCRIPTION_CHANGE = SUBSCRIPTION_CREATION.replace("SUBSCRIPTION_CREATION", "SUBSCRIPTION_CHANGE")
EFFECTIVE_META = kb.subscription_meta("EFFECTIVE", "odoo-acme")

SUBSCRIPTION_KEYS = [
    "accountId", "bundleId", "bundleExternalKey", "subscriptionId", "externalKey", "startDate", "productName",
    "productCategory", "billingPeriod", "phaseType", "priceList", "planName", "state", "sourceType", "cancelledDate",
    "chargedThroughDate", "billingStartDate", "billingEndDate", "billCycleDayLocal", "quantity", "events",
    "priceOverrides", "prices", "auditLogs",
]  # fmt: skip
EVENT_KEYS = [
    "eventId", "billingPeriod", "effectiveDate", "catalogEffectiveDate", "plan", "product", "priceList", "eventType",
    "isBlockedBilling", "isBlockedEntitlement", "serviceName", "serviceStateName", "phase", "auditLogs",
]  # fmt: skip
ACCOUNT_KEYS = [
    "accountId", "name", "firstNameLength", "externalKey", "email", "billCycleDayLocal", "currency", "parentAccountId",
    "isPaymentDelegatedToParent", "paymentMethodId", "referenceTime", "timeZone", "address1", "address2",
    "postalCode", "company", "city", "state", "country", "locale", "phone", "notes", "isMigrated", "accountBalance",
    "accountCBA", "auditLogs",
]  # fmt: skip
EXCEPTION_KEYS = ["className", "code", "message", "causeClassName", "causeMessage", "stackTrace"]


# ---------------------------------------------------------------------------------------------- helpers


class Api:
    """A REST client for the stand-in, the way the runner talks to Kill Bill (stdlib only)."""

    def __init__(self, base: str, auth=("admin", PASSWORD), key=API_KEY, secret=API_SECRET, created_by="pytest"):
        self.base, self.auth, self.key, self.secret, self.created_by = base, auth, key, secret, created_by

    def call(self, method: str, path: str, body=None, **overrides):
        cfg = {"auth": self.auth, "key": self.key, "secret": self.secret, "created_by": self.created_by} | overrides
        headers = {"X-Killbill-ApiKey": cfg["key"], "X-Killbill-ApiSecret": cfg["secret"]}
        if cfg["auth"]:
            headers["Authorization"] = "Basic " + base64.b64encode(":".join(cfg["auth"]).encode()).decode()
        if cfg["created_by"] and method != "GET":
            headers["X-Killbill-CreatedBy"] = cfg["created_by"]
        data = None
        if body is not None:
            data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
        prefix = "" if path.startswith("/standin/") else "/1.0/kb"
        request = urllib.request.Request(self.base + prefix + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.headers, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers, exc.read()

    def upload(self, path: str, text: str, content_type: str = "text/xml"):
        """POST an XML document, as Kill Bill's catalog and overdue resources take it."""
        headers = {"X-Killbill-ApiKey": self.key, "X-Killbill-ApiSecret": self.secret,
                   "X-Killbill-CreatedBy": self.created_by, "Content-Type": content_type,
                   "Authorization": "Basic " + base64.b64encode(":".join(self.auth).encode()).decode()}  # fmt: skip
        request = urllib.request.Request(self.base + "/1.0/kb" + path, data=text.encode(), headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.headers, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers, exc.read()

    def json(self, path: str):
        status, _, raw = self.call("GET", path)
        assert status == 200, raw
        return json.loads(raw, parse_float=Decimal)

    def create_account(self, key: str = "acme") -> str:
        status, headers, _ = self.call("POST", "/accounts", {"name": "Acme", "externalKey": key, "currency": "USD"})
        assert status == 201
        return headers["Location"].rsplit("/", 1)[1]

    def create_subscription(self, account_id: str, plan: str, bundle_key: str = "odoo-acme") -> str:
        body = {
            "accountId": account_id,
            "externalKey": f"{bundle_key}-base",
            "bundleExternalKey": bundle_key,
            "planName": plan,
        }
        status, headers, raw = self.call("POST", "/subscriptions", body)
        assert status == 201, raw
        return headers["Location"].rsplit("/", 1)[1]


def types(notifications) -> list[str]:
    return [n.event_type for n in notifications]


def meta(notification) -> dict:
    return json.loads(json.loads(notification.body)["metaData"], parse_float=Decimal)


def object_id(notification) -> str:
    return json.loads(notification.body)["objectId"]


class Receiver:
    """A tiny webhook endpoint answering a scripted list of statuses (then 200)."""

    def __init__(self, statuses=()):
        self.statuses, self.requests, self.cv = list(statuses), [], threading.Condition()
        self.server = make_server("127.0.0.1", 0, self.app, threaded=True)
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/kb/events/acme?token=s3cret"

    def app(self, environ, start_response):
        request = Request(environ)
        with self.cv:
            self.requests.append((request.method, request.full_path, dict(request.headers.items()), request.get_data()))
            status = self.statuses.pop(0) if self.statuses else 200
            self.cv.notify_all()
        headers = {"Location": "/elsewhere"} if 300 <= status < 400 else {}
        return Response("", status, headers)(environ, start_response)

    def wait_for(self, count: int, timeout: float = 5.0) -> bool:
        with self.cv:
            return self.cv.wait_for(lambda: len(self.requests) >= count, timeout)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def standin():
    server = kb.KillBillStandin(
        password=PASSWORD, api_key=API_KEY, api_secret=API_SECRET, deliver=False,
        trials={"basic-monthly": 14}, prices={"basic-monthly": 10, "premium-monthly": "49.00"},
    ).start()  # fmt: skip
    yield server
    server.stop()


@pytest.fixture
def api(standin) -> Api:
    return Api(standin.url)


@pytest.fixture
def receivers():
    made = []
    yield lambda *statuses: made.append(Receiver(statuses)) or made[-1]
    for receiver in made:
        receiver.close()


@pytest.fixture
def sender():
    """A delivering stand-in; call it with the constructor's keyword arguments."""
    made = []

    def make(**kwargs):
        made.append(kb.KillBillStandin(password=PASSWORD, api_key=API_KEY, api_secret=API_SECRET, **kwargs).start())
        return made[-1], Api(made[-1].url)

    yield make
    for server in made:
        server.stop()


# ---------------------------------------------------------------------------------------------- wire format


def test_the_encoder_reproduces_the_164_byte_capture():
    body = kb.encode_notification(
        "TENANT_CONFIG_CHANGE", None, "TENANT_KVS", "5cf9c272-a493-4178-af30-3b8de0344a26", {"key": "CATALOG"}
    )
    assert body == CAPTURE
    assert len(body) == 164


@pytest.mark.parametrize(
    ("event_type", "object_type", "object_id", "metadata", "expected"),
    [
        ("SUBSCRIPTION_CREATION", "SUBSCRIPTION", SUB, EFFECTIVE_META, SUBSCRIPTION_CREATION),
        (
            "INVOICE_PAYMENT_FAILED", "INVOICE", "4b964a85-ed83-45a5-9938-88ff53bc513f",
            kb.invoice_payment_meta(
                "c0a1e5c2-9f5e-4d4b-8a53-0d6a1b3f7e21", "246986a1-4f5a-4b1b-beee-9e215300a89e",
                datetime(2026, 10, 1, 0, 0, 7, tzinfo=UTC), Decimal(0), "USD", "d9d60a48-8b79-4e8d-9141-0bced88bb359",
            ),
            INVOICE_PAYMENT_FAILED,
        ),
        ("SUBSCRIPTION_CHANGE", "SUBSCRIPTION", SUB, EFFECTIVE_META, SUBSCRIPTION_CHANGE),
    ],
)  # fmt: skip
def test_the_encoder_reproduces_the_documented_bodies(event_type, object_type, object_id, metadata, expected):
    body = kb.encode_notification(event_type, ACCT, object_type, object_id, metadata)
    assert body == expected.encode()
    # The reference's Python recipe gives the same bytes (amount 0 is an int there).
    plain = {k: int(v) if isinstance(v, Decimal) else v for k, v in metadata.items()}
    recipe = {"eventType": event_type, "accountId": ACCT, "objectType": object_type, "objectId": object_id,
              "metaData": json.dumps(plain, separators=(",", ":"), ensure_ascii=False)}  # fmt: skip
    assert body == json.dumps(recipe, separators=(",", ":"), ensure_ascii=False).encode()


def test_subscription_creation_body_is_279_bytes():
    assert len(SUBSCRIPTION_CREATION.encode()) == 279


def test_amounts_are_written_like_java_bigdecimal():
    assert kb.dumps({"a": Decimal(0), "b": Decimal("0E-9"), "c": Decimal("24.950000000"), "d": Decimal("10.00")}) == (
        '{"a":0,"b":0E-9,"c":24.950000000,"d":10.00}'
    )


def test_post_notification_sends_kill_bills_request_byte_for_byte():
    listener = socket.create_server(("127.0.0.1", 0))
    port, received = listener.getsockname()[1], []

    def serve():
        conn, _ = listener.accept()
        with conn:
            data = b""
            while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < 164:
                data += conn.recv(4096)
            received.append(data)
            conn.sendall(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert kb.post_notification(f"http://127.0.0.1:{port}/callback", CAPTURE) == 204
    thread.join(5)
    listener.close()
    assert received[0] == (
        b"POST /callback HTTP/1.1\r\n"
        b"connection: Upgrade, HTTP2-Settings\r\n"
        b"content-length: 164\r\n"
        + f"host: 127.0.0.1:{port}\r\n".encode()
        + b"http2-settings: AAEAAEAAAAIAAAABAAMAAABkAAQBAAAAAAUAAEAA\r\n"
        b"upgrade: h2c\r\n"
        b"content-type: application/json; charset=UTF-8\r\n"
        b"user-agent: KillBill/1.0\r\n"
        b"\r\n" + CAPTURE
    )
    # A connection error is None, not an exception.
    assert kb.post_notification(f"http://127.0.0.1:{port}/callback", CAPTURE, timeout=2) is None


# ---------------------------------------------------------------------------------------------- REST API


def test_auth_401_400_and_404_with_billing_exception_json(api):
    assert api.call("GET", "/test/clock", auth=None)[0] == 401
    assert api.call("GET", "/test/clock", auth=("admin", "wrong"))[0] == 401
    assert api.call("GET", "/test/clock", key="eve")[0] == 401
    assert api.call("GET", "/test/clock", secret="wrong")[0] == 401
    status, _, raw = api.call("POST", "/accounts", {"name": "x"}, created_by=None)
    assert status == 400
    assert json.loads(raw) == {"className": "java.lang.IllegalArgumentException", "code": None,
                               "message": "Header X-Killbill-CreatedBy needs to be set", "causeClassName": None,
                               "causeMessage": None, "stackTrace": []}  # fmt: skip
    unknown = str(uuid.uuid4())
    status, _, raw = api.call("GET", f"/accounts/{unknown}")
    assert status == 404
    assert raw.decode() == (
        '{"className":"org.killbill.billing.account.api.AccountApiException","code":3002,'
        f'"message":"Account does not exist for id {unknown}",'
        '"causeClassName":null,"causeMessage":null,"stackTrace":[]}'
    )
    for path, code in [
        (f"/subscriptions/{unknown}", 1082),
        (f"/invoices/{unknown}", 4006),
        (f"/bundles/{unknown}", 1081),
    ]:
        status, _, raw = api.call("GET", path)
        assert (status, list(json.loads(raw)), json.loads(raw)["code"]) == (404, EXCEPTION_KEYS, code)
    assert api.call("DELETE", f"/subscriptions/{unknown}")[0] == 404


def test_accounts_create_get_paginate(api):
    ids = [api.create_account(f"acme-{n}") for n in range(3)]
    account = api.json(f"/accounts/{ids[0]}")
    assert list(account) == ACCOUNT_KEYS
    assert (account["externalKey"], account["currency"], account["referenceTime"]) == ("acme-0", "USD", START)
    assert api.call("POST", "/accounts", {"externalKey": "acme-0"})[0] == 409
    status, headers, raw = api.call("GET", "/accounts/pagination?offset=1&limit=1")
    assert status == 200
    assert [a["accountId"] for a in json.loads(raw)] == ids[1:2]
    assert headers["X-Killbill-Pagination-CurrentOffset"] == "1"
    assert headers["X-Killbill-Pagination-NextOffset"] == "2"
    assert headers["X-Killbill-Pagination-TotalNbRecords"] == "3"
    assert headers["X-Killbill-Pagination-MaxNbRecords"] == "3"


def test_creating_an_account_and_a_trial_subscription_emits_the_documented_events(standin, api):
    account_id = api.create_account()
    created = standin.drain_notifications()
    assert [n.body for n in created] == [
        kb.encode_notification("ACCOUNT_CREATION", account_id, "ACCOUNT", account_id, None)
    ]

    sub_id = api.create_subscription(account_id, "basic-monthly")
    events = standin.drain_notifications()
    assert types(events) == [
        "ENTITLEMENT_CREATION",
        "SUBSCRIPTION_CREATION",
        "SUBSCRIPTION_CREATION",
        "ACCOUNT_CHANGE",
        "INVOICE_CREATION",
    ]
    assert events[0].body == kb.encode_notification("ENTITLEMENT_CREATION", account_id, "SUBSCRIPTION", sub_id, None)
    for notification, action in zip(events[1:3], ("REQUESTED", "EFFECTIVE"), strict=True):
        assert notification.body == kb.encode_notification(
            "SUBSCRIPTION_CREATION", account_id, "SUBSCRIPTION", sub_id, kb.subscription_meta(action, "odoo-acme")
        )
    invoice = api.json(f"/invoices/{object_id(events[4])}")
    assert (invoice["amount"], invoice["balance"], invoice["items"][0]["itemType"]) == (0, 0, "FIXED")
    assert invoice["items"][0]["phaseName"] == "basic-monthly-trial"


def test_subscription_json_in_trial_and_after_the_clock_passes_the_phase(standin, api):
    account_id = api.create_account()
    sub_id = api.create_subscription(account_id, "basic-monthly")
    standin.drain_notifications()
    status, _, raw = api.call("GET", f"/subscriptions/{sub_id}")
    sub = json.loads(raw)
    assert status == 200
    assert list(sub) == SUBSCRIPTION_KEYS
    assert {k: sub[k] for k in ("productName", "phaseType", "state", "planName", "priceList", "startDate")} == {
        "productName": "Basic", "phaseType": "TRIAL", "state": "ACTIVE", "planName": "basic-monthly",
        "priceList": "DEFAULT", "startDate": START,
    }  # fmt: skip
    assert (sub["chargedThroughDate"], sub["billCycleDayLocal"], sub["cancelledDate"]) == ("2026-10-01", 15, None)
    assert [e["eventType"] for e in sub["events"]] == ["START_ENTITLEMENT", "START_BILLING", "PHASE"]
    assert list(sub["events"][0]) == EVENT_KEYS
    assert (sub["events"][2]["effectiveDate"], sub["events"][2]["phase"]) == (
        "2026-10-15T00:00:00.000Z",
        "basic-monthly-evergreen",
    )
    assert b'"fixedPrice":0,"recurringPrice":null' in raw and b'"recurringPrice":10.00' in raw

    status, _, raw = api.call("PUT", "/test/clock?days=14")
    assert (status, json.loads(raw)) == (
        200,
        {"currentUtcTime": "2026-10-15T00:00:00.000Z", "timeZone": "UTC", "localDate": "2026-10-15"},
    )
    events = standin.drain_notifications()
    assert types(events) == ["SUBSCRIPTION_PHASE", "INVOICE_CREATION", "INVOICE_PAYMENT_SUCCESS", "PAYMENT_SUCCESS"]
    assert events[0].body == kb.encode_notification(
        "SUBSCRIPTION_PHASE", account_id, "SUBSCRIPTION", sub_id, kb.subscription_meta("EFFECTIVE", "odoo-acme")
    )
    assert b'\\"amount\\":10.00' in events[2].body
    sub = api.json(f"/subscriptions/{sub_id}")
    assert (sub["phaseType"], sub["state"], sub["chargedThroughDate"]) == ("EVERGREEN", "ACTIVE", "2026-11-15")
    invoice = api.json(f"/invoices/{object_id(events[1])}")
    assert (invoice["amount"], invoice["balance"], invoice["items"][0]["endDate"]) == (
        Decimal("10.00"),
        0,
        "2026-11-15",
    )

    api.call("PUT", "/test/clock?months=1")  # the next period renews on the BCD
    assert types(standin.drain_notifications()) == ["INVOICE_CREATION", "INVOICE_PAYMENT_SUCCESS", "PAYMENT_SUCCESS"]


def test_a_declined_payment_blocks_the_account_and_paying_clears_it(standin, api):
    account_id = api.create_account()
    assert api.call("POST", f"/standin/accounts/{account_id}/payment_behaviour", {"fail": True})[0] == 204
    standin.drain_notifications()
    sub_id = api.create_subscription(account_id, "premium-monthly")
    events = standin.drain_notifications()
    assert types(events)[4:] == [
        "INVOICE_CREATION",
        "INVOICE_PAYMENT_FAILED",
        "PAYMENT_FAILED",
        "BLOCKING_STATE",
        "OVERDUE_CHANGE",
    ]
    assert (meta(events[5])["amount"], meta(events[5])["currency"]) == (0, "USD")
    assert (meta(events[6])["amount"], meta(events[6])["status"]) == (Decimal("49.00"), "PAYMENT_FAILURE")
    start = datetime(2026, 10, 1, tzinfo=UTC)
    assert events[7].body == kb.encode_notification(
        "BLOCKING_STATE", account_id, "ACCOUNT", account_id, kb.blocking_state_meta(account_id, "BLOCKED", True, start)
    )
    overdue = api.json(f"/accounts/{account_id}/overdue")
    assert (overdue["name"], overdue["isDisableEntitlementAndChangesBlocked"], overdue["isClearState"]) == (
        "BLOCKED",
        True,
        False,
    )
    sub = api.json(f"/subscriptions/{sub_id}")
    assert sub["state"] == "BLOCKED"
    assert sub["events"][-1]["serviceName"] == "overdue-service"
    assert api.json(f"/invoices/{object_id(events[4])}")["balance"] == Decimal("49.00")

    api.call("POST", f"/standin/accounts/{account_id}/pay", {})  # still declined: nothing changes state
    assert types(standin.drain_notifications()) == ["INVOICE_PAYMENT_FAILED", "PAYMENT_FAILED"]
    api.call("POST", f"/standin/accounts/{account_id}/payment_behaviour", {"fail": False})
    api.call("POST", f"/standin/accounts/{account_id}/pay", {})
    events = standin.drain_notifications()
    assert types(events) == ["INVOICE_PAYMENT_SUCCESS", "PAYMENT_SUCCESS", "BLOCKING_STATE", "OVERDUE_CHANGE"]
    cleared = meta(events[2])
    assert (cleared["stateName"], cleared["transitionedToUnblockedEntitlement"]) == (kb.CLEAR_STATE, True)
    assert api.json(f"/accounts/{account_id}/overdue") == {
        "name": "__KILLBILL__CLEAR__OVERDUE_STATE__", "externalMessage": "",
        "isDisableEntitlementAndChangesBlocked": False, "isBlockChanges": False, "isClearState": True,
        "reevaluationIntervalDays": None,
    }  # fmt: skip
    assert api.json(f"/subscriptions/{sub_id}")["state"] == "ACTIVE"


def test_a_written_off_invoice_leaves_the_balance_and_clears_the_overdue_state_until_the_tag_goes(standin, api):
    """InvoiceResource createInvoiceTags with ControlTagType.WRITTEN_OFF: the invoice's balance is 0
    (DefaultInvoice.getBalance), a TAG_CREATION of the tag follows (BeatrixListener) and the overdue state is
    reevaluated (OverdueListener.handleTagInsert); removing the tag undoes it. Only that tag definition is known."""
    account_id = api.create_account()
    api.call("POST", f"/standin/accounts/{account_id}/payment_behaviour", {"fail": True})
    api.create_subscription(account_id, "premium-monthly")
    (invoice,) = json.loads(api.call("GET", f"/accounts/{account_id}/invoices")[2])
    standin.drain_notifications()
    status, headers, _ = api.call("POST", f"/invoices/{invoice['invoiceId']}/tags", [kb.WRITTEN_OFF[0]])
    assert status == 201 and headers["Location"].endswith(f"/1.0/kb/invoices/{invoice['invoiceId']}/tags")
    events = standin.drain_notifications()
    assert types(events) == ["TAG_CREATION", "BLOCKING_STATE", "OVERDUE_CHANGE"]
    assert (events[0].body, meta(events[1])["stateName"]) == (
        kb.encode_notification("TAG_CREATION", account_id, "TAG", object_id(events[0]),
                               {"tagDefinitionName": "WRITTEN_OFF"}),
        kb.CLEAR_STATE,
    )  # fmt: skip
    assert api.json(f"/invoices/{invoice['invoiceId']}")["balance"] == 0
    assert api.json(f"/accounts/{account_id}?accountWithBalance=true")["accountBalance"] == 0
    assert api.json(f"/accounts/{account_id}/allTags?objectType=INVOICE") == [
        {"tagId": object_id(events[0]), "objectType": "INVOICE", "objectId": invoice["invoiceId"],
         "tagDefinitionId": kb.WRITTEN_OFF[0], "tagDefinitionName": "WRITTEN_OFF", "auditLogs": []}
    ]  # fmt: skip
    api.call("POST", f"/invoices/{invoice['invoiceId']}/tags", [kb.WRITTEN_OFF[0]])  # had it: nothing
    assert standin.drain_notifications() == []
    unknown = api.call("POST", f"/invoices/{invoice['invoiceId']}/tags", ["00000000-0000-0000-0000-000000000009"])
    assert (unknown[0], json.loads(unknown[2])["code"]) == (400, 3902)

    assert api.call("DELETE", f"/invoices/{invoice['invoiceId']}/tags?tagDef={kb.WRITTEN_OFF[0]}")[0] == 204
    assert types(standin.drain_notifications()) == ["TAG_DELETION", "BLOCKING_STATE", "OVERDUE_CHANGE"]
    assert api.json(f"/accounts/{account_id}/overdue")["name"] == "BLOCKED"
    assert api.json(f"/accounts/{account_id}/allTags?objectType=INVOICE") == []
    absent = api.call("DELETE", f"/invoices/{invoice['invoiceId']}/tags?tagDef={kb.WRITTEN_OFF[0]}")
    assert (absent[0], json.loads(absent[2])["code"]) == (404, 3950)


def test_pause_and_resume_a_bundle(standin, api):
    account_id = api.create_account()
    sub_id = api.create_subscription(account_id, "basic-monthly")
    bundle_id = api.json(f"/subscriptions/{sub_id}")["bundleId"]
    standin.drain_notifications()
    assert api.call("PUT", f"/bundles/{bundle_id}/pause")[0] == 204
    assert [n.body for n in standin.drain_notifications()] == [
        kb.encode_notification("BUNDLE_PAUSE", account_id, "BUNDLE", bundle_id, None)
    ]
    bundle = api.json(f"/bundles/{bundle_id}")
    assert list(bundle) == ["accountId", "bundleId", "externalKey", "subscriptions", "timeline", "auditLogs"]
    assert bundle["subscriptions"][0]["state"] == "BLOCKED"
    assert [e["eventType"] for e in bundle["timeline"]["events"]][-3:] == [
        "PAUSE_ENTITLEMENT",
        "PAUSE_BILLING",
        "PHASE",
    ]
    assert api.call("PUT", f"/bundles/{bundle_id}/pause")[0] == 400
    assert api.call("PUT", f"/bundles/{bundle_id}/resume")[0] == 204
    assert types(standin.drain_notifications()) == ["BUNDLE_RESUME"]
    assert api.json(f"/accounts/{account_id}/bundles")[0]["subscriptions"][0]["state"] == "ACTIVE"


def test_cancel_immediately(standin, api):
    account_id = api.create_account()
    sub_id = api.create_subscription(account_id, "premium-monthly")
    standin.drain_notifications()
    assert api.call("DELETE", f"/subscriptions/{sub_id}?entitlementPolicy=IMMEDIATE&billingPolicy=IMMEDIATE")[0] == 204
    events = standin.drain_notifications()
    assert types(events) == ["SUBSCRIPTION_CANCEL", "SUBSCRIPTION_CANCEL", "ENTITLEMENT_CANCEL"]
    assert [meta(n)["actionType"] for n in events[:2]] == ["REQUESTED", "EFFECTIVE"]
    sub = api.json(f"/subscriptions/{sub_id}")
    assert (sub["state"], sub["cancelledDate"], sub["billingEndDate"]) == ("CANCELLED", START, START)
    assert api.call("DELETE", f"/subscriptions/{sub_id}")[0] == 500  # SUB_CANCEL_BAD_STATE, as Kill Bill maps it


def test_cancel_end_of_term_takes_effect_when_the_clock_passes_it(standin, api):
    account_id = api.create_account()
    sub_id = api.create_subscription(account_id, "premium-monthly")
    standin.drain_notifications()
    assert (
        api.call("DELETE", f"/subscriptions/{sub_id}?entitlementPolicy=END_OF_TERM&billingPolicy=END_OF_TERM")[0] == 204
    )
    events = standin.drain_notifications()
    assert (types(events), meta(events[0])["actionType"]) == (["SUBSCRIPTION_CANCEL"], "REQUESTED")
    sub = api.json(f"/subscriptions/{sub_id}")
    assert (sub["state"], sub["cancelledDate"], sub["chargedThroughDate"]) == (
        "ACTIVE",
        "2026-11-01T00:00:00.000Z",
        "2026-11-01",
    )
    api.call("PUT", "/test/clock?months=1")
    events = standin.drain_notifications()
    assert types(events) == ["SUBSCRIPTION_CANCEL", "ENTITLEMENT_CANCEL"]  # and no renewal invoice
    assert meta(events[0])["actionType"] == "EFFECTIVE"
    assert api.json(f"/subscriptions/{sub_id}")["state"] == "CANCELLED"


def test_uncancel_then_the_subscription_renews(standin, api):
    account_id = api.create_account()
    sub_id = api.create_subscription(account_id, "premium-monthly")
    api.call("DELETE", f"/subscriptions/{sub_id}?entitlementPolicy=END_OF_TERM")
    standin.drain_notifications()
    assert api.call("PUT", f"/subscriptions/{sub_id}/uncancel")[0] == 204
    assert types(standin.drain_notifications()) == ["SUBSCRIPTION_UNCANCEL"]
    assert api.json(f"/subscriptions/{sub_id}")["cancelledDate"] is None
    api.call("PUT", "/test/clock?months=1")
    assert types(standin.drain_notifications()) == ["INVOICE_CREATION", "INVOICE_PAYMENT_SUCCESS", "PAYMENT_SUCCESS"]
    assert api.call("PUT", f"/subscriptions/{sub_id}/uncancel")[0] == 500  # not cancelled any more


def test_change_plan_immediately(standin, api):
    account_id = api.create_account()
    sub_id = api.create_subscription(account_id, "standard-monthly")  # no trial, default price 10.00
    standin.drain_notifications()
    assert api.call("PUT", f"/subscriptions/{sub_id}", {"planName": "premium-monthly"})[0] == 204
    events = standin.drain_notifications()
    assert types(events) == [
        "SUBSCRIPTION_CHANGE",
        "SUBSCRIPTION_CHANGE",
        "INVOICE_CREATION",
        "INVOICE_PAYMENT_SUCCESS",
        "PAYMENT_SUCCESS",
    ]
    assert [meta(n) for n in events[:2]] == [kb.subscription_meta(a, "odoo-acme") for a in ("REQUESTED", "EFFECTIVE")]
    sub = api.json(f"/subscriptions/{sub_id}")
    assert (sub["planName"], sub["productName"], sub["events"][-1]["eventType"]) == (
        "premium-monthly",
        "Premium",
        "CHANGE",
    )
    assert api.json(f"/invoices/{object_id(events[2])}")["amount"] == Decimal("49.00")
    both = f"/subscriptions/{sub_id}?requestedDate=2026-10-02&billingPolicy=IMMEDIATE"
    assert api.call("PUT", both, {"planName": "basic-monthly"})[0] == 400


def test_register_callback_replaces_the_url_and_emits_tenant_config_change(standin, api):
    assert api.json("/tenants/registerNotificationCallback") == {"key": "PUSH_NOTIFICATION_CB", "values": []}
    for url in ("http://a.test/kb", "http://b.test/kb"):
        status, headers, _ = api.call("POST", f"/tenants/registerNotificationCallback?cb={url}")
        assert (status, headers["Location"]) == (201, f"{standin.url}/1.0/kb/tenants/registerNotificationCallback")
    assert api.json("/tenants/registerNotificationCallback")["values"] == ["http://b.test/kb"]
    events = standin.drain_notifications()
    assert types(events) == ["TENANT_CONFIG_CHANGE", "TENANT_CONFIG_CHANGE"]
    assert events[0].body == kb.encode_notification(
        "TENANT_CONFIG_CHANGE", None, "TENANT_KVS", object_id(events[0]), {"key": "PUSH_NOTIFICATION_CB"}
    )
    assert api.call("DELETE", "/tenants/registerNotificationCallback")[0] == 204
    assert api.json("/tenants/registerNotificationCallback")["values"] == []


def catalog_xml(name: str = "SaaSOdoo", effective: str = "2026-01-01T00:00:00+00:00", trial: int = 30) -> str:
    return f"""<catalog>
  <effectiveDate>{effective}</effectiveDate><catalogName>{name}</catalogName>
  <recurringBillingMode>IN_ADVANCE</recurringBillingMode><currencies><currency>USD</currency></currencies>
  <products><product name="Basic"><category>BASE</category></product></products>
  <rules><changePolicy><changePolicyCase><policy>IMMEDIATE</policy></changePolicyCase></changePolicy>
    <cancelPolicy><cancelPolicyCase><policy>END_OF_TERM</policy></cancelPolicyCase></cancelPolicy></rules>
  <plans><plan name="basic-monthly"><product>Basic</product>
    <initialPhases><phase type="TRIAL"><duration><unit>DAYS</unit><number>{trial}</number></duration>
      <fixed><fixedPrice/></fixed></phase></initialPhases>
    <finalPhase type="EVERGREEN"><duration><unit>UNLIMITED</unit></duration><recurring>
      <billingPeriod>MONTHLY</billingPeriod><recurringPrice><price><currency>USD</currency><value>12.50</value>
      </price></recurringPrice></recurring></finalPhase></plan></plans>
  <priceLists><defaultPriceList name="DEFAULT"><plans><plan>basic-monthly</plan></plans></defaultPriceList></priceLists>
</catalog>"""


def test_a_catalog_version_is_added_never_replaced_and_bills_its_trial(standin, api):
    """DefaultCatalogUserApi.uploadCatalog: a version per upload; the same effectiveDate, or another catalogName,
    is refused with 400, code 2080 (CAT_INVALID_FOR_TENANT). The plan's trial comes from the catalog."""
    assert api.json("/catalog") == []  # the tenant's template catalog is never shown
    status, headers, _ = api.upload("/catalog/xml", catalog_xml())
    assert (status, headers["Location"]) == (201, f"{standin.url}/1.0/kb/catalog")
    for refused in (catalog_xml(), catalog_xml(trial=7), catalog_xml("Other", "2026-06-01T00:00:00Z")):
        status, _, raw = api.upload("/catalog/xml", refused)
        assert status == 400 and json.loads(raw)["code"] == 2080, raw
        assert json.loads(raw)["message"] == "Invalid catalog for tenant : 1"
    assert api.upload("/catalog/xml", catalog_xml(), content_type="application/json")[0] == 415
    assert api.upload("/catalog/xml", catalog_xml(effective="2026-06-01T00:00:00Z", trial=7))[0] == 201
    versions = api.json("/catalog")
    assert [v["effectiveDate"] for v in versions] == ["2026-01-01T00:00:00.000Z", "2026-06-01T00:00:00.000Z"]
    (plan,) = versions[0]["products"][0]["plans"]
    assert [(p["type"], p["duration"]["number"]) for p in plan["phases"]] == [("TRIAL", 30), ("EVERGREEN", -1)]
    assert plan["phases"][1]["prices"] == [{"currency": "USD", "value": Decimal("12.50")}]
    assert [json.loads(e.body)["metaData"] for e in standin.drain_notifications()] == ['{"key":"CATALOG"}'] * 2
    # The version in effect now (2026-10-01) has the 7-day trial, not the constructor's 14 days.
    account = api.create_account()
    status, headers, _ = api.call("POST", "/subscriptions", {"accountId": account, "planName": "basic-monthly",
                                                             "bundleExternalKey": "acme"})  # fmt: skip
    subscription = headers["Location"].rsplit("/", 1)[1]
    api.call("PUT", "/test/clock?days=6")
    assert api.json(f"/subscriptions/{subscription}")["phaseType"] == "TRIAL"
    api.call("PUT", "/test/clock?days=1")
    assert api.json(f"/subscriptions/{subscription}")["phaseType"] == "EVERGREEN"


def test_an_overdue_upload_replaces_the_last_and_is_stored_as_given(standin, api):
    """DefaultOverdueApi.uploadOverdueConfig: always 201, the single-valued key deleted then added; before any
    upload, NoOverdueConfig.xml's one clear state."""
    assert [s["name"] for s in api.json("/overdue")["overdueStates"]] == ["Clear"]
    config = """<overdueConfig><accountOverdueStates>
  <initialReevaluationInterval><unit>DAYS</unit><number>10</number></initialReevaluationInterval>
  <state name="LOCKED"><condition><timeSinceEarliestUnpaidInvoiceEqualsOrExceeds><unit>DAYS</unit><number>10</number>
  </timeSinceEarliestUnpaidInvoiceEqualsOrExceeds></condition><externalMessage>Locked</externalMessage>
  <blockChanges>true</blockChanges><disableEntitlementAndChangesBlocked>true</disableEntitlementAndChangesBlocked>
  </state></accountOverdueStates></overdueConfig>"""
    for _ in range(2):
        assert api.upload("/overdue/xml", config)[0] == 201
    assert api.json("/tenants/userKeyValue/OVERDUE_CONFIG") == {"key": "OVERDUE_CONFIG", "values": [config]}
    (state,) = api.json("/overdue")["overdueStates"]
    condition = state["condition"]["timeSinceEarliestUnpaidInvoiceEqualsOrExceeds"]
    assert (state["name"], state["isDisableEntitlement"], condition) == ("LOCKED", True, {"unit": "DAYS", "number": 10})
    assert types(standin.drain_notifications()) == [
        "TENANT_CONFIG_CHANGE", "TENANT_CONFIG_DELETION", "TENANT_CONFIG_CHANGE"
    ]  # fmt: skip


def test_test_clock_get_and_set(api):
    assert api.json("/test/clock") == {"currentUtcTime": START, "timeZone": "UTC", "localDate": "2026-10-01"}
    status, _, raw = api.call("POST", "/test/clock?requestedDate=2026-12-24T18:30:00.000Z")
    assert (status, json.loads(raw)["currentUtcTime"]) == (200, "2026-12-24T18:30:00.000Z")
    assert api.json("/test/clock?timeZone=Pacific/Auckland")["localDate"] == "2026-12-25"


# ---------------------------------------------------------------------------------------------- sender


def test_delivery_headers_and_body_are_kill_bills(sender, receivers):
    receiver = receivers()
    standin, api = sender()
    api.call("POST", f"/tenants/registerNotificationCallback?cb={receiver.url}")
    account_id = api.create_account()
    assert receiver.wait_for(2)
    assert standin.wait_idle() == (True, 0)
    (method, path, headers, body), (_, _, _, second) = receiver.requests
    assert (method, path) == ("POST", "/kb/events/acme?token=s3cret")
    assert {k.lower(): v for k, v in headers.items()} == {
        "connection": "Upgrade, HTTP2-Settings", "content-length": str(len(body)),
        "host": receiver.url.split("/")[2], "http2-settings": "AAEAAEAAAAIAAAABAAMAAABkAAQBAAAAAAUAAEAA",
        "upgrade": "h2c", "content-type": "application/json; charset=UTF-8", "user-agent": "KillBill/1.0",
    }  # fmt: skip
    assert body == kb.encode_notification(
        "TENANT_CONFIG_CHANGE", None, "TENANT_KVS", json.loads(body)["objectId"], {"key": "PUSH_NOTIFICATION_CB"}
    )
    assert second == kb.encode_notification("ACCOUNT_CREATION", account_id, "ACCOUNT", account_id, None)
    assert [(attempt, status) for _, attempt, status in standin.deliveries] == [(0, 200), (0, 200)]


def test_without_h2c_headers(sender, receivers):
    receiver = receivers()
    _, api = sender(h2c_headers=False)
    api.call("POST", f"/tenants/registerNotificationCallback?cb={receiver.url}")
    assert receiver.wait_for(1)
    assert not {"connection", "upgrade", "http2-settings"} & {k.lower() for k in receiver.requests[0][2]}


def test_a_500_twice_then_200_gives_three_identical_posts(sender, receivers):
    receiver = receivers(500, 500, 200)
    standin, api = sender(retries=[0.05, 0.05, 60])
    api.call("POST", f"/tenants/registerNotificationCallback?cb={receiver.url}")
    assert receiver.wait_for(3)
    assert standin.wait_idle(within=1) == (True, 0)
    bodies = {body for _, _, _, body in receiver.requests}
    assert len(receiver.requests) == 3 and len(bodies) == 1
    assert [(attempt, status) for _, attempt, status in standin.deliveries] == [(0, 500), (1, 500), (2, 200)]


def test_a_redirect_counts_as_a_failure_and_is_not_followed(sender, receivers):
    receiver = receivers(301)
    standin, api = sender(retries=[0.05])
    api.call("POST", f"/tenants/registerNotificationCallback?cb={receiver.url}")
    assert receiver.wait_for(2)
    assert standin.wait_idle(within=1) == (True, 0)
    assert [path for _, path, _, _ in receiver.requests] == ["/kb/events/acme?token=s3cret"] * 2
    assert [status for _, _, status in standin.deliveries] == [301, 200]


def test_gives_up_after_the_schedule_is_exhausted(sender, receivers, caplog):
    receiver = receivers(*[500] * 10)
    standin, api = sender(retries=[0.05, 0.05])
    api.call("POST", f"/tenants/registerNotificationCallback?cb={receiver.url}")
    assert standin.wait_idle(within=1) == (True, 0)
    assert len(receiver.requests) == 3
    assert "Max attempt number reached for push notification TENANT_CONFIG_CHANGE" in caplog.text


def test_a_connection_error_is_retried(sender, receivers):
    receiver = receivers()
    standin, api = sender(retries=[0.05])
    closed = socket.create_server(("127.0.0.1", 0))
    dead_url = f"http://127.0.0.1:{closed.getsockname()[1]}/kb"
    closed.close()
    api.call("POST", f"/tenants/registerNotificationCallback?cb={dead_url}")
    assert standin.wait_idle(within=1) == (True, 0)
    assert [attempt for _, attempt, _ in standin.deliveries] == [0, 1]
    assert all(isinstance(outcome, str) for _, _, outcome in standin.deliveries)
    assert receiver.requests == []


def test_moving_the_test_clock_fires_due_retries(sender, receivers):
    receiver = receivers(500)
    standin, api = sender()  # the default schedule: 15m, 30m, 2h, 12h, 1d
    api.call("POST", f"/tenants/registerNotificationCallback?cb={receiver.url}")
    assert standin.wait_idle() == (True, 1)  # idle, but one retry is pending
    api.call("PUT", "/test/clock?days=0")
    assert len(receiver.requests) == 1  # not due yet
    assert api.call("POST", "/test/clock?requestedDate=2026-10-01T00:15:00.000Z")[0] == 200
    assert receiver.wait_for(2)
    assert standin.wait_idle() == (True, 0)
    assert receiver.requests[0][3] == receiver.requests[1][3]


def test_registering_a_new_url_sends_later_events_there(sender, receivers):
    first, second = receivers(), receivers()
    standin, api = sender(dispatch_threads=3)
    api.call("POST", f"/tenants/registerNotificationCallback?cb={first.url}")
    assert standin.wait_idle() == (True, 0)
    api.call("POST", f"/tenants/registerNotificationCallback?cb={second.url}")
    api.create_account()
    assert standin.wait_idle() == (True, 0)
    assert [json.loads(r[3])["eventType"] for r in first.requests] == ["TENANT_CONFIG_CHANGE"]
    assert sorted(json.loads(r[3])["eventType"] for r in second.requests) == [
        "ACCOUNT_CREATION",
        "TENANT_CONFIG_CHANGE",
    ]


# ---------------------------------------------------------------------------------------------- process


def test_the_command_line_serves_and_stops_on_sigterm(tmp_path):
    (tmp_path / "pw").write_text(PASSWORD + "\n")
    (tmp_path / "secret").write_text(API_SECRET + "\n")
    argv = [sys.executable, str(SCRIPT), "--port", "0", "--password-file", str(tmp_path / "pw"),
            "--api-key", API_KEY, "--api-secret-file", str(tmp_path / "secret"), "--retries", "1s,2s",
            "--trial", "basic-monthly=14", "--price", "basic-monthly=12.50"]  # fmt: skip
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        assert "listening on http://127.0.0.1:" in line, line
        api = Api(line.split("listening on ")[1].split()[0])
        account_id = api.create_account()
        sub = api.json(f"/subscriptions/{api.create_subscription(account_id, 'basic-monthly')}")
        assert (sub["phaseType"], sub["prices"][1]["recurringPrice"]) == ("TRIAL", Decimal("12.50"))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
    assert PASSWORD not in line + proc.stderr.read()
