"""The Odoo stand-in (tests/standins/odoo/odoo-bin) against a real pool server: it reads the odoo.conf the
odoo_runtime role renders, connects with a tenant-like role's credentials, records its boot, writes its
filestore, serves /web/health and /web/login, never logs the password, and stops cleanly on SIGTERM/SIGINT."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import secrets
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import jinja2
import psycopg
import pytest
from psycopg import sql

from .conftest import LOCAL_STATE, REPO, VENV_BIN, LocalPlatform

ODOO_BIN = REPO / "tests/standins/odoo/odoo-bin"
CONF_TEMPLATE = REPO / "roles/odoo_runtime/templates/odoo.conf.j2"
BOOT_MARKER = b"odoo test double boot marker\n"
POOL = "pool-shared-01"
READY_TIMEOUT = 20.0


@dataclass
class TenantDb:
    name: str  # database and role share it, as the platform's tenants do (pg_hba: sameuser)
    password: str
    port: int
    platform: LocalPlatform

    def connect(self) -> psycopg.Connection:
        return self.platform.connect(self.port, self.name, self.password, dbname=self.name)


def admin(port: int) -> psycopg.Connection:
    """The pool's postgres superuser, by peer authentication over the Unix socket."""
    return psycopg.connect(
        host=str(LOCAL_STATE / f"pg/{POOL}/run"), port=port, user="postgres", dbname="postgres", autocommit=True
    )


@pytest.fixture(scope="module")
def tenant_db(local_platform: LocalPlatform):
    port = local_platform.servers[POOL].port
    name = f"t_standin_{uuid.uuid4().hex[:8]}"
    password = f"pw%{secrets.token_urlsafe(18)}"  # '%': the config file is read without interpolation
    with admin(port) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(name), sql.Literal(password)))
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(name)))
    try:
        yield TenantDb(name, password, port, local_platform)
    finally:
        with admin(port) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def render_conf(
    path: Path, db: TenantDb, *, password: str | None, http_port: int, gevent_port: int, extra: str = ""
) -> Path:
    """The odoo_runtime role's own template, rendered as the role would for this database."""
    environment = jinja2.Environment(keep_trailing_newline=True)  # noqa: S701 - an INI file, not HTML
    template = environment.from_string(CONF_TEMPLATE.read_text())
    text = template.render(
        ansible_managed="Ansible managed",
        odoo_runtime_tenant_id=db.name.removeprefix("t_"),
        odoo_runtime_plan_name="basic-monthly",
        odoo_runtime_plan={"odoo_workers": 2, "memory_mb": 1024, "db_connection_limit": 10},
        odoo_runtime_db_host="127.0.0.1",
        odoo_runtime_db_port=db.port,
        odoo_runtime_db_user=db.name,
        odoo_runtime_db_password=password,
        odoo_runtime_config_has_password=password is not None,
        odoo_runtime_db_name=db.name,
        odoo_runtime_db_sslmode="prefer",
        odoo_runtime_data_dir=str(path.parent / "data"),
        odoo_runtime_http_interface="127.0.0.1",
        odoo_runtime_http_port=http_port,
        odoo_runtime_gevent_port=gevent_port,
        odoo_runtime_limit_time_cpu=60,
        odoo_runtime_limit_time_real=120,
    )
    path.write_text(text + extra)
    return path


@dataclass
class Running:
    proc: subprocess.Popen
    port: int
    stderr: Path

    def log(self) -> str:
        return self.stderr.read_text()


def start(conf: Path, port: int, env: dict[str, str] | None = None) -> Running:
    stderr = conf.with_suffix(f".{uuid.uuid4().hex[:6]}.stderr")
    with stderr.open("wb") as err:
        proc = subprocess.Popen(
            [str(VENV_BIN / "python"), str(ODOO_BIN), "-c", str(conf)],
            stdout=err,
            stderr=err,
            env=env if env is not None else dict(os.environ),
        )
    return Running(proc, port, stderr)


def get(port: int, path: str, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def wait_ready(running: Running, port: int | None = None) -> None:
    """Poll /web/health until it answers; fail at once if the process died, or after READY_TIMEOUT."""
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        if running.proc.poll() is not None:
            pytest.fail(f"odoo-bin exited {running.proc.returncode} before serving:\n{running.log()}")
        try:
            get(port or running.port, "/web/health", timeout=1.0)
            return
        except (ConnectionRefusedError, ConnectionResetError):
            if time.monotonic() > deadline:
                pytest.fail(f"odoo-bin not serving after {READY_TIMEOUT}s:\n{running.log()}")
            time.sleep(0.05)


def stop(running: Running, signum: int = signal.SIGTERM) -> tuple[int, float]:
    began = time.monotonic()
    running.proc.send_signal(signum)
    try:
        code = running.proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        running.proc.kill()
        running.proc.wait()
        pytest.fail(f"odoo-bin ignored {signal.Signals(signum).name}:\n{running.log()}")
    return code, time.monotonic() - began


@pytest.fixture
def cleanup():
    started: list[Running] = []
    yield started
    for running in started:
        if running.proc.poll() is None:
            running.proc.kill()
            running.proc.wait()


def boots(db: TenantDb) -> list[int]:
    with db.connect() as conn:
        return [row[0] for row in conn.execute("SELECT pid FROM standin_boot ORDER BY id")]


def test_it_serves_the_contract_from_the_roles_config(tenant_db: TenantDb, tmp_path: Path, cleanup):
    http_port, gevent_port = free_port(), free_port()
    logfile = tmp_path / "log/odoo.log"
    conf = render_conf(
        tmp_path / "odoo.conf",
        tenant_db,
        password=tenant_db.password,
        http_port=http_port,
        gevent_port=gevent_port,
        extra=f"logfile = {logfile}\n",
    )
    assert f"db_password = {tenant_db.password}" in conf.read_text()
    running = start(conf, http_port)
    cleanup.append(running)
    wait_ready(running)

    status, headers, body = get(http_port, "/web/health")
    assert (status, headers["content-type"], json.loads(body)) == (200, "application/json", {"status": "pass"})
    assert headers["cache-control"] == "no-store"

    status, headers, body = get(http_port, "/web/login")
    assert status == 200
    assert headers["content-type"].startswith("text/html")
    assert f"<title>Login | {tenant_db.name}</title>" in body.decode()

    assert get(http_port, "/web/database/manager")[0] == 404
    assert get(http_port, "/")[0] == 404
    # Like Odoo, ?db_server_status opens the "postgres" database: a tenant's role may not (pg_hba sameuser).
    status, _, body = get(http_port, "/web/health?db_server_status=1")
    assert (status, json.loads(body)) == (500, {"status": "fail", "db_server_status": False})

    # workers > 0: Odoo 18 also serves on gevent_port (its websocket server).
    assert get(gevent_port, "/web/health")[0] == 200

    assert boots(tenant_db)[-1] == running.proc.pid
    digest = hashlib.sha1(BOOT_MARKER, usedforsecurity=False).hexdigest()
    marker = tmp_path / "data/filestore" / tenant_db.name / digest[:2] / digest
    assert marker.read_bytes() == BOOT_MARKER
    assert (tmp_path / "data/sessions").is_dir()
    first_write = marker.stat()

    code, elapsed = stop(running)
    assert code == 0
    assert elapsed < 1.0

    log = logfile.read_text()
    assert '"GET /web/health" 200' in log
    assert '"GET /web/login" 200' in log
    assert '"GET /web/database/manager" 404' in log
    assert "SIGTERM received" in log
    assert tenant_db.password not in log + running.log()

    # Started again: one more boot row, the same port at once, the filestore file left as it was.
    again = start(conf, http_port)
    cleanup.append(again)
    wait_ready(again)
    assert boots(tenant_db)[-2:] == [running.proc.pid, again.proc.pid]
    assert (marker.stat().st_ino, marker.stat().st_mtime_ns) == (first_write.st_ino, first_write.st_mtime_ns)
    assert stop(again)[0] == 0


def test_a_wrong_password_exits_non_zero_quickly_without_logging_it(tenant_db: TenantDb, tmp_path: Path, cleanup):
    wrong = f"wrong%{secrets.token_urlsafe(18)}"
    port = free_port()
    conf = render_conf(tmp_path / "odoo.conf", tenant_db, password=wrong, http_port=port, gevent_port=free_port())
    began = time.monotonic()
    running = start(conf, port)
    cleanup.append(running)
    code = running.proc.wait(timeout=15)
    elapsed = time.monotonic() - began
    log = running.log()
    assert code != 0, log
    assert elapsed < 10
    assert "password authentication failed" in log
    assert wrong not in log
    assert tenant_db.password not in log


def test_pgpassword_stands_in_for_a_password_left_out_of_the_config(tenant_db: TenantDb, tmp_path: Path, cleanup):
    port = free_port()
    conf = render_conf(tmp_path / "odoo.conf", tenant_db, password=None, http_port=port, gevent_port=free_port())
    assert "db_password" not in conf.read_text()
    running = start(conf, port, env={**os.environ, "PGPASSWORD": tenant_db.password})
    cleanup.append(running)
    wait_ready(running)
    assert get(port, "/web/login")[0] == 200
    assert boots(tenant_db)[-1] == running.proc.pid
    code, elapsed = stop(running, signal.SIGINT)
    assert (code, elapsed < 1.0) == (0, True)
    assert '"GET /web/login" 200' in running.log()
    assert tenant_db.password not in running.log()


def test_login_answers_500_while_the_database_refuses_it(tenant_db: TenantDb, tmp_path: Path, cleanup):
    port = free_port()
    conf = render_conf(
        tmp_path / "odoo.conf",
        tenant_db,
        password=tenant_db.password,
        http_port=port,
        gevent_port=free_port(),
    )
    running = start(conf, port)
    cleanup.append(running)
    wait_ready(running)
    assert get(port, "/web/login")[0] == 200
    role = sql.Identifier(tenant_db.name)
    with admin(tenant_db.port) as conn:
        conn.execute(sql.SQL("ALTER ROLE {} NOLOGIN").format(role))
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (tenant_db.name,))
    try:
        status, _, body = get(port, "/web/login")
        assert (status, body) == (500, b"500: database unavailable\n")
        assert get(port, "/web/health")[0] == 200  # health stays a liveness check, as in Odoo
    finally:
        with admin(tenant_db.port) as conn:
            conn.execute(sql.SQL("ALTER ROLE {} LOGIN").format(role))
    assert get(port, "/web/login")[0] == 200
    assert stop(running)[0] == 0
    log = running.log()
    assert '"GET /web/login" 500' in log
    assert tenant_db.password not in log
