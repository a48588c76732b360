"""Credentials derived from the platform secret: nothing to store, nothing to leak from the registry."""

from __future__ import annotations

import base64
import hashlib
import hmac

# The domain tag keeps these values apart from any other use of the same secret.
_DOMAIN = b"saasodoo:"
MIN_SECRET_LENGTH = 32


class WeakSecretError(ValueError):
    """The platform secret is missing or too short to derive credentials from."""


def derive_password(platform_secret: str, purpose: str) -> str:
    """Return a 43-character URL-safe password for `purpose`, stable for a given secret."""
    if not platform_secret or len(platform_secret) < MIN_SECRET_LENGTH:
        raise WeakSecretError(f"the platform secret must be at least {MIN_SECRET_LENGTH} characters long")
    if not purpose:
        raise ValueError("a derived password needs a non-empty purpose")
    digest = hmac.new(platform_secret.encode(), _DOMAIN + purpose.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
