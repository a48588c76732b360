"""Inputs the modules refuse before they touch anything: the checks that used to be a task of their own in every
tenant playbook run (an assert costs a run about as much as a module call)."""

from __future__ import annotations

from pathlib import Path

from conftest import run_module

PROCESS_ARGS = {  # a process-runtime tenant as roles/odoo_runtime passes it
    "state": "started", "program": "odoo-acme", "supervisor_socket": "/nonexistent/supervisor.sock",
    "nginx_conf": "/nonexistent/nginx.conf", "tenant_dir": "/nonexistent/acme", "owner": "odoo_acme",
    "config_path": "/nonexistent/acme/odoo.conf", "login_url": "http://127.0.0.1:58100/web/login",
    "route_url": "http://127.0.0.1:58080/web/login", "route_host": "acme.localhost",
    "log_path": "/nonexistent/odoo-acme.log", "pgbouncer_program": "pgbouncer-acme",
    "pgbouncer_socket": "/nonexistent/acme/run/.s.PGSQL.6432",
}  # fmt: skip


def test_a_start_without_the_tenants_http_port_is_refused(tmp_path: Path):
    for url in ("http://127.0.0.1:0/web/login", "http://127.0.0.1:None/web/login", "http://127.0.0.1/web/login"):
        result = run_module("odoo_process", PROCESS_ARGS | {"login_url": url}, tmp_path)
        assert result["failed"] and "a start needs the tenant's HTTP port" in result["msg"], result


def test_a_pgbouncer_socket_path_longer_than_a_unix_socket_takes_is_refused(tmp_path: Path):
    too_long = "/nonexistent/" + "d" * 80 + "/run/.s.PGSQL.6432"  # 111 bytes
    for state in ("started", "stopped"):
        result = run_module("odoo_process", PROCESS_ARGS | {"state": state, "pgbouncer_socket": too_long}, tmp_path)
        assert result["failed"] and "longer than a Unix socket's 107 bytes" in result["msg"], result
    # 107 bytes pass the check and go on to supervisord, which is not there.
    just_fits = "/nonexistent/" + "d" * 76 + "/run/.s.PGSQL.6432"
    result = run_module("odoo_process", PROCESS_ARGS | {"pgbouncer_socket": just_fits}, tmp_path)
    assert len(just_fits) == 107 and "Unix socket" not in result.get("msg", ""), result


def test_a_tenant_database_without_a_password_is_refused(tmp_path: Path):
    args = {"name": "t_acme", "password": "", "login_unix_socket": "/nonexistent", "login_port": 5432}
    result = run_module("tenant_database", args, tmp_path)
    assert result["failed"] and result["msg"] == "tenant database t_acme: a password is required to create it"


def test_a_tenant_run_without_its_id_or_plan_says_what_it_needs(tmp_path: Path):
    read = {"action": "tenant_suspend", "login_host": "127.0.0.1", "login_port": 1, "login_password": "x"}  # never used
    result = run_module("registry_tenant", read | {"tenant_id": ""}, tmp_path)
    assert result["failed"] and result["msg"] == "tenant_suspend needs -e tenant_id=<id>.", result
    for plan_and_id in ({"tenant_id": "", "plan": "basic-monthly"}, {"tenant_id": "acme", "plan": ""}):
        result = run_module("registry_tenant", read | {"action": "tenant_change_plan"} | plan_and_id, tmp_path)
        assert result["msg"] == "tenant_change_plan needs -e tenant_id=<id> -e plan=<Kill Bill plan name>.", result


def test_a_catalog_with_a_plan_without_its_db_type_is_refused_before_anything_is_written(tmp_path: Path):
    login = {"login_host": "/nonexistent", "login_user": "postgres"}  # never reached
    plans = {"basic-monthly": {"db_type": "shared"}, "odd": {"storage_gb": 5}, "flat": "dedicated"}
    result = run_module("registry_plan", login | {"plans": plans}, tmp_path)
    assert (
        result["failed"]
        and result["msg"] == "Plan flat needs db_type shared or dedicated in its entitlements (got str, not a mapping)."
    ), result
    del plans["flat"]
    result = run_module("registry_plan", login | {"plans": plans}, tmp_path)
    assert result["msg"] == "Plan odd needs db_type shared or dedicated in its entitlements (got None).", result
