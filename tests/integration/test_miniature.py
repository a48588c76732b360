"""The production shape in miniature (tests/miniature): the registry, two shared pools, a dedicated server's host and
an Odoo host, each a network namespace with its own sshd, converged by site.yml over SSH from
tests/miniature/inventory (the shape of inventories/production.example). Tenants are provisioned, moved to a
dedicated server, drained off a pool and purged across hosts, their rows followed from server to server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from ansible_collections.saasodoo.platform.plugins.module_utils.secrets import derive_password

from .conftest import VENV_BIN, PlaybookRun, ansible_playbook, assert_nothing_changed
from conftest import REPO

MINIATURE = REPO / "tests/miniature"
INVENTORY = "tests/miniature/inventory"
STATE = REPO / ".state/miniature"


def hosts_script(action: str) -> str:
    result = subprocess.run(
        [str(VENV_BIN / "python"), str(MINIATURE / "hosts.py"), action], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def play(playbook: str, *args: str) -> PlaybookRun:
    return ansible_playbook(f"playbooks/{playbook}", *args, inventory=INVENTORY)


def ok(run: PlaybookRun) -> PlaybookRun:
    assert run.returncode == 0, run.output[-5000:]
    return run


@pytest.fixture(scope="module")
def miniature():
    if sys.platform != "linux":
        pytest.skip("network namespaces are Linux's")
    try:
        yield dict(line.split() for line in hosts_script("up").splitlines())
    finally:
        hosts_script("down")


def password(purpose: str) -> str:
    return derive_password((STATE / "secrets/platform_secret").read_text().strip(), purpose)


def connect(host: str, port: int, user: str, password: str, dbname: str = "postgres") -> psycopg.Connection:
    """Over TCP from the controller, the server's certificate checked against the miniature's CA."""
    return psycopg.connect(
        host=host, port=port, user=user, password=password, dbname=dbname, connect_timeout=5, autocommit=True,
        sslmode="verify-full", sslrootcert=str(STATE / "secrets/tls/ca.crt"), prepare_threshold=None,
    )  # fmt: skip


def registry() -> psycopg.Connection:
    return connect("10.77.1.10", 5432, "saasodoo_registry", password("registry@saasodoo_registry"), "saasodoo_registry")


def tenant_place(tenant: str) -> dict:
    """Where the registry says the tenant's database is, with its server's address and PgBouncer."""
    with registry() as conn:
        row = conn.execute(
            "SELECT t.status, t.db_name, t.db_role, s.name, s.host, s.port, s.pgbouncer_host, s.pgbouncer_port"
            " FROM registry.tenants t LEFT JOIN registry.db_servers s ON s.name = t.db_server WHERE t.tenant_id = %s",
            (tenant,),
        ).fetchone()
    keys = ("status", "db_name", "db_role", "server", "host", "port", "pgbouncer_host", "pgbouncer_port")
    return dict(zip(keys, row, strict=True))


def tenant_connection(tenant: str) -> psycopg.Connection:
    """The tenant's own login, as its Odoo has it: through its server's PgBouncer when it has one."""
    place = tenant_place(tenant)
    host, port = (place["pgbouncer_host"], place["pgbouncer_port"]) if place["pgbouncer_port"] else (
        place["host"], place["port"])  # fmt: skip
    return connect(host, port, place["db_role"], password(f"tenant:{tenant}:v1"), place["db_name"])


def odoo_health(tenant: str, query: str = "") -> str:
    """The tenant's Odoo through nginx on odoo-node-01, as its customers reach it."""
    result = subprocess.run(
        ["curl", "-s", "-m", "10", "-H", f"Host: {tenant}.odoo.miniature", f"http://10.77.3.10/web/health{query}"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return result.stdout


# odoo-node-01's runtime directory (tests/miniature/inventory): its tenants' Odoo run in network namespaces of their
# own, made inside that host's mount namespace (which `ip netns` here does not see): they are found by their command.
MINIATURE_RUNTIME = "/var/lib/saasodoo/runtime/"


def command_line(pid: str) -> str | None:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (FileNotFoundError, ProcessLookupError):
        return None


def namespace_processes(host: str) -> dict[int, str]:
    """The processes running in a host's network namespace, each pid's command line; for odoo-node-01, its tenants'
    Odoo in their own namespaces too."""
    pids = subprocess.run(["ip", "netns", "pids", f"mini-{host}"], capture_output=True, text=True).stdout.split()
    processes = {int(pid): command for pid in pids if (command := command_line(pid)) is not None}
    if host == "odoo-node-01":
        for pid in filter(str.isdigit, os.listdir("/proc")):
            command = command_line(pid)
            if command and "odoo-bin" in command and MINIATURE_RUNTIME in command:
                processes[int(pid)] = command
    return processes


def namespace_commands(host: str) -> list[str]:
    return list(namespace_processes(host).values())


def odoo_pids(*tenants: str) -> dict[str, list[int]]:
    """The pids of each tenant's Odoo on odoo-node-01."""
    processes = namespace_processes("odoo-node-01")
    return {t: sorted(p for p, c in processes.items() if "odoo-bin" in c and f"/tenants/{t}/" in c) for t in tenants}


def test_site_converges_every_host_over_ssh_and_a_second_run_changes_nothing(miniature):
    first = ok(play("site.yml"))
    assert set(first.recap) == {"platform-db-01", "pool-shared-01", "pool-shared-02", "odoo-node-01"}, first.recap
    assert_nothing_changed(play("site.yml"))
    # Each server is its host's: the registry's PostgreSQL and a pool's PgBouncer run in their namespaces only.
    assert any("postgres" in c and "/15/main" in c for c in namespace_commands("platform-db-01"))
    assert any("pgbouncer" in c for c in namespace_commands("pool-shared-01"))
    assert not any("pgbouncer" in c for c in namespace_commands("platform-db-01"))


def test_the_pools_admin_login_opens_nothing_from_another_host(miniature):
    """db_migrate's superuser login is admitted from the platform's host alone: the controller and the Odoo host
    (where tenants' code runs), on the private network with the right password and TLS, are refused before any
    password is checked."""
    with pytest.raises(psycopg.OperationalError, match=r"pg_hba\.conf rejects connection for host \"10\.77\.4\.1\""):
        connect("10.77.1.11", 5432, "saasodoo_db_admin", password("db-admin@pool-shared-01"))
    from_odoo_host = subprocess.run(
        ["ip", "netns", "exec", "mini-odoo-node-01", "/usr/lib/postgresql/15/bin/psql", "-c", "SELECT 1",
         "host=10.77.1.11 port=5432 dbname=postgres user=saasodoo_db_admin sslmode=require connect_timeout=5"],
        env={"PGPASSWORD": password("db-admin@pool-shared-01"), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert from_odoo_host.returncode != 0
    assert 'pg_hba.conf rejects connection for host "10.77.3.10"' in from_odoo_host.stderr, from_odoo_host.stderr
    with pytest.raises(psycopg.OperationalError, match=r"no pg_hba\.conf entry"):  # not even a monitor from outside
        psycopg.connect(host="10.77.1.11", port=5432, user="saasodoo_monitor", dbname="postgres", sslmode="disable",
                        password=password("monitor@pool-shared-01"), connect_timeout=5)  # fmt: skip


def test_tenants_are_provisioned_moved_drained_and_purged_across_hosts(miniature):
    # Named apart from the local platform's tenants: the hosts share this machine's /etc/passwd, where each
    # tenant's Odoo gets an OS user of its own.
    tenants = ("mini-alpha", "mini-beta", "mini-gamma")
    for tenant in tenants:
        ok(play("tenant_provision.yml", "-e", f"tenant_id={tenant}", "-e", f"customer_id=c-{tenant}",
                "-e", f"subscription_id=s-{tenant}", "-e", "plan=basic-monthly"))  # fmt: skip
    assert {tenant_place(t)["server"] for t in tenants} == {"pool-shared-01"}  # fill_first, three to a pool
    for tenant in tenants:
        assert odoo_health(tenant) == '{"status": "pass"}', tenant
        with tenant_connection(tenant) as conn:  # through pool-shared-01's PgBouncer, from another host
            conn.execute("CREATE TABLE kept (id serial PRIMARY KEY, note text)")
            conn.execute("INSERT INTO kept (note) VALUES (%s)", (f"{tenant} before any move",))
    odoo = namespace_commands("odoo-node-01")
    assert all(any("odoo-bin" in c and f"/tenants/{t}/" in c for c in odoo) for t in tenants), odoo

    # An upgrade: a dedicated server brought up on its own host, the database moved there over the network.
    ok(play("tenant_change_plan.yml", "-e", "tenant_id=mini-alpha", "-e", "plan=premium-monthly"))
    alpha = tenant_place("mini-alpha")
    assert (alpha["server"], alpha["host"], alpha["port"]) == ("pool-dedicated-01", "10.77.2.100", 5432), alpha
    assert any("postgres" in c for c in namespace_commands("pool-dedicated"))
    with tenant_connection("mini-alpha") as conn:
        assert conn.execute("SELECT note FROM kept").fetchall() == [("mini-alpha before any move",)]
    assert odoo_health("mini-alpha") == '{"status": "pass"}'

    # A drain: the pool's two other tenants move to the other pool's host. Same plan, so nothing in their odoo.conf
    # changes: their Odoo keeps running (the same process), its own PgBouncer now forwarding to the new pool.
    before = odoo_pids("mini-beta", "mini-gamma")
    assert all(len(pids) == 1 for pids in before.values()), before
    ok(play("pool_drain.yml", "-e", "server=pool-shared-01"))
    assert odoo_pids("mini-beta", "mini-gamma") == before
    for tenant in ("mini-beta", "mini-gamma"):
        assert tenant_place(tenant)["server"] == "pool-shared-02", tenant
        with tenant_connection(tenant) as conn:
            assert conn.execute("SELECT note FROM kept").fetchall() == [(f"{tenant} before any move",)]
        assert odoo_health(tenant) == '{"status": "pass"}', tenant
        # Odoo opens `postgres` on its database's server (through its PgBouncer): the new pool answers.
        assert odoo_health(tenant, "?db_server_status=1") == '{"status": "pass", "db_server_status": true}', tenant

    # Suspended: its login refused on its new pool's host; resumed: its rows there as they were.
    ok(play("tenant_suspend.yml", "-e", "tenant_id=mini-gamma"))
    with pytest.raises(psycopg.OperationalError):
        tenant_connection("mini-gamma")
    ok(play("tenant_resume.yml", "-e", "tenant_id=mini-gamma"))
    with tenant_connection("mini-gamma") as conn:
        assert conn.execute("SELECT note FROM kept").fetchall() == [("mini-gamma before any move",)]

    # Terminated and purged: nothing of the tenant left on any host that held it (the dedicated server's, and the
    # old copy its move left on pool-shared-01).
    ok(play("tenant_terminate.yml", "-e", "tenant_id=mini-alpha"))
    ok(play("tenant_purge.yml", "-e", "tenant_id=mini-alpha", "-e", "force=true"))
    assert tenant_place("mini-alpha")["status"] == "purged"
    with pytest.raises(psycopg.OperationalError):
        tenant_connection("mini-alpha")
    servers = (("pool-shared-01", "10.77.1.11"), ("pool-shared-02", "10.77.1.12"), ("pool-dedicated-01", "10.77.2.100"))
    for server, host in servers:
        with connect(host, 5432, "saasodoo_monitor", password(f"monitor@{server}")) as conn:
            left = conn.execute("SELECT datname FROM pg_database WHERE datname ~ '^t_mini_alpha'").fetchall()
        assert left == [], (server, left)
    assert [odoo_health(t) for t in ("mini-beta", "mini-gamma")] == ['{"status": "pass"}'] * 2

    # Its dedicated server, which nothing holds any more, retired: recorded so, its cluster stopped on its host with
    # start.conf manual (no boot starts it), its data kept; a second run changes nothing.
    retire = ("servers_retire.yml", "-e", "server=pool-dedicated-01", "-e", "saasodoo_dedicated_retire_idle_hours=0")
    ok(play(*retire))
    with registry() as conn:
        status = conn.execute("SELECT status FROM registry.db_servers WHERE name = 'pool-dedicated-01'").fetchone()
    assert status == ("retired",)
    assert not any("postgres" in c for c in namespace_commands("pool-dedicated"))
    disk = STATE / "hosts/pool-dedicated/root"  # the host's own /etc/postgresql and /var/lib/postgresql
    assert (disk / "etc/postgresql/15/main/start.conf").read_text() == "manual\n"
    assert (disk / "var/lib/postgresql/15/main/PG_VERSION").exists()
    assert_nothing_changed(play(*retire))
