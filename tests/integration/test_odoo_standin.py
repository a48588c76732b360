"""The Odoo stand-in (tests/standins/odoo/odoo-bin) against a real pool server: it reads the odoo.conf the
odoo_runtime role renders and odoo-bin's own command line, opens `postgres` first (and creates its database when
it may), installs a faithful part of Odoo 18's schema with -i, refuses to serve a database nobody initialised,
logs users in with their pbkdf2_sha512 password or with auth_signup's one-time signed token, never logs a secret,
and stops cleanly on SIGTERM/SIGINT.

The signed token and the password hash are computed here from Odoo 18's formats, not with the stand-in's code."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import http.client
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

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
NOT_INITIALISED = "not initialized, you can force it with `-i base`"
# What `-i base` installs in Odoo 18: base, then every auto_install module whose dependencies are met. auth_signup
# is not among them: it depends on mail, which nothing auto-installs.
BASE_CLOSURE = {
    *("base", "web", "base_setup", "bus", "web_tour", "html_editor", "web_editor", "web_unsplash"),
    *("base_import", "auth_totp", "iap"),
}
VARCHAR, INTEGER, BOOLEAN = ("character varying", None), ("integer", None), ("boolean", None)
TIMESTAMP = ("timestamp without time zone", None)
MAGIC_COLUMNS = {"id": INTEGER, "create_uid": INTEGER, "create_date": TIMESTAMP, "write_uid": INTEGER,
                 "write_date": TIMESTAMP}  # fmt: skip
# Odoo 18's tables and the columns the stand-in promises, with Odoo's types (information_schema's names).
COLUMNS: dict[str, dict[str, tuple[str, int | None]]] = {
    "ir_module_module": {"name": VARCHAR, "state": ("character varying", 16)},
    "ir_model_data": {"module": VARCHAR, "name": VARCHAR, "model": VARCHAR, "res_id": INTEGER, "noupdate": BOOLEAN},
    "ir_config_parameter": {"key": VARCHAR, "value": ("text", None)},
    "res_lang": {"code": VARCHAR, "name": VARCHAR, "active": BOOLEAN},
    "res_country": {"code": ("character varying", 2), "name": ("jsonb", None)},
    "res_partner": {"name": VARCHAR, "email": VARCHAR, "lang": VARCHAR, "tz": VARCHAR, "country_id": INTEGER,
                    "company_id": INTEGER, "active": BOOLEAN},
    "res_company": {"name": VARCHAR, "partner_id": INTEGER},
    "res_users": {"login": VARCHAR, "password": VARCHAR, "partner_id": INTEGER, "company_id": INTEGER,
                  "active": BOOLEAN, "share": BOOLEAN},
    "res_users_log": {},
    "ir_attachment": {"name": VARCHAR, "store_fname": VARCHAR, "checksum": ("character varying", 40),
                      "file_size": INTEGER, "mimetype": VARCHAR, "type": VARCHAR, "res_model": VARCHAR,
                      "res_id": INTEGER, "public": BOOLEAN},
}  # fmt: skip
BASE_XMLIDS = {
    "main_company": ("res.company", 1),
    "main_partner": ("res.partner", 1),
    "user_root": ("res.users", 1),
    "partner_root": ("res.partner", 2),
    "user_admin": ("res.users", 2),
    "partner_admin": ("res.partner", 3),
}


@dataclass
class TenantDb:
    name: str  # database and role share it, as the platform's tenants do (pg_hba: sameuser)
    password: str
    port: int
    platform: LocalPlatform

    def connect(self) -> psycopg.Connection:
        return self.platform.connect(self.port, self.name, self.password, dbname=self.name)


def admin(port: int, dbname: str = "postgres") -> psycopg.Connection:
    """The pool's postgres superuser, by peer authentication over the Unix socket."""
    return psycopg.connect(
        host=str(LOCAL_STATE / f"pg/{POOL}/run"), port=port, user="postgres", dbname=dbname, autocommit=True
    )


@pytest.fixture(scope="module")
def pool_port(local_platform: LocalPlatform) -> int:
    return local_platform.servers[POOL].port


@pytest.fixture
def tenants(local_platform: LocalPlatform, pool_port: int) -> Iterator:
    """Makes tenant-like roles (and, unless told otherwise, their database, owned by them); drops them after."""
    made: list[str] = []

    def make(*, database: bool = True, createdb: bool = False) -> TenantDb:
        name = f"t_standin_{uuid.uuid4().hex[:8]}"
        password = f"pw%{secrets.token_urlsafe(18)}"  # '%': the config file is read without interpolation
        made.append(name)
        with admin(pool_port) as conn:
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN {} PASSWORD {}").format(
                    sql.Identifier(name), sql.SQL("CREATEDB" if createdb else "NOCREATEDB"), sql.Literal(password)
                )
            )
            if database:
                conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(name)))
        db = TenantDb(name, password, pool_port, local_platform)
        try:
            # Odoo opens `postgres` at every start: the pool must let a tenant's role in (roles/postgres_server).
            local_platform.connect(pool_port, name, password, dbname="postgres").close()
        except psycopg.OperationalError as exc:
            pytest.fail(f"a tenant's role cannot open the pool's postgres database, as Odoo 18 must: {exc}")
        return db

    yield make
    with admin(pool_port) as conn:
        for name in made:
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
        __odoo_runtime_http_address="127.0.0.1",  # the role's vars/main.yml: runtime none's, the interface
        odoo_runtime_http_port=http_port,
        odoo_runtime_gevent_port=gevent_port,
        odoo_runtime_limit_time_cpu=60,
        odoo_runtime_limit_time_real=120,
    )
    path.write_text(text + extra)
    return path


def tenant_conf(tmp_path: Path, db: TenantDb, extra: str = "") -> tuple[Path, int]:
    port = free_port()
    conf = render_conf(
        tmp_path / "odoo.conf", db, password=db.password, http_port=port, gevent_port=free_port(), extra=extra
    )
    return conf, port


@dataclass
class Running:
    proc: subprocess.Popen
    port: int
    stderr: Path

    def log(self) -> str:
        return self.stderr.read_text()


def start(
    conf: Path | None, port: int, *args: str, env: dict[str, str] | None = None, logs: Path | None = None
) -> Running:
    """odoo-bin started with -c conf (or none), its stderr in a file beside conf (or in logs)."""
    stderr = (logs or conf.parent) / f"odoo.{uuid.uuid4().hex[:6]}.stderr"
    config = ["-c", str(conf)] if conf else []
    with stderr.open("wb") as err:
        proc = subprocess.Popen(
            [str(VENV_BIN / "python"), str(ODOO_BIN), *config, *args],
            stdout=err,
            stderr=err,
            env=env if env is not None else dict(os.environ),
        )
    return Running(proc, port, stderr)


def odoo_bin(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """odoo-bin run to its end (-i ... --stop-after-init, or a refused start): exit code and log."""
    return subprocess.run(
        [str(VENV_BIN / "python"), str(ODOO_BIN), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env if env is not None else dict(os.environ),
    )


def init(conf: Path, *args: str) -> subprocess.CompletedProcess:
    done = odoo_bin("-c", str(conf), *args, "--stop-after-init")
    assert done.returncode == 0, done.stderr
    return done


def request(
    port: int, method: str, path: str, form: dict[str, str] | None = None, timeout: float = 10.0
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        body = urlencode(form) if form is not None else None
        headers = {"Content-Type": "application/x-www-form-urlencoded"} if form is not None else {}
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def get(port: int, path: str, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    return request(port, "GET", path, timeout=timeout)


def post(port: int, path: str, form: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    return request(port, "POST", path, form)


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


def serve(cleanup: list[Running], conf: Path, port: int, *args: str) -> Running:
    running = start(conf, port, *args)
    cleanup.append(running)
    wait_ready(running)
    return running


def boots(db: TenantDb) -> list[int]:
    with db.connect() as conn:
        return [row[0] for row in conn.execute("SELECT pid FROM standin_boot ORDER BY id")]


# --- Odoo 18's formats, written here from their definitions --------------------------------------------------------


def pbkdf2_sha512_verifies(password: str, stored: str) -> bool:
    """passlib's pbkdf2_sha512: $pbkdf2-sha512$<rounds>$<salt>$<checksum>, adapted base64 ('.' for '+', unpadded)."""
    match = re.fullmatch(r"\$pbkdf2-sha512\$(\d+)\$([./A-Za-z0-9]+)\$([./A-Za-z0-9]+)", stored)
    assert match, stored

    def ab64(text: str) -> bytes:
        return base64.b64decode(text.replace(".", "+") + "=" * (-len(text) % 4))

    rounds, salt, checksum = int(match[1]), ab64(match[2]), ab64(match[3])
    assert (rounds, len(salt), len(checksum)) == (600_000, 16, 64)
    return hmac.compare_digest(hashlib.pbkdf2_hmac("sha512", password.encode(), salt, rounds, 64), checksum)


def signup_token(secret: str, partner_id: int, login_date: int | None, signup_type: str, expiration: int) -> str:
    """odoo/tools/misc.py hash_sign(env, 'signup', [partner_id, login_date, signup_type], ...)."""
    message = json.dumps([partner_id, login_date, signup_type])
    signed = repr(("signup", f"1:{message}:{expiration}")).encode()
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).digest()
    token = b"\x01" + expiration.to_bytes(8, "little") + digest + message.encode()
    return base64.urlsafe_b64encode(token).decode().rstrip("=")


def partner_login_date(db: TenantDb, partner_id: int) -> int | None:
    """auth_signup _get_login_date: the newest res_users_log of the partner's active users, as a UTC timestamp."""
    with db.connect() as conn:
        row = conn.execute(
            "SELECT max(l.create_date) FROM res_users_log l JOIN res_users u ON u.id = l.create_uid"
            " WHERE u.partner_id = %s AND u.active",
            (partner_id,),
        ).fetchone()
    return None if row[0] is None else int(utc(row[0]))


def utc(naive: dt.datetime) -> float:
    """Odoo's datetimes are naive UTC."""
    return naive.replace(tzinfo=dt.UTC).timestamp()


def parameter(db: TenantDb, key: str) -> str:
    with db.connect() as conn:
        return conn.execute("SELECT value FROM ir_config_parameter WHERE key = %s", (key,)).fetchone()[0]


def snapshot(db: TenantDb) -> dict[str, object]:
    """Every table's rows and every sequence's position."""
    with db.connect() as conn:
        tables = [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        state: dict[str, object] = {
            table: conn.execute(sql.SQL("SELECT * FROM {} ORDER BY id").format(sql.Identifier(table))).fetchall()
            for table in tables
        }
        for (name,) in conn.execute("SELECT sequencename FROM pg_sequences WHERE schemaname = 'public'").fetchall():
            state[name] = conn.execute(sql.SQL("SELECT last_value FROM {}").format(sql.Identifier(name))).fetchone()
    return state


def modules(db: TenantDb) -> dict[str, str]:
    with db.connect() as conn:
        return dict(conn.execute("SELECT name, state FROM ir_module_module").fetchall())


# --- Start ---------------------------------------------------------------------------------------------------------


def test_it_serves_the_contract_from_the_roles_config(tenants, tmp_path: Path, cleanup):
    tenant_db = tenants()
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
    init(conf, "-i", "base")
    running = serve(cleanup, conf, http_port)

    status, headers, body = get(http_port, "/web/health")
    assert (status, headers["content-type"], json.loads(body)) == (200, "application/json", {"status": "pass"})
    assert headers["cache-control"] == "no-store"

    status, headers, body = get(http_port, "/web/login")
    assert status == 200
    assert headers["content-type"].startswith("text/html")
    page = body.decode()
    assert f"<title>Login | {tenant_db.name}</title>" in page
    assert '<form class="oe_login_form" role="form" action="/web/login" method="post">' in page
    assert {"csrf_token", "login", "password", "redirect"} <= set(re.findall(r'<input [^>]*name="([^"]+)"', page))

    assert get(http_port, "/web/database/manager")[0] == 404
    assert get(http_port, "/")[0] == 404
    # Without auth_signup installed there is no /web/reset_password route.
    assert get(http_port, "/web/reset_password?token=x")[0] == 404
    # Like Odoo, ?db_server_status opens the "postgres" database, which a tenant's role may open.
    status, _, body = get(http_port, "/web/health?db_server_status=1")
    assert (status, json.loads(body)) == (200, {"status": "pass", "db_server_status": True})

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
    assert "boot recorded" in log
    assert "token=" not in log  # never a query string
    assert tenant_db.password not in log + running.log()

    # Started again: one more boot row, the same port at once, the filestore file left as it was.
    again = serve(cleanup, conf, http_port)
    assert boots(tenant_db)[-2:] == [running.proc.pid, again.proc.pid]
    assert (marker.stat().st_ino, marker.stat().st_mtime_ns) == (first_write.st_ino, first_write.st_mtime_ns)
    assert stop(again)[0] == 0


def test_start_is_refused_when_postgres_cannot_be_opened(tenants, tmp_path: Path):
    tenant_db = tenants()
    conf, _ = tenant_conf(tmp_path, tenant_db)
    # The role may open its own database but not `postgres`: a library that cannot load fails only that login.
    with admin(tenant_db.port) as conn:
        conn.execute(
            sql.SQL("ALTER ROLE {} IN DATABASE postgres SET session_preload_libraries = 'no_postgres_for_you'").format(
                sql.Identifier(tenant_db.name)
            )
        )
    tenant_db.connect().close()
    began = time.monotonic()
    done = odoo_bin("-c", str(conf))
    assert done.returncode == 1, done.stderr
    assert time.monotonic() - began < 10
    assert re.search(r"CRITICAL .*cannot look database \S+ up in database postgres", done.stderr)
    assert "no_postgres_for_you" in done.stderr
    # postgres is opened first: the stand-in never reached its own database.
    with tenant_db.connect() as conn:
        assert conn.execute("SELECT to_regclass('standin_boot')").fetchone() == (None,)
    # Nothing listening there at all: refused the same way.
    done = odoo_bin("-c", str(conf), "--db_port", str(free_port()))
    assert done.returncode == 1
    assert "cannot look database" in done.stderr
    assert tenant_db.password not in done.stderr


def test_a_wrong_password_exits_non_zero_quickly_without_logging_it(tenants, tmp_path: Path, cleanup):
    tenant_db = tenants()
    wrong = f"wrong%{secrets.token_urlsafe(18)}"
    port = free_port()
    conf = render_conf(tmp_path / "odoo.conf", tenant_db, password=wrong, http_port=port, gevent_port=free_port())
    began = time.monotonic()
    running = start(conf, port)
    cleanup.append(running)
    code = running.proc.wait(timeout=15)
    elapsed = time.monotonic() - began
    log = running.log()
    assert code == 1, log
    assert elapsed < 10
    assert "password authentication failed" in log
    assert wrong not in log
    assert tenant_db.password not in log


def test_the_command_line_overrides_the_config_and_pgpassword_fills_in(tenants, tmp_path: Path, cleanup):
    tenant_db = tenants()
    port = free_port()
    # The file names a wrong password, port and data directory; the command line the right ones.
    conf = render_conf(
        tmp_path / "odoo.conf", tenant_db, password="wrong", http_port=free_port(), gevent_port=free_port()
    )
    conf.write_text(conf.read_text().replace(f"db_port = {tenant_db.port}", "db_port = 1"))
    data_dir = tmp_path / "cli-data"
    overrides = ["-w", tenant_db.password, "--db_port", str(tenant_db.port), "--data-dir", str(data_dir)]
    done = odoo_bin("-c", str(conf), *overrides, "-i", "base", "--stop-after-init", "--workers", "3")
    assert done.returncode == 0, done.stderr
    assert "ignoring command line arguments the stand-in does not emulate: --workers 3" in done.stderr
    assert len(list((data_dir / "filestore" / tenant_db.name).rglob("*/*"))) == 2
    assert tenant_db.password not in done.stderr

    # No config file at all, no password anywhere: libpq's PGPASSWORD, as a real Odoo (libpq too) uses it.
    env = {**os.environ, "PGPASSWORD": tenant_db.password}
    args = ["-d", tenant_db.name, "-r", tenant_db.name, "--db_host", "127.0.0.1", "--db_port", str(tenant_db.port)]
    running = start(None, port, *args, "--http-port", str(port), "--data-dir", str(data_dir), env=env, logs=tmp_path)
    cleanup.append(running)
    wait_ready(running)
    assert get(port, "/web/login")[0] == 200
    assert boots(tenant_db)[-1] == running.proc.pid
    code, elapsed = stop(running, signal.SIGINT)
    assert (code, elapsed < 1.0) == (0, True)
    assert '"GET /web/login" 200' in running.log()
    assert tenant_db.password not in running.log()


def test_a_missing_database_is_created_when_the_role_may_and_initialised_as_odoo_does(tenants, tmp_path: Path):
    creator = tenants(database=False, createdb=True)
    conf, _ = tenant_conf(tmp_path, creator)
    done = odoo_bin("-c", str(conf), "--stop-after-init")
    assert done.returncode == 0, done.stderr
    with admin(creator.port) as conn:
        row = conn.execute(
            "SELECT pg_get_userbyid(datdba), pg_encoding_to_char(encoding), datcollate FROM pg_database"
            " WHERE datname = %s",
            (creator.name,),
        ).fetchone()
    assert row == (creator.name, "UTF8", "C")
    # odoo/cli/server.py: a database it created gets base installed (config['init']['base'] = True).
    assert modules(creator)["base"] == "installed"

    # A role that may not create it: logged at INFO and tolerated, then its database cannot be opened.
    other = tenants(database=False)
    (tmp_path / "other").mkdir()
    conf, _ = tenant_conf(tmp_path / "other", other)
    done = odoo_bin("-c", str(conf), "--stop-after-init")
    assert done.returncode == 1
    assert re.search(rf"INFO \S+ odoo.standin: Could not determine if database {other.name} exists", done.stderr)
    assert "CRITICAL" in done.stderr


# --- Initialisation ------------------------------------------------------------------------------------------------


def test_an_uninitialised_database_answers_500_everywhere(tenants, tmp_path: Path, cleanup):
    tenant_db = tenants()
    conf, port = tenant_conf(tmp_path, tenant_db)
    running = serve(cleanup, conf, port)
    assert NOT_INITIALISED in running.log()
    for path in ("/web/health", "/web/login", "/", "/web/reset_password", "/nowhere"):
        assert get(port, path)[0] == 500, path
    assert request(port, "HEAD", "/web/login")[0] == 500
    assert post(port, "/web/login", {"login": "admin", "password": "admin"})[0] == 500
    # Its boot is recorded all the same (the stand-in's bookkeeping), and that is all it wrote.
    assert boots(tenant_db) == [running.proc.pid]
    with tenant_db.connect() as conn:
        assert conn.execute("SELECT to_regclass('ir_module_module')").fetchone() == (None,)

    # Initialised by another odoo-bin meanwhile (--no-http: this one holds the port): served from the next request
    # on (Odoo's registry signalling).
    init(conf, "-i", "base", "--no-http")
    assert get(port, "/web/health")[0] == 200
    assert get(port, "/web/login")[0] == 200
    assert stop(running)[0] == 0
    assert f"Database {tenant_db.name} {NOT_INITIALISED}" in running.log()


def test_init_creates_odoo_18s_tables_and_base_rows(tenants, tmp_path: Path):
    first, second = tenants(), tenants()
    http_ports = {}
    for db in (first, second):
        (tmp_path / db.name).mkdir()
        conf, port = tenant_conf(tmp_path / db.name, db)
        http_ports[db.name] = port
        done = init(conf, "-i", "base", "--load-language", "fr_FR")
        assert "Initiating shutdown" in done.stderr
        with pytest.raises(ConnectionRefusedError):
            get(port, "/web/health")  # --stop-after-init never serves

    with first.connect() as conn:
        owners = conn.execute("SELECT tablename, tableowner FROM pg_tables WHERE schemaname = 'public'").fetchall()
        assert dict(owners) == dict.fromkeys(COLUMNS, first.name)  # the connecting role owns it all
        found = conn.execute(
            "SELECT table_name, column_name, data_type, character_maximum_length FROM information_schema.columns"
            " WHERE table_schema = 'public'"
        ).fetchall()
        columns = {(table, column): (kind, size) for table, column, kind, size in found}
        for table, expected in COLUMNS.items():
            expected = {**MAGIC_COLUMNS, **expected}
            assert {column: columns.get((table, column)) for column in expected} == expected, table
            assert conn.execute("SELECT pg_get_serial_sequence(%s, 'id')", (table,)).fetchone()[0]
        assert {column for table, column in columns if table == "res_users_log"} == set(MAGIC_COLUMNS)
        assert ("res_partner", "signup_type") not in columns  # auth_signup's column: -i base does not install it

        states = modules(first)
        assert {name for name, state in states.items() if state == "installed"} == BASE_CLOSURE
        assert {"mail", "auth_signup", "contacts"} <= {name for name, state in states.items() if state == "uninstalled"}

        found = conn.execute("SELECT id, login, password, partner_id, company_id, active, share FROM res_users")
        users = {row[0]: row[1:] for row in found}
        assert set(users) == {1, 2}
        assert users[1] == ("__system__", None, 2, 1, False, False)
        assert (users[2][0], *users[2][2:]) == ("admin", 3, 1, True, False)
        assert pbkdf2_sha512_verifies("admin", users[2][1])  # res_users_data.xml: password "admin"
        partners = dict(conn.execute("SELECT id, name FROM res_partner").fetchall())
        assert partners == {1: "My Company", 2: "System", 3: "Administrator"}  # the role's conf: without_demo
        assert conn.execute("SELECT id, name, partner_id FROM res_company").fetchall() == [(1, "My Company", 1)]
        found = conn.execute("SELECT name, model, res_id FROM ir_model_data WHERE module = 'base'").fetchall()
        xmlids = {name: (model, res_id) for name, model, res_id in found}
        assert {name: xmlids.get(name) for name in BASE_XMLIDS} == BASE_XMLIDS
        # Rows inserted with their ids: the sequences were moved past them.
        for table, last in (("res_users", 2), ("res_partner", 3), ("res_company", 1)):
            sequence = sql.Identifier(f"{table}_id_seq")
            assert conn.execute(sql.SQL("SELECT last_value FROM {}").format(sequence)).fetchone() == (last,)
        active = conn.execute("SELECT code FROM res_lang WHERE active ORDER BY code").fetchall()
        assert active == [("en_US",), ("fr_FR",)]
        countries = dict(conn.execute("SELECT code, name->>'en_US' FROM res_country").fetchall())
        assert {"US", "GB", "FR", "DE", "BE", "NL", "ES", "IT", "CA", "AU", "IN", "BR"} <= set(countries)
        assert countries["BE"] == "Belgium"
        attachments = conn.execute("SELECT store_fname, checksum, file_size FROM ir_attachment").fetchall()
        assert len(attachments) >= 2
        for store_fname, checksum, file_size in attachments:
            content = (tmp_path / first.name / "data/filestore" / first.name / store_fname).read_bytes()
            assert hashlib.sha1(content, usedforsecurity=False).hexdigest() == checksum
            assert (store_fname, file_size) == (f"{checksum[:2]}/{checksum}", len(content))

    identities = []
    for db in (first, second):
        secret, db_uuid = parameter(db, "database.secret"), parameter(db, "database.uuid")
        assert (uuid.UUID(secret).version, uuid.UUID(db_uuid).version) == (4, 1)
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", parameter(db, "database.create_date"))
        # _default_parameters: "http://localhost:%s" % config['http_port'] (8069 unless configured).
        assert parameter(db, "web.base.url") == f"http://localhost:{http_ports[db.name]}"
        identities += [secret, db_uuid]
    assert len(set(identities)) == 4  # each database its own secret and uuid


def test_init_again_installs_only_what_is_missing(tenants, tmp_path: Path):
    tenant_db = tenants()
    conf, _ = tenant_conf(tmp_path, tenant_db)
    init(conf, "-i", "base")
    before = snapshot(tenant_db)
    filestore = sorted((tmp_path / "data/filestore").rglob("*"))
    init(conf, "-i", "base")
    assert snapshot(tenant_db) == before
    assert sorted((tmp_path / "data/filestore").rglob("*")) == filestore

    # auth_signup brings mail (its dependency) and what auto-installs with them; nothing else changes but
    # auth_signup's column, its parameters and mail's name for partner 2.
    secret = parameter(tenant_db, "database.secret")
    done = init(conf, "-i", "auth_signup,no_such_module")
    assert "invalid module names, ignored: no_such_module" in done.stderr
    states = modules(tenant_db)
    installed = {name for name, state in states.items() if state == "installed"}
    assert installed == BASE_CLOSURE | {"mail", "auth_signup", "base_install_request"}
    assert states["contacts"] == "uninstalled"
    assert parameter(tenant_db, "database.secret") == secret
    assert parameter(tenant_db, "auth_signup.reset_password") == "True"
    with tenant_db.connect() as conn:
        assert conn.execute("SELECT name, signup_type FROM res_partner WHERE id = 2").fetchone() == ("OdooBot", None)
        assert conn.execute("SELECT count(*) FROM res_users").fetchone() == (2,)


def test_update_runs_a_builds_migrations_a_module_at_a_time_and_a_failure_leaves_the_rest(tenants, tmp_path: Path):
    """-u all by another build (a copy at another RELEASE with migration scripts): each installed module's scripts
    above its version run and it is recorded at the build's; a script that raises exits 255 with the modules before
    it updated (committed) and the rest as they were."""
    tenant_db = tenants()
    conf, _ = tenant_conf(tmp_path, tenant_db)
    init(conf, "-i", "base")

    def build(release: str, scripts: dict[str, str]) -> Path:
        root = tmp_path / release
        (root / "odoo-bin").parent.mkdir()
        (root / "odoo-bin").write_text(
            ODOO_BIN.read_text().replace('\nRELEASE = "18.0.1.0"\n', f'\nRELEASE = "{release}"\n')
        )
        for path, code in scripts.items():
            (root / "addons" / path).parent.mkdir(parents=True)
            (root / "addons" / path).write_text(f"def migrate(cr, version):\n    {code}\n")
        return root / "odoo-bin"

    def updated(odoo: Path) -> subprocess.CompletedProcess:
        return subprocess.run([str(VENV_BIN / "python"), str(odoo), "-c", str(conf), "-u", "all", "--stop-after-init"],
                              capture_output=True, text=True, timeout=60, check=False)  # fmt: skip

    def versions() -> dict[str, str]:
        with tenant_db.connect() as conn:
            return dict(conn.execute("SELECT name, latest_version FROM ir_module_module WHERE state = 'installed'"))

    assert set(versions().values()) == {"18.0.1.0"} and set(versions()) == BASE_CLOSURE
    mark = "cr.execute(\"INSERT INTO ir_config_parameter (key, value) VALUES ('from_' || %s, 'x')\", (version,))"
    done = updated(
        build(
            "18.0.1.1",
            {
                "base/migrations/18.0.1.1/post-mark.py": mark,
                "base/migrations/18.0.1.2/post-mark.py": "raise AssertionError('not yet')",
            },
        )
    )
    assert done.returncode == 0, done.stderr
    assert set(versions().values()) == {"18.0.1.1"} and parameter(tenant_db, "from_18.0.1.0") == "x"

    fail = "raise RuntimeError('cannot update web')"
    done = updated(build("18.0.1.2", {"web/migrations/18.0.1.2/pre-fail.py": fail}))
    assert done.returncode == 255
    assert (
        "Failed to initialize database" in done.stderr and "module web: RuntimeError: cannot update web" in done.stderr
    )
    now = versions()
    assert (now.pop("base"), now.pop("web"), set(now.values())) == ("18.0.1.2", "18.0.1.1", {"18.0.1.1"})


def test_a_module_installed_beside_the_serving_odoo_is_served_without_a_restart(tenants, tmp_path: Path, cleanup):
    """The plan change's live install (roles/odoo_runtime/tasks/install_modules.yml): a second odoo-bin with the same
    odoo.conf (workers 2) cannot install while the first serves unless it is told --no-http, as a prefork Odoo binds
    its HTTP port before it loads the database; with it, the module is installed and the serving one, the same
    process, serves what the module brings (auth_signup's reset page)."""
    tenant_db = tenants()
    conf, port = tenant_conf(tmp_path, tenant_db)
    init(conf, "-i", "base")
    running = serve(cleanup, conf, port)
    assert get(port, "/web/reset_password")[0] == 404

    bound = odoo_bin("-c", str(conf), "-i", "auth_signup", "--stop-after-init")
    assert bound.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in bound.stderr, bound.stderr
    assert modules(tenant_db)["auth_signup"] == "uninstalled"

    init(conf, "-i", "auth_signup", "--no-http")
    assert modules(tenant_db)["auth_signup"] == "installed"
    assert running.proc.poll() is None
    assert get(port, "/web/reset_password")[0] == 200
    assert get(port, "/web/login")[0] == 200


# --- Logging in ----------------------------------------------------------------------------------------------------


def logins(db: TenantDb, uid: int) -> int:
    with db.connect() as conn:
        return conn.execute("SELECT count(*) FROM res_users_log WHERE create_uid = %s", (uid,)).fetchone()[0]


def assert_logged_in(response: tuple[int, dict[str, str], bytes]) -> None:
    status, headers, _ = response
    assert (status, headers.get("location")) == (303, "/odoo")
    assert re.fullmatch(r"session_id=[A-Za-z0-9_-]{40,}; HttpOnly; Path=/", headers["set-cookie"])


def test_admin_logs_in_with_admin_once_initialised(tenants, tmp_path: Path, cleanup):
    tenant_db = tenants()
    conf, port = tenant_conf(tmp_path, tenant_db)
    init(conf, "-i", "base")
    running = serve(cleanup, conf, port)

    assert logins(tenant_db, 2) == 0
    response = post(port, "/web/login", {"login": "admin", "password": "admin", "csrf_token": "x"})
    assert_logged_in(response)
    assert logins(tenant_db, 2) == 1
    with tenant_db.connect() as conn:
        created = conn.execute("SELECT create_date FROM res_users_log WHERE create_uid = 2").fetchone()[0]
    assert abs(utc(created) - time.time()) < 60  # now, in UTC

    for login, password in (("admin", "wrong"), ("admin", ""), ("nobody", "admin"), ("__system__", "")):
        status, _, body = post(port, "/web/login", {"login": login, "password": password, "csrf_token": "x"})
        assert status == 200
        assert "Wrong login/password" in body.decode()
        assert 'class="oe_login_form"' in body.decode()
    assert logins(tenant_db, 2) == 1
    assert stop(running)[0] == 0
    log = running.log()
    assert "Login successful for db:" in log and "Login failed for db:" in log
    assert '"POST /web/login" 303' in log


def test_a_signed_reset_token_logs_in_once(tenants, tmp_path: Path, cleanup):
    tenant_db = tenants()
    conf, port = tenant_conf(tmp_path, tenant_db)
    init(conf, "-i", "auth_signup")
    running = serve(cleanup, conf, port)
    with tenant_db.connect() as conn:
        conn.execute("UPDATE res_partner SET signup_type = 'reset' WHERE id = 3")  # as "Send password reset" does
    secret = parameter(tenant_db, "database.secret")
    assert partner_login_date(tenant_db, 3) is None
    expires = int(time.time()) + 3600
    token = signup_token(secret, 3, None, "reset", expires)
    link = f"/web/reset_password?{urlencode({'db': tenant_db.name, 'token': token})}"

    status, _, body = get(port, link)
    page = body.decode()
    assert status == 200, page
    assert {"token", "password", "confirm_password", "csrf_token"} <= set(re.findall(r'name="([^"]+)"', page))

    # Refused tokens: expired, signed with another secret, tampered with, naming another signup type.
    refused = [
        signup_token(secret, 3, None, "reset", int(time.time()) - 1),
        signup_token(str(uuid.uuid4()), 3, None, "reset", expires),
        signup_token(secret, 3, None, "signup", expires),
        signup_token(secret, 3, 1_700_000_000, "reset", expires),
        token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB"),
        base64.urlsafe_b64encode(b"\x02" + base64.urlsafe_b64decode(token + "===")[1:]).decode(),
        "not-a-token",
    ]
    for bad in refused:
        status, _, body = get(port, f"/web/reset_password?token={bad}")
        assert (status, "Invalid signup token" in body.decode()) == (200, True), bad

    form = {"token": token, "password": "n3w-Pa55", "confirm_password": "different", "csrf_token": "x"}
    status, _, body = post(port, "/web/reset_password", form)
    assert (status, "Passwords do not match" in body.decode()) == (200, True)

    assert_logged_in(post(port, "/web/reset_password", {**form, "confirm_password": "n3w-Pa55"}))
    with tenant_db.connect() as conn:
        password, signup_type = conn.execute(
            "SELECT u.password, p.signup_type FROM res_users u JOIN res_partner p ON p.id = u.partner_id WHERE u.id = 2"
        ).fetchone()
    assert pbkdf2_sha512_verifies("n3w-Pa55", password)
    assert signup_type is None
    assert logins(tenant_db, 2) == 1
    assert partner_login_date(tenant_db, 3) is not None

    # Once: the login date it names is no longer the partner's.
    status, _, body = get(port, link)
    assert (status, "Invalid signup token" in body.decode()) == (200, True)
    status, _, body = post(port, "/web/reset_password", {**form, "password": "again", "confirm_password": "again"})
    assert (status, "Invalid signup token" in body.decode()) == (200, True)
    assert logins(tenant_db, 2) == 1

    assert_logged_in(post(port, "/web/login", {"login": "admin", "password": "n3w-Pa55"}))
    assert post(port, "/web/login", {"login": "admin", "password": "admin"})[0] == 200

    # A token made now, naming the new login date and a never-expiring signature, is valid again.
    with tenant_db.connect() as conn:
        conn.execute("UPDATE res_partner SET signup_type = 'reset' WHERE id = 3")
    fresh = signup_token(secret, 3, partner_login_date(tenant_db, 3), "reset", 0)
    assert 'name="confirm_password"' in get(port, f"/web/reset_password?token={fresh}")[2].decode()

    assert stop(running)[0] == 0
    log = running.log()
    assert '"GET /web/reset_password" 200' in log and '"POST /web/reset_password" 303' in log
    for secret_text in (token, fresh, "n3w-Pa55", secret, tenant_db.password):
        assert secret_text not in log
