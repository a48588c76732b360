"""webhook_runner's pure parts: the notification parser, the desired-state decision and the settings."""

import json
import os
import re
from decimal import Decimal

import pytest

from ansible_collections.saasodoo.platform.plugins.module_utils import placement
from webhook_runner.config import ConfigError, load_settings, settings_from_dict, tenant_login_url
from webhook_runner.desired import (
    Action,
    BillingRules,
    Skip,
    Tenant,
    billing_status,
    customer_profile,
    database_name,
    desired_actions,
    email_hash,
)
from webhook_runner.notification import InvalidNotification, parse_notification, written_off_tag
from webhook_runner.schedules import DEFAULT_INTERVALS

# Kill Bill's own capture (https://docs.killbill.io/latest/push_notifications.html) and an INVOICE_PAYMENT_FAILED
# body as killbill-plugin-api's InvoicePaymentMetadata serializes it, byte for byte.
CAPTURED = (
    b'{"eventType":"TENANT_CONFIG_CHANGE","accountId":null,"objectType":"TENANT_KVS",'
    b'"objectId":"5cf9c272-a493-4178-af30-3b8de0344a26","metaData":"{\\"key\\":\\"CATALOG\\"}"}'
)
PAYMENT_FAILED = (
    b'{"eventType":"INVOICE_PAYMENT_FAILED","accountId":"2ad52f53-85ae-408a-9879-32a7e59dd03d",'
    b'"objectType":"INVOICE","objectId":"4b964a85-ed83-45a5-9938-88ff53bc513f","metaData":"{\\"paymentId\\":null,'
    b'\\"paymentAttemptId\\":\\"246986a1-4f5a-4b1b-beee-9e215300a89e\\",\\"invoicePaymentType\\":\\"ATTEMPT\\",'
    b'\\"paymentDate\\":\\"2026-10-01T00:00:07.000Z\\",\\"amount\\":0E-9,\\"currency\\":\\"USD\\",'
    b'\\"linkedInvoicePaymentId\\":null,\\"paymentCookieId\\":null,\\"processedCurrency\\":\\"USD\\"}"}'
)
PLANS = {"basic-monthly", "standard-monthly", "premium-monthly"}


def test_the_captured_body_is_164_bytes_and_parses():
    assert len(CAPTURED) == 164
    notification = parse_notification(CAPTURED)
    assert notification.event_type == "TENANT_CONFIG_CHANGE"
    assert notification.account_id is None
    assert notification.meta_data == {"key": "CATALOG"}


def test_metadata_is_decoded_a_second_time_with_exponent_amounts():
    notification = parse_notification(PAYMENT_FAILED)
    assert notification.meta_data["amount"] == 0
    assert notification.meta_data["paymentId"] is None
    assert notification.action_type is None


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "not JSON"),
        (b"[]", "JSON object"),
        (b'{"eventType":"X","accountId":null,"objectType":"Y","objectId":null}', "lacks metaData"),
        (b'{"eventType":"","accountId":null,"objectType":"Y","objectId":null,"metaData":null}', "eventType"),
        (b'{"eventType":"X","accountId":7,"objectType":"Y","objectId":null,"metaData":null}', "accountId"),
        (b'{"eventType":"X","accountId":null,"objectType":"Y","objectId":null,"metaData":{"a":1}}', "string holding"),
        (b'{"eventType":"X","accountId":null,"objectType":"Y","objectId":null,"metaData":"{oops"}', "metaData is not"),
        (b'{"eventType":"X","accountId":null,"objectType":"Y","objectId":null,"metaData":"[1]"}', "JSON object"),
        (b"\xff\xfe", "not UTF-8"),
        # JSON, but not UTF-8: Python's parser would take it, the inbox could not store it.
        (
            '{"eventType":"X","accountId":null,"objectType":"Y","objectId":null,"metaData":null}'.encode("utf-16"),
            "not UTF-8",
        ),
        (b"[" * 1000 + b"]" * 1000, "one flat JSON object"),
        (
            b'{"eventType":"X","accountId":null,"objectType":"Y","objectId":null,"metaData":"'
            + b"[" * 1000
            + b"]" * 1000
            + b'"}',
            "nests deeper",
        ),
    ],
)
def test_bad_bodies_are_refused_with_the_reason(body, message):
    with pytest.raises(InvalidNotification, match=message):
        parse_notification(body)


def subscription(state="ACTIVE", plan="basic-monthly", key="acme", **extra):
    return {
        "accountId": "a-1", "bundleExternalKey": key, "subscriptionId": "s-1", "productCategory": "BASE",
        "planName": plan, "phaseType": "EVERGREEN", "state": state, **extra,
    }  # fmt: skip


CLEAR = {"name": "__KILLBILL__CLEAR__OVERDUE_STATE__", "isDisableEntitlementAndChangesBlocked": False}
BLOCKED = {"name": "BLOCKED", "isDisableEntitlementAndChangesBlocked": True}
PAID = Decimal(0)  # the account's balance: nothing due
NO_RULES = BillingRules(
    one_trial_per_customer=False,
    one_trial_per_email=False,
    reactivation_paid_up_front=False,
    terminate_written_off=False,
)


def owned(status: str, plan: str) -> Tenant:
    """A tenant provisioned for subscription s-1 of account a-1, as subscription() describes it."""
    return Tenant("acme", status, plan, "a-1", "s-1")


def actions(decisions):
    return [(d.action, d.extravars.get("plan")) if isinstance(d, Action) else ("skip", d.reason) for d in decisions]


def test_a_new_active_subscription_is_provisioned_with_the_kill_bill_ids():
    [decision] = desired_actions(subscription(), CLEAR, None, PLANS)
    assert decision.playbook == "tenant_provision.yml"
    assert decision.extravars == {
        "tenant_id": "acme",
        "plan": "basic-monthly",
        "customer_id": "a-1",
        "subscription_id": "s-1",
    }


def test_a_tenant_matching_kill_bill_needs_nothing():
    assert desired_actions(subscription(), CLEAR, owned("active", "basic-monthly"), PLANS) == []
    assert desired_actions(subscription("BLOCKED"), CLEAR, owned("suspended", "basic-monthly"), PLANS) == []
    assert desired_actions(subscription("CANCELLED"), CLEAR, owned("terminated", "basic-monthly"), PLANS) == []


@pytest.mark.parametrize(
    ("sub", "overdue", "tenant", "expected"),
    [
        (subscription(), BLOCKED, owned("active", "basic-monthly"), [("suspend", None)]),
        (subscription("BLOCKED"), CLEAR, owned("active", "basic-monthly"), [("suspend", None)]),
        (subscription(), CLEAR, owned("suspended", "basic-monthly"), [("resume", None)]),
        (subscription(plan="standard-monthly"), CLEAR, owned("active", "basic-monthly"),
         [("change_plan", "standard-monthly")]),
        # back in service first, then resized (a move takes longer, and may be parked); or suspended first
        (subscription(plan="standard-monthly"), CLEAR, owned("suspended", "basic-monthly"),
         [("resume", None), ("change_plan", "standard-monthly")]),
        (subscription(plan="standard-monthly"), BLOCKED, owned("active", "basic-monthly"),
         [("suspend", None), ("change_plan", "standard-monthly")]),
        (subscription("CANCELLED"), CLEAR, owned("suspended", "basic-monthly"), [("terminate", None)]),
        (subscription("EXPIRED"), CLEAR, owned("active", "basic-monthly"), [("terminate", None)]),
        (subscription("CANCELLED"), CLEAR, None, []),  # never provisioned: nothing to end
        (subscription(), BLOCKED, None, []),  # paid first: provisioned once the payment clears
        (subscription("PENDING"), CLEAR, None, []),
    ],
)  # fmt: skip
def test_kill_bill_state_decides(sub, overdue, tenant, expected):
    assert actions(desired_actions(sub, overdue, tenant, PLANS)) == expected


WARNING = {"name": "WARNING", "isClearState": False, "isDisableEntitlementAndChangesBlocked": False}


@pytest.mark.parametrize(
    ("sub", "overdue", "balance", "expected"),
    [
        (subscription(phaseType="TRIAL"), CLEAR, Decimal(0), "trial"),
        (subscription(), CLEAR, Decimal(0), "paid"),
        (subscription(), CLEAR, Decimal("29.90"), "payment_required"),  # an invoice unpaid, no overdue stage yet
        (subscription(phaseType="TRIAL"), CLEAR, Decimal("0.01"), "payment_required"),
        (subscription(), WARNING, Decimal("29.90"), "overdue:WARNING"),  # the stage the overdue configuration names
        (subscription(), BLOCKED, None, "overdue:BLOCKED"),  # known without the balance
        (subscription(), None, Decimal(-5), "paid"),  # a credit is no debt
        (subscription(), CLEAR, None, None),  # the balance unread: nothing to say
        (subscription(productCategory="ADD_ON"), BLOCKED, Decimal(9), None),  # the base subscription's say
    ],
)  # fmt: skip
def test_billing_status_says_the_most_pressing_of_kill_bills_states(sub, overdue, balance, expected):
    assert billing_status(sub, overdue, balance) == expected


def test_unknown_plans_invalid_keys_and_terminated_tenants_are_skipped_with_a_reason():
    [skip] = desired_actions(subscription(plan="gold-yearly"), CLEAR, None, PLANS)
    assert isinstance(skip, Skip) and "gold-yearly" in skip.reason and skip.tenant_id == "acme"
    [skip] = desired_actions(subscription(key="no spaces allowed"), CLEAR, None, PLANS)
    assert isinstance(skip, Skip) and skip.tenant_id is None and "not a tenant id" in skip.reason
    [skip] = desired_actions(subscription(), CLEAR, owned("purged", "basic-monthly"), PLANS)
    assert "was purged" in skip.reason and "cancel the subscription" in skip.reason


def test_a_purged_tenant_whose_account_subscribes_again_is_provisioned_anew_never_for_another_account():
    again = subscription(subscriptionId="s-2", planName="standard-monthly")
    [provision] = desired_actions(again, CLEAR, owned("purged", "basic-monthly"), PLANS, PAID)
    assert (provision.action, provision.extravars) == (
        "provision", {"tenant_id": "acme", "plan": "standard-monthly", "customer_id": "a-1", "subscription_id": "s-2"}
    )  # fmt: skip
    assert "provisioned anew, empty" in provision.reason, "the job says the data is gone"
    assert desired_actions(again, BLOCKED, owned("purged", "basic-monthly"), PLANS, PAID) == []  # once paid
    [skip] = desired_actions(
        subscription(accountId="a-2", subscriptionId="s-9"), CLEAR, owned("purged", "basic-monthly"), PLANS
    )
    assert isinstance(skip, Skip) and "belongs to account a-1" in skip.reason


def test_a_terminated_tenant_whose_account_subscribes_again_is_reactivated_never_for_another_account():
    again = subscription(subscriptionId="s-2", planName="standard-monthly")
    assert actions(desired_actions(again, CLEAR, owned("terminated", "basic-monthly"), PLANS, PAID)) == [
        ("reactivate", None), ("change_plan", "standard-monthly")
    ]  # fmt: skip
    [reactivate, _] = desired_actions(again, CLEAR, owned("terminated", "basic-monthly"), PLANS, PAID)
    assert reactivate.extravars == {"tenant_id": "acme", "reactivate": True, "customer_id": "a-1",
                                    "subscription_id": "s-2"}  # fmt: skip
    # Its own subscription active: Kill Bill never revives a cancelled one, so the tenant was terminated by hand.
    [skip] = desired_actions(subscription(), CLEAR, owned("terminated", "basic-monthly"), PLANS, PAID)
    assert isinstance(skip, Skip) and "terminated (by hand?)" in skip.reason
    assert desired_actions(again, BLOCKED, owned("terminated", "basic-monthly"), PLANS, PAID) == []  # once paid
    [skip] = desired_actions(subscription(accountId="a-2"), CLEAR, owned("terminated", "basic-monthly"), PLANS, PAID)
    assert isinstance(skip, Skip) and "belongs to account a-1" in skip.reason
    # Once reactivated under s-2, the cancelled s-1 of the same account asks for nothing; an active s-1 is refused.
    reactivated = Tenant("acme", "active", "standard-monthly", "a-1", "s-2")
    assert desired_actions(subscription("CANCELLED"), CLEAR, reactivated, PLANS) == []
    [skip] = desired_actions(subscription(), CLEAR, reactivated, PLANS)
    assert isinstance(skip, Skip) and "subscription s-2 of the same account" in skip.reason


def test_a_returning_customer_pays_up_front_without_a_new_trial():
    """A terminated (or purged) tenant's account subscribing again: nothing while the new subscription is in its
    trial or unpaid (or its balance unknown), the job saying why; reactivated (provisioned anew) once paid. The
    rule turned off, the trial serves."""
    for status, action in (("terminated", "reactivate"), ("purged", "provision")):
        tenant = owned(status, "basic-monthly")
        for phase, balance, why in (
            ("TRIAL", PAID, "in its trial"),
            ("EVERGREEN", Decimal(10), "is unpaid"),
            ("EVERGREEN", None, "could not be read"),
        ):
            again = subscription(subscriptionId="s-2", phaseType=phase)
            [skip] = desired_actions(again, CLEAR, tenant, PLANS, balance)
            assert isinstance(skip, Skip) and "pays up front, without a new trial" in skip.reason, skip
            assert why in skip.reason and "subscription s-2 " in skip.reason
            assert skip.recheck == (balance is None)  # the balance is read again; anything else comes as events
        again = subscription(subscriptionId="s-2", phaseType="TRIAL")
        assert actions(desired_actions(again, CLEAR, tenant, PLANS, PAID, rules=NO_RULES))[0][0] == action
        paid = subscription(subscriptionId="s-2")
        assert actions(desired_actions(paid, CLEAR, tenant, PLANS, PAID))[0][0] == action


def test_a_written_off_accounts_tenants_are_terminated_and_get_no_new_one():
    """An invoice of the account tagged WRITTEN_OFF: Kill Bill clears its overdue state as if it paid, but its
    tenant is terminated, not resumed; no tenant is provisioned or reactivated for the account while that holds.
    The rule turned off, the account is as any other."""
    for status in ("active", "suspended"):
        [terminate] = desired_actions(subscription(), CLEAR, owned(status, "basic-monthly"), PLANS, PAID,
                                      written_off=("i-7",))  # fmt: skip
        assert (terminate.action, terminate.reason) == ("terminate", "Kill Bill: its account's debt written off"
                                                        " (invoice i-7)")  # fmt: skip
    assert (
        desired_actions(subscription(), CLEAR, owned("terminated", "basic-monthly"), PLANS, written_off=("i-7",)) == []
    )
    for tenant in (None, owned("terminated", "basic-monthly"), owned("purged", "basic-monthly")):
        again = subscription(subscriptionId="s-2")
        [skip] = desired_actions(again, CLEAR, tenant, PLANS, PAID, written_off=("i-7", "i-8"))
        assert isinstance(skip, Skip) and "the debt of account a-1 was written off (invoice i-7, i-8)" in skip.reason
    # A cancellation is one still; the rule off, a suspended tenant is resumed as the overdue state says.
    [terminate] = desired_actions(subscription("CANCELLED"), CLEAR, owned("suspended", "basic-monthly"), PLANS,
                                  written_off=("i-7",))  # fmt: skip
    assert terminate.reason == "Kill Bill: subscription CANCELLED"
    assert actions(desired_actions(subscription(), CLEAR, owned("suspended", "basic-monthly"), PLANS, PAID,
                                   rules=NO_RULES, written_off=("i-7",))) == [("resume", None)]  # fmt: skip


def test_one_trial_per_customer_a_second_tenant_of_an_account_waits_until_paid():
    """A new tenant of an account that has (or had) another: not provisioned in its trial or unpaid; provisioned
    once paid, and at once when the rule is off. The account's first tenant has its trial."""
    trial = subscription(key="acme-2", subscriptionId="s-2", phaseType="TRIAL")
    [skip] = desired_actions(trial, CLEAR, None, PLANS, PAID, frozenset({"acme"}))
    assert isinstance(skip, Skip) and skip.tenant_id == "acme-2"
    assert "account a-1 has had tenant acme; acme-2 is provisioned once" in skip.reason
    assert "(it is in its trial)" in skip.reason
    unpaid = subscription(key="acme-2", subscriptionId="s-2")
    [skip] = desired_actions(unpaid, CLEAR, None, PLANS, Decimal(25), frozenset({"acme"}))
    assert isinstance(skip, Skip) and "(an invoice of its account is unpaid)" in skip.reason
    assert actions(desired_actions(unpaid, CLEAR, None, PLANS, PAID, frozenset({"acme"}))) == [
        ("provision", "basic-monthly")
    ]
    assert actions(desired_actions(trial, CLEAR, None, PLANS, PAID, frozenset({"acme"}), NO_RULES)) == [
        ("provision", "basic-monthly")
    ]
    first = subscription(phaseType="TRIAL")
    assert actions(desired_actions(first, CLEAR, None, PLANS, PAID, frozenset())) == [("provision", "basic-monthly")]
    # Its own earlier row (a provision that failed half way) is not another tenant, nor is a key of the same database.
    assert actions(desired_actions(first, CLEAR, None, PLANS, PAID, frozenset({"Acme"}))) == [
        ("provision", "basic-monthly")
    ]
    assert actions(
        desired_actions(first, CLEAR, owned("failed", "basic-monthly"), PLANS, PAID, frozenset({"acme"}))
    ) == [("provision", "basic-monthly")]


def test_add_ons_make_no_tenant():
    assert desired_actions(subscription(productCategory="ADD_ON"), CLEAR, None, PLANS) == []


SETTINGS = {
    "registry_conninfo": "host=127.0.0.1 dbname=r",
    "inbound_token": "in",
    "admin_token": "admin",
    "metrics_token": "scraper",
    "killbill": {"url": "http://kb", "username": "u", "password": "p", "api_key": "k", "api_secret": "s"},
    "project_dir": "/p",
    "inventory": "/p/inventories/local",
    "artifacts_dir": "/p/.state/artifacts",
}


def test_settings_name_every_missing_key():
    with pytest.raises(ConfigError, match=r"lacks admin_token, killbill.api_secret"):
        settings_from_dict({**SETTINGS, "admin_token": "", "killbill": {**SETTINGS["killbill"], "api_secret": None}})


def test_settings_billing_rules_default_to_the_seeds_and_refuse_what_is_not_a_rule_or_a_boolean():
    assert settings_from_dict(SETTINGS).billing_rules == BillingRules(True, True)
    turned_off = settings_from_dict({**SETTINGS, "billing_rules": {"one_trial_per_customer": False}})
    assert turned_off.billing_rules == BillingRules(one_trial_per_customer=False, reactivation_paid_up_front=True)
    for bad in ({"one_trial_per_customer": "no"}, {"trial_days": 3}, ["one_trial_per_customer"]):
        with pytest.raises(
            ConfigError,
            match="billing_rules maps one_trial_per_customer, one_trial_per_email, reactivation_paid_up_front",
        ):
            settings_from_dict({**SETTINGS, "billing_rules": bad})


def test_settings_backoff_repeats_its_last_step_and_secrets_stay_out_of_repr():
    settings = settings_from_dict({**SETTINGS, "backoff_seconds": [1, 4]})
    assert [settings.backoff(n) for n in (1, 2, 3, 9)] == [1.0, 4.0, 4.0, 4.0]
    assert "admin" not in repr(settings).replace("admin_token", "") and "'p'" not in repr(settings)


def test_job_limits_default_to_two_cores_and_refuse_unknown_actions_and_non_positive_counts():
    assert settings_from_dict(SETTINGS).job_limits == {"provision": 4, "change_plan": 2}
    assert settings_from_dict({**SETTINGS, "job_limits": {"suspend": 1}}).job_limits == {"suspend": 1}
    for bad, named in (({"provision": 0}, "provision=0"), ({"upgrade": 1}, "upgrade=1"),
                       ({"resume": True}, "resume=True"), ({"resume": 1.5}, "resume=1.5"), ([4], "[4]")):  # fmt: skip
        with pytest.raises(ConfigError, match=re.escape(f"not {named}")):
            settings_from_dict({**SETTINGS, "job_limits": bad})
    with pytest.raises(ConfigError, match="limit_wait_seconds must be above 0"):
        settings_from_dict({**SETTINGS, "limit_wait_seconds": 0})


def test_a_lease_too_short_to_renew_is_refused():
    assert settings_from_dict(SETTINGS).lease_seconds == 30
    with pytest.raises(ConfigError, match="lease_seconds must be at least 3"):
        settings_from_dict({**SETTINGS, "lease_seconds": 1})


def test_a_move_is_not_called_stuck_before_a_minute():
    assert settings_from_dict(SETTINGS).move_stuck_seconds == 900
    with pytest.raises(ConfigError, match="move_stuck_seconds must be at least 60"):
        settings_from_dict({**SETTINGS, "move_stuck_seconds": 5})


def test_a_settings_file_others_can_read_is_refused(tmp_path):
    path = tmp_path / "runner.json"
    path.write_text(json.dumps(SETTINGS))
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="chmod 0600"):
        load_settings(path)
    os.chmod(path, 0o600)
    assert load_settings(path).killbill.api_key == "k"


@pytest.mark.parametrize(
    ("owner", "subscription_id", "says"),
    [
        ("a-2", "s-1", "belongs to account a-2"),  # a bundle transferred to another account
        ("a-1", "s-9", "belongs to subscription s-9 of the same account"),
        (None, None, "belongs to no Kill Bill account"),  # provisioned by hand, never bound
    ],
)
@pytest.mark.parametrize("state", ["ACTIVE", "BLOCKED", "CANCELLED"])
def test_a_subscription_acts_only_on_the_tenant_provisioned_for_it(owner, subscription_id, says, state):
    tenant = Tenant("acme", "active", "basic-monthly", owner, subscription_id)
    decisions = desired_actions(subscription(state, plan="premium-monthly"), BLOCKED, tenant, PLANS)
    if (owner, state) == ("a-1", "CANCELLED"):  # the account's earlier subscription, replaced: nothing to say
        assert decisions == []
        return
    [decision] = decisions
    assert isinstance(decision, Skip)
    assert "subscription s-1 of account a-1 claims tenant acme" in decision.reason and says in decision.reason
    assert "tenant_transfer.yml" in decision.reason


def test_a_tenant_bound_to_its_account_only_is_still_its_own():
    tenant = Tenant("acme", "active", "basic-monthly", "a-1", None)
    assert actions(desired_actions(subscription(), BLOCKED, tenant, PLANS)) == [("suspend", None)]


def test_ids_that_differ_only_in_case_or_dash_are_one_tenant():
    assert database_name("Acme-Corp") == database_name("acme_corp") == "t_acme_corp"
    [decision] = desired_actions(subscription(key="Acme"), CLEAR, owned("active", "basic-monthly"), PLANS)
    assert isinstance(decision, Skip) and decision.tenant_id == "Acme"
    assert "names database t_acme, which is tenant 'acme'" in decision.reason


def test_the_runner_names_databases_as_placement_does():
    for tenant_id in ("acme", "Acme-Corp", "a_b-C9"):
        assert database_name(tenant_id) == placement.database_name(tenant_id)


@pytest.mark.parametrize(
    ("account", "profile"),
    [
        (
            {"name": "Acme Corp", "email": "ops@acme.example", "locale": "fr_FR", "timeZone": "Europe/Paris",
             "country": "FR"},
            {"name": "Acme Corp", "email": "ops@acme.example", "locale": "fr_FR", "time_zone": "Europe/Paris",
             "country": "FR"},
        ),
        # Kill Bill's defaults and nulls: nothing to give the tenant.
        ({"name": None, "email": "", "locale": None, "timeZone": "UTC", "country": None}, {"time_zone": "UTC"}),
        # Shapes that are not a locale, a zone, a country or an e-mail are dropped, not passed on.
        ({"email": "x@y@z", "locale": "{{ lookup('pipe', 'id') }}", "timeZone": "Mars/Olympus", "country": "fra"}, {}),
    ],
)  # fmt: skip
def test_an_accounts_profile_keeps_only_well_shaped_fields(account, profile):
    assert customer_profile(account) == profile


def test_schedules_lay_over_the_defaults_and_refuse_unknown_names_and_short_intervals():
    assert settings_from_dict(SETTINGS).schedules == DEFAULT_INTERVALS
    given = settings_from_dict({**SETTINGS, "schedules": {"tenant_backups": 0, "moves_cleanup": 600}}).schedules
    assert given == {**DEFAULT_INTERVALS, "tenant_backups": 0, "moves_cleanup": 600}
    for bad, named in (({"tenant_backups": 30}, "tenant_backups=30"), ({"dns_refresh": 600}, "dns_refresh=600"),
                       ({"tenant_purges": True}, "tenant_purges=True"), ({"tenant_purges": "1h"}, "tenant_purges='1h'"),
                       ({"moves_cleanup": -60}, "moves_cleanup=-60")):  # fmt: skip
        with pytest.raises(ConfigError, match=re.escape(f"not {named}")):
            settings_from_dict({**SETTINGS, "schedules": bad})
    with pytest.raises(ConfigError, match="schedules maps schedule names"):
        settings_from_dict({**SETTINGS, "schedules": [3600]})


def test_a_tenant_url_names_each_tenant_by_its_dns_label_and_a_broken_one_is_refused():
    settings = settings_from_dict({**SETTINGS, "tenant_url": "https://{tenant}.odoo.example.com:8443/"})
    assert tenant_login_url(settings.tenant_url, "Acme_EU") == "https://acme-eu.odoo.example.com:8443/web/login"
    for bad in (
        "odoo.example.com",
        "https://odoo.example.com",
        "https://{tenant}.{zone}.example.com",
        "ftp://{tenant}",
    ):
        with pytest.raises(ConfigError, match="tenant_url"):
            settings_from_dict({**SETTINGS, "tenant_url": bad})


def test_of_an_accounts_subscriptions_read_at_once_the_first_started_has_the_trial(monkeypatch):
    """Two trial bundles created before the runner read the account (no tenant row yet): the earliest subscription's
    tenant is provisioned, the other waits until paid (Worker._decide, the registry read stubbed: no tenant yet)."""
    from webhook_runner import store, worker

    monkeypatch.setattr(store, "tenants_by_database", lambda conn, names: {})
    monkeypatch.setattr(store, "account_tenant_ids", lambda conn, account: frozenset())
    decider = worker.Worker.__new__(worker.Worker)  # no registry connection: _decide reads it through store
    decider.conn, decider.settings = None, settings_from_dict(SETTINGS)
    later = subscription(key="beta", subscriptionId="s-2", phaseType="TRIAL", startDate="2026-11-28T10:00:01.000Z")
    first = subscription(key="alpha", subscriptionId="s-9", phaseType="TRIAL", startDate="2026-11-28T10:00:00.000Z")
    decided = {tid: actions(ds) for _, tid, ds in decider._decide("a-1", [{"subscriptions": [later, first]}],
                                                                  CLEAR, PAID, PLANS)}  # fmt: skip
    assert decided["alpha"] == [("provision", "basic-monthly")]
    [(kind, reason)] = decided["beta"]
    assert kind == "skip" and "has had tenant alpha; beta is provisioned once" in reason


def test_an_e_mail_address_is_one_customer_whatever_its_spelling_and_is_kept_only_as_a_keyed_hash():
    one = email_hash("key", "Owner@Example.COM")
    assert one == email_hash("key", " owner+trial2@example.com ") == email_hash("key", '"owner"@example.com.')
    gmail = email_hash("key", "john.doe@gmail.com")
    assert gmail == email_hash("key", "JohnDoe+x@googlemail.com") and gmail != email_hash("key", "johndoe@example.com")
    assert one != email_hash("key", "owner2@example.com") and one != email_hash("other key", "owner@example.com")
    assert "owner" not in one and len(one) == 64
    assert email_hash("key", "not an address") is None and email_hash("key", "@example.com") is None


def test_of_the_tag_events_only_the_written_off_control_tags_wake_the_runner():
    """Kill Bill's overdue adds AUTO_INVOICING_OFF as it blocks an account (OverdueStateApplicator): no read for it."""
    assert written_off_tag({"event_type": "TAG_CREATION", "meta_data": {"tagDefinitionName": "WRITTEN_OFF"}})
    assert written_off_tag({"event_type": "TAG_DELETION", "meta_data": {"tagDefinitionName": "WRITTEN_OFF"}})
    assert not written_off_tag({"event_type": "TAG_CREATION", "meta_data": {"tagDefinitionName": "AUTO_INVOICING_OFF"}})
    assert not written_off_tag({"event_type": "TAG_CREATION", "meta_data": None})
    assert not written_off_tag(
        {"event_type": "CUSTOM_FIELD_CREATION", "meta_data": {"tagDefinitionName": "WRITTEN_OFF"}}
    )


def test_a_new_trial_waits_when_kill_bill_did_not_give_its_accounts_e_mail_address(monkeypatch):
    """One trial per e-mail address, and Kill Bill's account read failed: no trial on an address nobody checked; the
    decision is read again (Convergence._trial_by_address)."""
    from webhook_runner import store, worker
    from webhook_runner.convergence import ADDRESS_UNREAD

    monkeypatch.setattr(store, "tenants_by_database", lambda conn, names: {})
    monkeypatch.setattr(store, "account_tenant_ids", lambda conn, account: frozenset())
    decider = worker.Worker.__new__(worker.Worker)
    decider.conn = None
    decider.settings = settings_from_dict(
        {**SETTINGS, "customer_email_key": "k" * 32, "billing_rules": {"one_trial_per_email": True}}
    )
    trial = subscription(key="alpha", phaseType="TRIAL")
    address = decider._address(ADDRESS_UNREAD)
    [(_, _, decisions)] = decider._decide("a-1", [{"subscriptions": [trial]}], CLEAR, None, PLANS, (), address)
    [(kind, reason)] = actions(decisions)
    assert kind == "skip" and "could not be read from Kill Bill" in reason and decisions[0].recheck
    # Read, the address has its trial (nobody claimed it: the lookup finds none).
    monkeypatch.setattr(store, "trial_claim", lambda conn, address: None)
    read = decider._address("owner@example.com")
    [(_, _, decisions)] = decider._decide("a-1", [{"subscriptions": [trial]}], CLEAR, None, PLANS, (), read)
    assert actions(decisions) == [("provision", "basic-monthly")]
