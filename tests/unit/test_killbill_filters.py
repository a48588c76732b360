"""The filters playbooks/killbill_setup.yml reads Kill Bill's catalog with."""

from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.saasodoo.platform.plugins.filter.killbill import (
    killbill_catalog_differences,
    killbill_catalog_version,
)

CATALOG = {
    "name": "SaaSOdoo",
    "effective_date": "2026-01-01T00:00:00+00:00",
    "currency": "USD",
    "plans": {"basic-monthly": {"product": "Basic", "price": 10, "trial_days": 14},
              "premium-monthly": {"product": "Premium", "price": "99.00"}},
}  # fmt: skip


def version(**changes) -> dict:
    """A CatalogJson version as GET /1.0/kb/catalog lists it (jaxrs/.../json/CatalogJson.java) matching CATALOG."""
    basic = {
        "name": "basic-monthly",
        "billingPeriod": "MONTHLY",
        "phases": [
            {"type": "TRIAL", "prices": [], "duration": {"unit": "DAYS", "number": 14}},
            {"type": "EVERGREEN", "prices": [{"currency": "USD", "value": 10.0}], "duration": {"unit": "UNLIMITED"}},
        ],
    }
    premium = {
        "name": "premium-monthly",
        "billingPeriod": "MONTHLY",
        "phases": [
            {"type": "EVERGREEN", "prices": [{"currency": "EUR", "value": 90}, {"currency": "USD", "value": 99}]}
        ],
    }
    found = {
        "name": "SaaSOdoo",
        "effectiveDate": "2026-01-01T00:00:00.000Z",
        "products": [{"name": "Premium", "plans": [premium]}, {"name": "Basic", "plans": [basic]}],
    }
    return {**found, **changes}  # fmt: skip


def test_the_version_is_found_by_its_time_whatever_the_notation():
    versions = [version(effectiveDate="2025-06-01T00:00:00.000+0000"), version()]
    assert killbill_catalog_version(versions, "2026-01-01T01:00:00+01:00") is versions[1]
    assert killbill_catalog_version(versions, "2026-02-01T00:00:00Z") is None
    assert killbill_catalog_version([], CATALOG["effective_date"]) is None
    with pytest.raises(AnsibleFilterError, match="has no UTC offset"):
        killbill_catalog_version(versions, "2026-01-01T00:00:00")


def test_a_matching_version_has_no_difference_and_each_difference_is_named():
    assert killbill_catalog_differences(version(), CATALOG) == []  # 10.0 == 10, 99 == "99.00"
    changed = {**CATALOG, "name": "Other", "plans": {
        "basic-monthly": {"product": "Basic", "price": "10.50", "trial_days": 30},
        "gold-monthly": {"product": "Gold", "price": 200}}}  # fmt: skip
    assert killbill_catalog_differences(version(), changed) == [
        "catalog name 'SaaSOdoo', not 'Other'",
        "plan basic-monthly: trial_days 14 in Kill Bill, 30 here",
        "plan basic-monthly: price 10.0 in Kill Bill, 10.50 here",
        "plan gold-monthly is missing",
        "plan premium-monthly is not in the inventory",
    ]
