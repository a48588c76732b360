"""registry_server's refusals and the session login the platform_registry role uses, without a database."""

from __future__ import annotations

import pytest

from ansible_collections.saasodoo.platform.plugins.module_utils.registry import REGISTRY_LOGIN_OPTIONS
from ansible_collections.saasodoo.platform.plugins.module_utils.registry_session import SESSION_LOGIN_OPTIONS
from ansible_collections.saasodoo.platform.plugins.modules.registry_server import ServerError, check_draining


def test_an_unknown_server_is_not_drained():
    with pytest.raises(ServerError, match=r"^no-such-pool is not a server the registry knows; nothing was moved\.$"):
        check_draining("no-such-pool", None)


def test_a_dedicated_server_is_not_drained():
    with pytest.raises(ServerError, match=r"its tenant moves with its plan \(tenant_change_plan.yml\); nothing was"):
        check_draining("pool-dedicated-acme", {"kind": "dedicated", "status": "active"})


@pytest.mark.parametrize("status", ["active", "draining", "provisioning"])
def test_a_shared_pool_may_be_drained(status: str):
    check_draining("pool-shared-01", {"kind": "shared", "status": status})


def test_the_session_login_needs_no_password_but_keeps_it_secret():
    # postgres over the Unix socket is admitted by peer authentication; the server still decides who needs one.
    assert "required" not in SESSION_LOGIN_OPTIONS["login_password"]
    assert SESSION_LOGIN_OPTIONS["login_password"]["no_log"] is True
    assert REGISTRY_LOGIN_OPTIONS["login_password"]["required"] is True
    assert set(SESSION_LOGIN_OPTIONS) == set(REGISTRY_LOGIN_OPTIONS) | {"session_role"}
