"""Credentials derived from the platform secret: nothing to store, nothing to leak from the registry."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

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


def scram_sha_256_verifier(password: str, salt: bytes | None = None, iterations: int = 4096) -> str:
    """PostgreSQL's stored form of a SCRAM-SHA-256 password (RFC 5802, RFC 7677), as `CREATE ROLE ... PASSWORD`
    takes it: the server keeps it as given, so the clear password is in no statement (libpq's
    PQencryptPasswordConn computes the same). `password` is ASCII, which SASLprep leaves as it is."""
    if not password.isascii():
        raise ValueError("scram_sha_256_verifier takes an ASCII password (no SASLprep here)")
    salt = salt or os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    b64 = base64.b64encode
    return f"SCRAM-SHA-256${iterations}:{b64(salt).decode()}${b64(stored_key).decode()}:{b64(server_key).decode()}"


def stable_scram_sha_256_verifier(password: str) -> str:
    """The one verifier of a tenant's password, the same wherever it is computed: every server the tenant's role is
    on and every PgBouncer in its path hold the same, which PgBouncer needs to pass the client's SCRAM keys on to
    the next hop (a runtime host's PgBouncer, then the pool's, then PostgreSQL). The salt is derived from the
    password: nothing new to keep, and a derived password (43 random characters) leaks nothing through it."""
    salt = hmac.new(password.encode(), _DOMAIN + b"scram-sha-256 salt", hashlib.sha256).digest()[:16]
    return scram_sha_256_verifier(password, salt)
