"""A tenant's names on a host: its OS user follows its database name and fits useradd's limit."""

from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.saasodoo.platform.plugins.filter.tenants import MAX_USER_NAME, tenant_os_user


def test_ids_naming_one_database_name_one_user():
    assert tenant_os_user("Acme-Corp") == tenant_os_user("acme_corp") == "odoo_acme_corp"


def test_long_ids_fit_and_stay_apart():
    first, second = "a" * 40 + "-one", "a" * 40 + "-two"
    users = {tenant_os_user(first), tenant_os_user(second)}
    assert len(users) == 2 and all(len(u) <= MAX_USER_NAME for u in users)
    assert tenant_os_user("x" * 48) == tenant_os_user("X" * 48)


def test_no_chosen_id_is_named_like_a_long_ones_user():
    """A long id's user is a cut name: an id spelling that cut name (27 characters, so not cut itself) would get the
    same user, and its Odoo would run as the long id's tenant. Its shape is refused."""
    cut = tenant_os_user("acme-corporation-production-eu")
    assert len(cut) <= MAX_USER_NAME and cut != "odoo_acme_corporation_production_eu"
    for spelling in (cut.removeprefix("odoo_"), cut.removeprefix("odoo_").upper(), cut[5:].replace("_", "-")):
        with pytest.raises(AnsibleFilterError, match="the OS user of another tenant"):
            tenant_os_user(spelling)


@pytest.mark.parametrize("bad", ["", "-acme", "a b", "a/b", "x" * 49])
def test_an_invalid_id_is_refused(bad):
    with pytest.raises(AnsibleFilterError, match="not valid"):
        tenant_os_user(bad)
