"""Derived credentials: stable, distinct per purpose and secret, and never echo the secret."""

from __future__ import annotations

import re

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.saasodoo.platform.plugins.filter.secrets import FilterModule
from ansible_collections.saasodoo.platform.plugins.module_utils.secrets import (
    WeakSecretError,
    derive_password,
    scram_sha_256_verifier,
    stable_scram_sha_256_verifier,
)

SECRET = "s" * 32
OTHER_SECRET = "t" * 32


def test_same_inputs_give_the_same_password():
    assert derive_password(SECRET, "monitor@pool-shared-01") == derive_password(SECRET, "monitor@pool-shared-01")


@pytest.mark.parametrize(
    ("secret_a", "purpose_a", "secret_b", "purpose_b"),
    [
        (SECRET, "monitor@pool-shared-01", SECRET, "monitor@pool-shared-02"),
        (SECRET, "tenant:acme:v1", SECRET, "tenant:acme:v2"),
        (SECRET, "registry@saasodoo_registry", OTHER_SECRET, "registry@saasodoo_registry"),
    ],
)
def test_a_different_purpose_or_secret_gives_a_different_password(secret_a, purpose_a, secret_b, purpose_b):
    assert derive_password(secret_a, purpose_a) != derive_password(secret_b, purpose_b)


def test_password_is_url_safe_and_full_strength():
    password = derive_password(SECRET, "registry@saasodoo_registry")
    # 256 bits in unpadded base64url: safe in connection strings, pgbouncer.ini and odoo.conf.
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", password)


@pytest.mark.parametrize("secret", ["", "short", "x" * 31])
def test_a_weak_secret_is_refused(secret):
    with pytest.raises(WeakSecretError):
        derive_password(secret, "monitor@pool-shared-01")


def test_an_empty_purpose_is_refused():
    with pytest.raises(ValueError, match="purpose"):
        derive_password(SECRET, "")


def test_filter_error_names_the_purpose_but_not_the_secret():
    derived_password = FilterModule().filters()["derived_password"]
    weak_secret = "weak-secret-value"
    with pytest.raises(AnsibleFilterError) as failure:
        derived_password("monitor@pool-shared-01", weak_secret)
    assert "monitor@pool-shared-01" in str(failure.value)
    assert weak_secret not in str(failure.value)


def test_a_scram_verifier_holds_no_password_and_is_postgresql_s_shape():
    # A logical move's replication role logs in with this verifier (tests/integration/test_tenant_move.py).
    verifier = scram_sha_256_verifier("correct horse", salt=b"0123456789abcdef")
    assert re.fullmatch(r"SCRAM-SHA-256\$4096:[A-Za-z0-9+/=]{24}\$[A-Za-z0-9+/=]{44}:[A-Za-z0-9+/=]{44}", verifier)
    assert "correct horse" not in verifier
    assert verifier == scram_sha_256_verifier("correct horse", salt=b"0123456789abcdef")
    assert verifier != scram_sha_256_verifier("correct horse")  # a fresh salt each time


def test_a_tenant_s_verifier_is_the_same_wherever_it_is_computed_and_another_password_s_differs():
    # Every server and PgBouncer in a tenant's path must hold the same verifier for PgBouncer to pass SCRAM on.
    password = derive_password(SECRET, "tenant:acme:v1")
    verifier = stable_scram_sha_256_verifier(password)
    assert verifier == stable_scram_sha_256_verifier(password)
    assert re.fullmatch(r"SCRAM-SHA-256\$4096:[A-Za-z0-9+/=]{24}\$[A-Za-z0-9+/=]{44}:[A-Za-z0-9+/=]{44}", verifier)
    other = stable_scram_sha_256_verifier(derive_password(SECRET, "tenant:acme:v2"))
    assert other != verifier and other.split("$")[1] != verifier.split("$")[1]  # the salt differs too
