"""How every registry module ends (module_utils/registry.py run_registry_module): its result, a refusal's own
message, a database error said with what the module was doing, psycopg missing said as Ansible says it; and a
registry module that cannot reach the registry says where, with the facts of its request."""

from __future__ import annotations

import sys
from pathlib import Path

import psycopg
import pytest

from ansible_collections.saasodoo.platform.plugins.module_utils.registry import (
    RegistryUnreachable,
    run_registry_module,
)

from conftest import run_module


class Ended(Exception):
    """AnsibleModule's exit_json and fail_json end the process; here they end the call."""


class Module:
    def exit_json(self, **result):
        raise Ended("exit", result)

    def fail_json(self, **result):
        raise Ended("fail", result)


class Refused(Exception):
    pass


def ending(run, **facts) -> tuple[str, dict]:
    with pytest.raises(Ended) as ended:
        run_registry_module(Module(), run, "registry error for tenant acme", refusals=(Refused,), **facts)
    return ended.value.args


def raising(error: Exception):
    def run(module):
        raise error

    return run


def test_the_result_of_the_run_is_the_modules():
    assert ending(lambda module: {"changed": True, "tenant": "acme"}) == ("exit", {"changed": True, "tenant": "acme"})


def test_a_refusal_fails_with_its_own_message_and_the_facts():
    assert ending(raising(Refused("plan gold has no db_type")), tenant_id="acme") == (
        "fail",
        {"msg": "plan gold has no db_type", "tenant_id": "acme"},
    )
    assert ending(raising(RegistryUnreachable("cannot reach the registry")))[1]["msg"] == "cannot reach the registry"


def test_a_database_error_says_what_the_module_was_doing():
    kind, result = ending(raising(psycopg.errors.UniqueViolation("duplicate key")), tenant_id="acme")
    assert (kind, result) == ("fail", {"msg": "registry error for tenant acme: duplicate key", "tenant_id": "acme"})


def test_any_other_error_is_not_taken_for_a_refusal():
    with pytest.raises(KeyError):
        ending(raising(KeyError("plan")))


def test_without_psycopg_the_module_says_which_library_is_missing(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)  # import psycopg raises ImportError
    kind, result = ending(lambda module: pytest.fail("ran without psycopg"))
    assert kind == "fail" and "Failed to import the required Python library (psycopg)" in result["msg"], result
    assert "ImportError" in result["exception"] or "ModuleNotFoundError" in result["exception"]


def test_a_registry_module_out_of_reach_of_the_registry_says_where(tmp_path: Path):
    login = {"login_host": "127.0.0.1", "login_port": 1, "login_password": "unused"}
    result = run_module("registry_tenant", {"tenant_id": "acme", **login}, tmp_path)
    assert result["failed"] and result["tenant_id"] == "acme", result
    assert result["msg"].startswith("cannot reach the registry saasodoo_registry at 127.0.0.1:1"), result
    result = run_module("registry_info", login, tmp_path)
    assert result["failed"] and "Is the platform up" in result["msg"], result
