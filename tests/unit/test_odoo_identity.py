"""The format a cloned tenant's sign-in link is written in, checked against its definition (auth_signup's signed
token), and the golden templates' names."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import pytest

from ansible_collections.saasodoo.platform.plugins.filter.odoo import odoo_template, odoo_templates
from ansible_collections.saasodoo.platform.plugins.module_utils.odoo_identity import (
    signup_token,
    template_name,
)


def decode(token: str) -> tuple[int, bytes, str]:
    raw = base64.urlsafe_b64decode(token + "===")
    assert raw[:1] == b"\x01"
    return int.from_bytes(raw[1:9], "little"), raw[9:41], raw[41:].decode()


def test_a_signup_token_carries_its_partner_login_date_type_and_expiry_signed_by_the_database_secret():
    token = signup_token("s3cret", 3, None, "reset", 1_900_000_000)
    expires, digest, message = decode(token)
    assert (expires, json.loads(message)) == (1_900_000_000, [3, None, "reset"])
    signed = repr(("signup", f"1:{message}:{expires}")).encode()
    assert hmac.compare_digest(digest, hmac.new(b"s3cret", signed, hashlib.sha256).digest())
    # Another secret (another database's) signs differently: a link opens its own tenant only.
    assert decode(signup_token("other", 3, None, "reset", 1_900_000_000))[1] != digest


def test_a_login_changes_the_token():
    # auth_signup checks the partner's last login date: the link dies with the first login.
    assert signup_token("s", 3, None, "reset", 1) != signup_token("s", 3, 1_700_000_000, "reset", 1)


def test_a_template_name_is_a_digest_of_its_key_whatever_the_module_order():
    name = template_name("18.0", ["crm", "base"], "en_US")
    assert name == template_name("18.0", ["base", "crm", "base"], "en_US")
    assert name.startswith("tpl_180_") and len(name) == len("tpl_180_") + 12
    assert len({name, template_name("18.0", ["base"], "en_US"), template_name("18.0", ["crm", "base"], "fr_FR"),
                template_name("17.0", ["crm", "base"], "en_US")}) == 4  # fmt: skip


PLANS = {
    "basic": {"odoo_version": "18.0", "odoo_modules": ["base"]},
    "also-basic": {"odoo_version": "18.0", "odoo_modules": ["base"]},
    "standard": {"odoo_version": "18.0", "odoo_modules": ["base", "contacts"]},
    "bare": {"odoo_version": "18.0", "odoo_modules": []},
}


def test_plans_with_one_module_set_share_one_template_per_language_and_a_bare_plan_has_none():
    templates = odoo_templates(PLANS, ["en_US", "fr_FR"])
    assert len(templates) == 4
    assert {t["lang"] for t in templates} == {"en_US", "fr_FR"}
    # The sign-in link is auth_signup's: every template has it.
    assert all("auth_signup" in t["modules"] for t in templates)
    assert odoo_template(PLANS["basic"], "en_US") == odoo_template(PLANS["also-basic"], "en_US")
    assert odoo_template(PLANS["bare"]) == ""


def test_a_template_is_named_after_the_odoo_that_builds_it_and_the_build_its_tenants_run():
    process = "/opt/odoo/18.0/odoo-bin"  # the process runtime: one and the same
    assert odoo_template(PLANS["basic"], "en_US", [process, process]) == odoo_template(PLANS["basic"], "en_US", process)
    # Kubernetes: the controller's checkout builds, the image runs; a new image (or checkout) is a new template.
    image, newer = "registry.example.com/odoo:18.0-1", "registry.example.com/odoo:18.0-2"
    names = {odoo_template(PLANS["basic"], "en_US", build) for build in ([process, image], [process, newer], process)}
    assert len(names) == 3


@pytest.mark.parametrize("plan", [{"odoo_modules": ["base"]}, None])
def test_a_plan_without_a_version_is_refused_clearly(plan):
    from ansible.errors import AnsibleFilterError

    with pytest.raises(AnsibleFilterError, match="odoo_version"):
        odoo_template(plan)
