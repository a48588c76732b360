"""What Kill Bill's users do to it, over its REST API: sign customers up, change and cancel plans, move
the test clock (https://apidocs.killbill.io/subscription, https://apidocs.killbill.io/test). The same calls
work on a real Kill Bill in test mode; only `payments_fail` and `pay` use the stand-in's control endpoints
(/standin/…), standing in for a payment plugin that declines cards."""

from __future__ import annotations

import base64
import json
import urllib.parse
import urllib.request

WRITTEN_OFF = "00000000-0000-0000-0000-000000000004"  # killbill-api ControlTagType.WRITTEN_OFF


class KillBillAPI:
    def __init__(self, url: str, username: str, password: str, api_key: str, api_secret: str):
        self.url = url.rstrip("/")
        basic = base64.b64encode(f"{username}:{password}".encode()).decode()
        self.headers = {
            "Authorization": f"Basic {basic}",
            "X-Killbill-ApiKey": api_key,
            "X-Killbill-ApiSecret": api_secret,
            "X-Killbill-CreatedBy": "saasodoo-demo",
            "Content-Type": "application/json",
            "Accept": "application/json",
        }

    def call(self, method: str, path: str, body: dict | list | None = None, **query):
        url = f"{self.url}{path}" + ("?" + urllib.parse.urlencode(query) if query else "")
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method=method, headers=self.headers)
        with urllib.request.urlopen(request, timeout=30) as response:
            text = response.read()
            location = response.headers.get("Location")
        if location:
            return location.rstrip("/").rsplit("/", 1)[-1]
        return json.loads(text) if text else None

    def register_callback(self, callback_url: str) -> None:
        self.call("POST", "/1.0/kb/tenants/registerNotificationCallback", cb=callback_url)

    def sign_up(self, name: str, tenant_id: str, plan: str, **account: str) -> tuple[str, str]:
        """A new account with one subscription whose bundle external key is the tenant id; `account` adds
        AccountJson fields (email, locale, timeZone, country)."""
        account_id = self.call(
            "POST", "/1.0/kb/accounts", {"name": name, "externalKey": name, "currency": "USD", **account}
        )
        return account_id, self.subscribe(account_id, tenant_id, plan)

    def subscribe(self, account_id: str, tenant_id: str, plan: str) -> str:
        """A new subscription of the account whose bundle external key is the tenant id (a bundle of that key
        must have no active subscription)."""
        return self.call(
            "POST",
            "/1.0/kb/subscriptions",
            {"accountId": account_id, "externalKey": f"{tenant_id}-base", "bundleExternalKey": tenant_id,
             "planName": plan},
        )  # fmt: skip

    def change_plan(self, subscription_id: str, plan: str) -> None:
        self.call("PUT", f"/1.0/kb/subscriptions/{subscription_id}", {"planName": plan}, billingPolicy="IMMEDIATE")

    def cancel(self, subscription_id: str) -> None:
        self.call(
            "DELETE", f"/1.0/kb/subscriptions/{subscription_id}", entitlementPolicy="IMMEDIATE",
            billingPolicy="IMMEDIATE",
        )  # fmt: skip

    def move_clock(self, days: int) -> None:
        self.call("PUT", "/1.0/kb/test/clock", days=days)

    def subscription(self, subscription_id: str) -> dict:
        return self.call("GET", f"/1.0/kb/subscriptions/{subscription_id}")

    def overdue(self, account_id: str) -> dict:
        return self.call("GET", f"/1.0/kb/accounts/{account_id}/overdue")

    def invoices(self, account_id: str) -> list[dict]:
        return self.call("GET", f"/1.0/kb/accounts/{account_id}/invoices")

    def write_off(self, invoice_id: str, written_off: bool = True) -> None:
        """The invoice tagged WRITTEN_OFF (ControlTagType's id 4), or the tag removed: the debt given up."""
        if written_off:
            self.call("POST", f"/1.0/kb/invoices/{invoice_id}/tags", [WRITTEN_OFF])
        else:
            self.call("DELETE", f"/1.0/kb/invoices/{invoice_id}/tags", tagDef=WRITTEN_OFF)

    # The stand-in's control endpoints (a payment plugin declining, then accepting, the card).
    def payments_fail(self, account_id: str, fail: bool = True) -> None:
        self.call("POST", f"/standin/accounts/{account_id}/payment_behaviour", {"fail": fail})

    def pay(self, account_id: str) -> None:
        self.call("POST", f"/standin/accounts/{account_id}/pay")
