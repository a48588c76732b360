"""Filters for credentials derived from the platform secret and their stored form (see module_utils/secrets.py)."""

from __future__ import annotations

from ansible.errors import AnsibleFilterError

from ansible_collections.saasodoo.platform.plugins.module_utils.secrets import (
    WeakSecretError,
    derive_password,
    scram_sha_256_verifier,
    stable_scram_sha_256_verifier,
)


def derived_password(purpose: str, platform_secret: str) -> str:
    try:
        return derive_password(platform_secret, purpose)
    except (WeakSecretError, ValueError) as e:
        # Never echo the secret; the purpose is safe to name.
        raise AnsibleFilterError(f"cannot derive the password for {purpose!r}: {e}") from None


class FilterModule:
    def filters(self):
        return {
            "derived_password": derived_password,
            "scram_sha_256_verifier": scram_sha_256_verifier,
            "stable_scram_sha_256_verifier": stable_scram_sha_256_verifier,
        }
