"""Logging in to the registry as an administrator acting as another role (the registry's own machinery)."""

from __future__ import annotations

from ansible_collections.saasodoo.platform.plugins.module_utils.registry import (
    REGISTRY_LOGIN_OPTIONS,
    connect_registry,
)

# The registry login, plus what roles/platform_registry needs to log in the way it does everywhere else: as
# postgres over the Unix socket (login_host: the socket directory), peer-authenticated, so without a password,
# then SET ROLE to the owner. A login that needs a password still fails without one: the server decides.
SESSION_LOGIN_OPTIONS = dict(
    REGISTRY_LOGIN_OPTIONS,
    login_password=dict(type="str", no_log=True),
    session_role=dict(type="str"),
)


def connect_registry_session(params: dict):
    """connect_registry, then act as session_role (if given) for the rest of the session."""
    from psycopg import sql

    conn = connect_registry(params)
    if params.get("session_role"):
        try:
            conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(params["session_role"])))
        except Exception:
            conn.close()
            raise
    return conn
