"""The few Kill Bill REST calls the runner reads state with (https://apidocs.killbill.io).

Plain urllib: no maintained Kill Bill client is on PyPI, and these are GETs with three auth headers.
"""

from __future__ import annotations

import base64
import http.client
import json
import urllib.error
import urllib.parse
import urllib.request
from decimal import Decimal, InvalidOperation

from .config import KillBillSettings

# killbill-api util/tag/ControlTagType.java: WRITTEN_OFF, new UUID(0, 4), the control tag of a written-off invoice.
WRITTEN_OFF_TAG_DEFINITION = "00000000-0000-0000-0000-000000000004"


class KillBillError(Exception):
    """Kill Bill could not answer (down, timeout, 5xx): transient, the job is retried."""


class KillBillNotFound(KillBillError):
    """404 with a BillingExceptionJson body: the object does not exist in Kill Bill."""


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """urllib would follow a redirect with the request's headers, the credentials among them, to wherever it points:
    Kill Bill's API answers without one, so a redirect is an error, and nothing is sent on."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        raise urllib.error.HTTPError(req.full_url, code, f"redirect to {newurl} refused", headers, fp)


class KillBill:
    def __init__(self, settings: KillBillSettings):
        self._opener = urllib.request.build_opener(_RefuseRedirects())
        self._base = settings.url.rstrip("/") + "/1.0/kb"
        self._timeout = settings.timeout_seconds
        basic = base64.b64encode(f"{settings.username}:{settings.password}".encode()).decode()
        self._headers = {
            "Authorization": f"Basic {basic}",
            "X-Killbill-ApiKey": settings.api_key,
            "X-Killbill-ApiSecret": settings.api_secret,
            "Accept": "application/json",
        }

    def _get(self, path: str, **query):
        url = f"{self._base}{path}"
        if query:
            url += "?" + urllib.parse.urlencode(query)
        request = urllib.request.Request(url, headers=self._headers)  # noqa: S310 - an http(s) URL from settings
        try:
            with self._opener.open(request, timeout=self._timeout) as response:
                return json.load(response)
        except urllib.error.HTTPError as error:
            body = _error_body(error)
            detail = body.get("message") or str(error.reason)
            # Kill Bill's own 404 names its exception (BillingExceptionJson); a proxy's or a starting server's does
            # not, and says nothing of the object.
            if error.code == 404 and body.get("className"):
                raise KillBillNotFound(f"GET {path}: {detail}") from None
            raise KillBillError(f"GET {path}: HTTP {error.code} {detail}") from None
        except (OSError, ValueError, http.client.HTTPException) as error:  # e.g. a reply cut short by a restart
            raise KillBillError(f"GET {path}: {error}") from None

    def account_bundles(self, account_id: str) -> list[dict]:
        """The account's bundles, each with its subscriptions (state, planName, bundleExternalKey…)."""
        return self._get(f"/accounts/{_segment(account_id)}/bundles", audit="NONE")

    def account(self, account_id: str) -> dict:
        """The account itself: name, email, locale, timeZone, country (a new tenant's company and admin)."""
        return self._get(f"/accounts/{_segment(account_id)}")

    def account_standing(self, account_id: str) -> tuple[Decimal, str | None]:
        """What the account owes (accountBalance, a JSON number: the sum of its unpaid invoices' balances) and its
        e-mail address, in one read."""
        found = self._get(f"/accounts/{_segment(account_id)}", accountWithBalance="true")
        value = found.get("accountBalance")
        try:
            balance = Decimal(str(value))
        except InvalidOperation:
            raise KillBillError(f"GET /accounts/{account_id}: accountBalance {value!r} is not a number") from None
        if not balance.is_finite():
            raise KillBillError(f"GET /accounts/{account_id}: accountBalance {value!r} is not a number")
        email = found.get("email")
        return balance, email if isinstance(email, str) else None

    def written_off_tags(self, account_id: str) -> dict[str, str]:
        """The account's invoices tagged WRITTEN_OFF (the control tag of id 00000000-…-000000000004), tag id to
        invoice id: GET /accounts/{id}/allTags?objectType=INVOICE, the tags of its invoices."""
        tags = self._get(f"/accounts/{_segment(account_id)}/allTags", objectType="INVOICE", includedDeleted="false")
        if not isinstance(tags, list):
            raise KillBillError(f"GET /accounts/{account_id}/allTags: not a list of tags")
        return {
            str(tag.get("tagId")): str(tag.get("objectId"))
            for tag in tags if isinstance(tag, dict) and tag.get("tagDefinitionId") == WRITTEN_OFF_TAG_DEFINITION
        }  # fmt: skip

    def account_overdue(self, account_id: str) -> dict:
        """{name, isDisableEntitlementAndChangesBlocked, …}: blocked after unpaid invoices."""
        return self._get(f"/accounts/{_segment(account_id)}/overdue")

    def account_ids(self, page_size: int = 100):
        """Every account id, page by page (the reconcile pass)."""
        offset = 0
        while True:
            page = self._get("/accounts/pagination", offset=offset, limit=page_size, audit="NONE")
            yield from (account["accountId"] for account in page)
            if len(page) < page_size:
                return
            offset += page_size


def _segment(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def _error_body(error: urllib.error.HTTPError) -> dict:
    """The error's JSON body (Kill Bill's BillingExceptionJson: className, code, message), or {}."""
    try:
        body = json.loads(error.read())
    except (OSError, ValueError, AttributeError):
        return {}
    return body if isinstance(body, dict) else {}
