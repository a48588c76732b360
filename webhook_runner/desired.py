"""What a tenant should be, from what Kill Bill says now (docs/runner.md).

Events are triggers: they come twice, late and out of order, and two different events can have the same
bytes. So the worker reads the account back from Kill Bill and this module compares each subscription
with the tenant's registry row; the actions it returns bring the tenant there, and once they ran the same
comparison returns nothing. Pure: no I/O, unit-tested on its own.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import unicodedata
import zoneinfo
from dataclasses import dataclass, field
from decimal import Decimal

from ansible_collections.saasodoo.platform.plugins.module_utils.lifecycle import ENDED, LIVE, STARTING

# The tenant id is the bundle's external key (the customer's instance name); the same rule as the
# collection's placement (module_utils/placement.py) and the tenant playbooks.
TENANT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,47}")

PLAYBOOKS = {
    "provision": "tenant_provision.yml",
    "change_plan": "tenant_change_plan.yml",
    "suspend": "tenant_suspend.yml",
    "resume": "tenant_resume.yml",
    "terminate": "tenant_terminate.yml",
    # A terminated tenant whose account subscribes again (a new subscription): its retained database and files
    # opened again as they were at its termination (tenant_resume.yml -e reactivate=true), under the new one.
    "reactivate": "tenant_resume.yml",
}

OVERDUE_CLEAR_STATE = "__KILLBILL__CLEAR__OVERDUE_STATE__"


@dataclass(frozen=True)
class Tenant:
    """The registry row's part the decision needs."""

    tenant_id: str
    status: str  # provisioning | active | suspended | terminated | purged | failed
    plan_name: str
    customer_id: str | None = None  # the Kill Bill account and subscription it was provisioned for
    subscription_id: str | None = None


@dataclass(frozen=True)
class Action:
    tenant_id: str
    action: str  # a key of PLAYBOOKS
    extravars: dict = field(default_factory=dict)
    reason: str = ""

    @property
    def playbook(self) -> str:
        return PLAYBOOKS[self.action]


@dataclass(frozen=True)
class BillingRules:
    """The seeds' billing rules the runner applies, each a setting (RunnerSettings.billing_rules)."""

    # A customer gets one trial for life: a second tenant of the same Kill Bill account is provisioned once its
    # subscription is past its trial and paid for.
    one_trial_per_customer: bool = True
    # ... and per e-mail address: a new account under an address whose trial another account's tenant had
    # (RunnerSettings.customer_email_key; webhook_runner/convergence.py Convergence._trial_by_address).
    one_trial_per_email: bool = True
    # A customer coming back (a terminated or purged tenant's account subscribing again) gets no new trial: the
    # tenant is reactivated (or provisioned anew) once the new subscription is past its trial and paid for.
    reactivation_paid_up_front: bool = True
    # A customer whose debt is written off (an invoice of its account tagged WRITTEN_OFF in Kill Bill, which clears
    # the account's overdue state as if it paid) has its tenants terminated, and gets no new one while that holds.
    terminate_written_off: bool = True


# Mailboxes that ignore the dots of the local part (Gmail, under both its domains).
DOTLESS_DOMAINS = {"gmail.com": "gmail.com", "googlemail.com": "gmail.com"}


def email_hash(key: str, address: str) -> str | None:
    """A keyed hash (HMAC-SHA256) of an e-mail address as one customer's: case (Unicode-folded), blanks, quotes
    around the local part, a `+tag` after it, a trailing dot of the domain and, for Gmail, dots and googlemail.com
    do not make another. None for what is not an address."""
    local, at, domain = unicodedata.normalize("NFKC", address).strip().casefold().rpartition("@")
    local, domain = local.strip('"').split("+", 1)[0], domain.rstrip(".")
    if domain in DOTLESS_DOMAINS:
        local, domain = local.replace(".", ""), DOTLESS_DOMAINS[domain]
    if not (at and local and domain):
        return None
    return hmac.new(key.encode(), f"{local}@{domain}".encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Skip:
    """Kill Bill asks for something the platform will not do by itself; recorded as a skipped job."""

    tenant_id: str | None
    reason: str
    recheck: bool = False  # it waits on a read that failed (the account's balance): read the account again later


# What a Kill Bill account may give a new tenant (AccountJson's fields), each kept only in the shape it should have.
PROFILE_FIELDS = {
    "name": ("name", re.compile(r"[^\x00-\x1f]{1,200}")),
    "email": ("email", re.compile(r"[^@\s]{1,64}@[A-Za-z0-9.-]{1,189}")),
    "locale": ("locale", re.compile(r"[a-z]{2,3}(_[A-Z]{2})?")),
    "timeZone": ("time_zone", None),  # one of the IANA zones
    "country": ("country", re.compile(r"[A-Z]{2}")),
}


def customer_profile(account: dict) -> dict:
    """The account's name, email, locale, time zone and country for its tenant's Odoo; a field missing or of a bad
    shape is left out (the tenant gets a default there)."""
    profile = {}
    for field_name, (key, shape) in PROFILE_FIELDS.items():
        value = account.get(field_name)
        if not isinstance(value, str) or not value.strip():
            continue
        value = value.strip()
        valid = value in zoneinfo.available_timezones() if shape is None else bool(shape.fullmatch(value))
        if valid:
            profile[key] = value
    return profile


def database_name(tenant_id: str) -> str:
    """The tenant's database and role name, as placement makes it: ids differing only in case or '-'/'_' share
    one, so they are one tenant (the registry's lookup key for a bundle)."""
    return "t_" + tenant_id.lower().replace("-", "_")


def tenant_id_of(subscription: dict) -> str | None:
    key = subscription.get("bundleExternalKey") or ""
    return key if TENANT_ID.fullmatch(key) else None


def is_blocked(subscription: dict, overdue: dict | None) -> bool:
    """Entitlement blocked: a paused bundle or a blocking overdue state (e.g. after failed payments)."""
    return subscription.get("state") == "BLOCKED" or bool((overdue or {}).get("isDisableEntitlementAndChangesBlocked"))


def billing_status(subscription: dict, overdue: dict | None, balance: Decimal | None) -> str | None:
    """registry.tenants.billing_status, from Kill Bill's state read back, the most pressing first: the account's
    overdue stage (`overdue:<state>`, from its overdue configuration: a warning stage, a blocking one), else
    `payment_required` while an invoice is unpaid (a balance above zero), else `trial` in a trial phase, else
    `paid`. None for an add-on (the tenant is its base subscription's) and when the balance could not be read."""
    if subscription.get("productCategory", "BASE") != "BASE":
        return None
    state = (overdue or {}).get("name")
    if state and state != OVERDUE_CLEAR_STATE and not (overdue or {}).get("isClearState"):
        return f"overdue:{state}"
    if balance is None:
        return None
    if balance > 0:
        return "payment_required"
    return "trial" if subscription.get("phaseType") == "TRIAL" else "paid"


def foreign_claim(subscription: dict, tenant: Tenant) -> str | None:
    """Why `subscription` may not act on `tenant`, if it belongs to another account or subscription.

    A tenant belongs to the Kill Bill account and subscription it was provisioned for, not to whoever holds
    its bundle key: after a bundle transfer, or a key reused after a cancellation, another account must not
    suspend, change, terminate or take over its data. tenant_transfer.yml moves a tenant on purpose.
    """
    account, subscription_id = subscription.get("accountId"), subscription.get("subscriptionId")
    if tenant.customer_id is None:
        owner = "no Kill Bill account"
    elif tenant.customer_id != account:
        owner = f"account {tenant.customer_id}"
    elif tenant.subscription_id not in (None, subscription_id):
        owner = f"subscription {tenant.subscription_id} of the same account"
    else:
        return None
    return (
        f"subscription {subscription_id} of account {account} claims tenant {tenant.tenant_id}, which belongs "
        f"to {owner}: nothing done (tenant_transfer.yml moves a tenant to another account on purpose)"
    )


def unpaid(subscription: dict, balance: Decimal | None) -> str | None:
    """Why the subscription is not paid for yet, or None: in its trial; an invoice of its account unpaid; the
    account's balance unknown. (Kill Bill may notify a phase before it writes that phase's invoice: a zero balance
    read in between passes, and a payment that then fails is the overdue rules' to act on.)"""
    if subscription.get("phaseType") == "TRIAL":
        return "it is in its trial"
    if balance is None:
        return UNKNOWN_BALANCE
    return "an invoice of its account is unpaid" if balance > 0 else None


UNKNOWN_BALANCE = "its account's balance could not be read"


def desired_actions(
    subscription: dict,
    overdue: dict | None,
    tenant: Tenant | None,
    plans: set[str],
    balance: Decimal | None = None,
    account_tenants: frozenset[str] = frozenset(),
    rules: BillingRules = BillingRules(),  # frozen: one default shared is safe
    written_off: tuple[str, ...] = (),
) -> list:
    """Actions (in order) bringing `tenant` to what `subscription` says, or Skips explaining why not.

    `tenant` is the registry's tenant with the subscription's database name (see database_name), if any;
    `balance` its account's (None: unknown); `account_tenants` the ids of the tenants that account has or had, and
    of its subscriptions that started before this one; `written_off` the ids of its account's written-off
    invoices."""
    if subscription.get("productCategory", "BASE") != "BASE":
        return []  # add-ons do not make tenants
    tenant_id = tenant_id_of(subscription)
    if tenant_id is None:
        return [
            Skip(
                None,
                f"subscription {subscription.get('subscriptionId')}: bundle external key "
                f"{subscription.get('bundleExternalKey')!r} is not a tenant id (1-48 letters, digits, '-' or '_')",
            )
        ]
    if tenant is not None and tenant.tenant_id != tenant_id:
        return [
            Skip(
                tenant_id,
                f"bundle key {tenant_id!r} names database {database_name(tenant_id)}, which is tenant "
                f"{tenant.tenant_id!r}'s: ids that differ only in case or '-'/'_' are one tenant; nothing done",
            )
        ]
    state = subscription.get("state")
    plan = subscription.get("planName")
    status = tenant.status if tenant else None
    account = subscription.get("accountId")
    same_account = tenant is not None and account is not None and tenant.customer_id == account
    if tenant is not None and (claim := foreign_claim(subscription, tenant)):
        if same_account and state in ("CANCELLED", "EXPIRED"):
            return []  # the account's earlier subscription, which a new one for the same tenant replaced
        if not (same_account and status in ENDED):  # a returning customer's new subscription
            return [Skip(tenant_id, claim)]

    if state in ("CANCELLED", "EXPIRED"):
        if status in LIVE:
            return [Action(tenant_id, "terminate", {"tenant_id": tenant_id}, f"Kill Bill: subscription {state}")]
        return []  # never provisioned, or already terminated
    if state not in ("ACTIVE", "BLOCKED"):
        return []  # PENDING: starts later, its EFFECTIVE event will come
    if written_off and rules.terminate_written_off:
        invoices = ", ".join(written_off)
        if status in LIVE:
            reason = f"Kill Bill: its account's debt written off (invoice {invoices})"
            return [Action(tenant_id, "terminate", {"tenant_id": tenant_id}, reason)]
        if status in ENDED and subscription.get("subscriptionId") == tenant.subscription_id:
            return []  # terminated for it, or before
        return [
            Skip(
                tenant_id,
                f"the debt of account {account} was written off (invoice {invoices}): no tenant is provisioned or"
                " reactivated for it while an invoice of it is tagged WRITTEN_OFF in Kill Bill",
            )
        ]
    if plan not in plans:
        return [Skip(tenant_id, f"plan {plan!r} is not in the catalog (inventory group_vars/all/plans.yml)")]

    blocked = is_blocked(subscription, overdue)
    if status in ENDED:  # the customer of an ended tenant comes back
        ended = "purged (its retention ended, its data is gone)" if status == "purged" else "terminated"
        if subscription.get("subscriptionId") == tenant.subscription_id:  # Kill Bill never revives a cancelled one
            reopen = "" if status == "purged" else "tenant_resume.yml -e reactivate=true reopens it, or "
            return [
                Skip(
                    tenant_id,
                    f"Kill Bill says {state} but tenant {tenant_id} was {ended} (by hand?): nothing done; "
                    f"{reopen}cancel the subscription",
                )
            ]
        if blocked:
            return []  # once Kill Bill unblocks it (paid)
        if rules.reactivation_paid_up_front and (why := unpaid(subscription, balance)):
            return [
                Skip(
                    tenant_id,
                    f"tenant {tenant_id} was {ended}: a returning customer pays up front, without a new trial; "
                    f"subscription {subscription.get('subscriptionId')} is acted on once past its trial and paid "
                    f"({why})",
                    recheck=why == UNKNOWN_BALANCE,
                )
            ]
        ids = {"customer_id": account, "subscription_id": subscription.get("subscriptionId")}
        if status == "purged":
            reason = f"Kill Bill: {plan} again for the account of tenant {tenant_id}, {ended}: provisioned anew, empty"
            return [Action(tenant_id, "provision", {"tenant_id": tenant_id, "plan": plan, **ids}, reason)]
        reason = f"Kill Bill: {plan} again for the account of terminated tenant {tenant_id}"
        actions = [Action(tenant_id, "reactivate", {"tenant_id": tenant_id, "reactivate": True, **ids}, reason)]
        if plan != tenant.plan_name:
            reason = f"Kill Bill: plan {tenant.plan_name} -> {plan}"
            actions.append(Action(tenant_id, "change_plan", {"tenant_id": tenant_id, "plan": plan}, reason))
        return actions
    if status is None or status in STARTING:
        if blocked:
            return []  # a paid-first tenant: provisioned once the payment unblocks it
        others = sorted(other for other in account_tenants if database_name(other) != database_name(tenant_id))
        if status is None and rules.one_trial_per_customer and others and (why := unpaid(subscription, balance)):
            return [
                Skip(
                    tenant_id,
                    f"one trial per customer (per Kill Bill account): account {account} has had tenant "
                    f"{', '.join(others)}; {tenant_id} is provisioned once subscription "
                    f"{subscription.get('subscriptionId')} is past its trial and paid ({why})",
                    recheck=why == UNKNOWN_BALANCE,
                )
            ]
        ids = {"customer_id": subscription.get("accountId"), "subscription_id": subscription.get("subscriptionId")}
        return [Action(tenant_id, "provision", {"tenant_id": tenant_id, "plan": plan, **ids}, f"Kill Bill: {plan}")]

    # Service first: a customer who paid is back before a plan change (a move may take minutes, or be parked).
    actions = []
    if blocked and status == "active":
        actions.append(Action(tenant_id, "suspend", {"tenant_id": tenant_id}, "Kill Bill: entitlement blocked"))
    if not blocked and status == "suspended":
        actions.append(Action(tenant_id, "resume", {"tenant_id": tenant_id}, "Kill Bill: entitlement unblocked"))
    if plan != tenant.plan_name:
        reason = f"Kill Bill: plan {tenant.plan_name} -> {plan}"
        actions.append(Action(tenant_id, "change_plan", {"tenant_id": tenant_id, "plan": plan}, reason))
    return actions
