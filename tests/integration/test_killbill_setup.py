"""playbooks/killbill_setup.yml against the Kill Bill stand-in: the callback, the catalog built from the inventory
and the overdue configuration, uploaded once, refused when a catalog version would have to be replaced, and the
overdue states then leading a customer who does not pay from a warning to a blocked service."""

from __future__ import annotations

import json

from tests.e2e.killbill_api import KillBillAPI
from tests.standins.killbill.killbill_standin import KillBillStandin

from .conftest import REPO, LocalPlatform, assert_nothing_changed, changed_tasks, load_yaml, run_playbook

CREDENTIALS = {"username": "admin", "password": "setup-password", "api_key": "saasodoo", "api_secret": "setup-secret"}
CALLBACK = "http://127.0.0.1:9/killbill/setup-test-token"  # registered, never called (deliver=False)
CATALOG = load_yaml(REPO / "inventories/local/group_vars/all/billing.yml")["saasodoo_killbill_catalog"]


def setup(standin: KillBillStandin, **extra):
    variables = {
        "webhook_runner_killbill": {"url": standin.url, **CREDENTIALS},
        "webhook_runner_callback_url": CALLBACK,
    }
    return run_playbook("killbill_setup.yml", "-e", json.dumps({**variables, **extra}))


def test_killbill_setup_uploads_once_refuses_a_replaced_version_and_its_overdue_states_apply(
    local_platform: LocalPlatform,
):
    standin = KillBillStandin(**CREDENTIALS, deliver=False).start()
    try:
        api = KillBillAPI(standin.url, **CREDENTIALS)
        first = setup(standin)
        assert first.returncode == 0, first.output[-5000:]
        assert [task for task, _ in changed_tasks(first)] == [
            "Register the runner's callback",
            f"Upload the catalog, effective {CATALOG['effective_date']}",
            "Upload the overdue configuration",
        ]
        assert_nothing_changed(setup(standin))
        assert CALLBACK not in first.output  # the runner's token

        assert api.call("GET", "/1.0/kb/tenants/registerNotificationCallback")["values"] == [CALLBACK]
        (version,) = api.call("GET", "/1.0/kb/catalog")
        plans = {
            plan["name"]: {phase["type"]: phase for phase in plan["phases"]}
            for product in version["products"]
            for plan in product["plans"]
        }
        assert set(plans) == set(CATALOG["plans"])
        for name, phases in plans.items():
            assert phases["TRIAL"]["duration"] == {"unit": "DAYS", "number": CATALOG["plans"][name]["trial_days"]}
            assert float(phases["EVERGREEN"]["prices"][0]["value"]) == CATALOG["plans"][name]["price"], name
        states = api.call("GET", "/1.0/kb/overdue")["overdueStates"]
        assert [(s["name"], s["condition"]["timeSinceEarliestUnpaidInvoiceEqualsOrExceeds"]["number"],
                 s["isDisableEntitlement"], s["subscriptionCancellationPolicy"]) for s in states] == [
            ("CANCELLED", 45, True, "END_OF_TERM"), ("BLOCKED", 14, True, "NONE"), ("WARNING", 7, False, "NONE"),
        ]  # fmt: skip

        # A new price for the same effective date would replace a version: refused, saying what differs.
        dearer = {**CATALOG, "plans": {**CATALOG["plans"], "basic-monthly": {**CATALOG["plans"]["basic-monthly"],
                                                                             "price": 12}}}  # fmt: skip
        refused = setup(standin, saasodoo_killbill_catalog=dearer)
        assert refused.returncode != 0
        assert "plan basic-monthly: price 10 in Kill Bill, 12 here" in refused.output, refused.output[-3000:]
        later = setup(standin, saasodoo_killbill_catalog={**dearer, "effective_date": "2026-12-01T00:00:00+00:00"})
        assert later.returncode == 0 and [t for t, _ in changed_tasks(later)] == [
            "Upload the catalog, effective 2026-12-01T00:00:00+00:00"
        ], later.output[-3000:]
        assert len(api.call("GET", "/1.0/kb/catalog")) == 2

        # The stand-in bills from the catalog (the trial of 14 days) and moves the account through the states.
        account, subscription = api.sign_up("Setup One", "setup-01", "basic-monthly")
        assert api.subscription(subscription)["phaseType"] == "TRIAL"
        api.payments_fail(account)
        api.move_clock(14)  # the trial ends: the first invoice is due and unpaid
        assert api.subscription(subscription)["phaseType"] == "EVERGREEN"
        seen = []
        for days in (6, 1, 7):  # 6, 7 and 14 days unpaid
            api.move_clock(days)
            overdue = api.overdue(account)
            seen.append((overdue["name"], overdue["isDisableEntitlementAndChangesBlocked"]))
        assert seen == [("__KILLBILL__CLEAR__OVERDUE_STATE__", False), ("WARNING", False), ("BLOCKED", True)]
        assert api.subscription(subscription)["state"] == "BLOCKED"
        api.payments_fail(account, fail=False)
        api.pay(account)
        assert api.overdue(account)["name"] == "__KILLBILL__CLEAR__OVERDUE_STATE__"
    finally:
        standin.stop()
