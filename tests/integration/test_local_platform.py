"""site.yml on inventories/local: real clusters and PgBouncers, converged twice, reachable every way."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import psycopg
import pytest
from monitoring_api import alertmanager_alerts, prometheus_alerts

from ansible_collections.saasodoo.platform.plugins.modules.pgbouncer_userlist import auth_file_lock

from .conftest import DOWN, LOCAL_STATE, PSQL, REPO, VENV_BIN, LocalPlatform, run_playbook, superuser, wait_until


def test_second_site_run_changes_nothing(local_platform: LocalPlatform):
    recap = local_platform.second_run.recap
    hosts = set(local_platform.servers) | set(local_platform.groups["odoo_hosts"]) | set(local_platform.groups["ceph"])
    assert set(recap) == hosts
    assert all(stats["changed"] == 0 and stats["failed"] == 0 for stats in recap.values()), recap


def test_site_converges_the_expected_fleet(local_platform: LocalPlatform):
    assert local_platform.groups["platform"] == ["platform-db"]
    assert sorted(local_platform.groups["pools_shared"]) == ["pool-shared-01", "pool-shared-02"]
    assert all(s.pgbouncer_port for s in local_platform.servers.values() if s.name.startswith("pool-shared"))


def test_every_server_answers_the_monitor_role_with_logical_decoding(local_platform: LocalPlatform):
    for server in local_platform.servers.values():
        password = local_platform.password(f"monitor@{server.name}")
        with local_platform.connect(server.port, "saasodoo_monitor", password) as conn:
            wal_level, port = conn.execute("SELECT current_setting('wal_level'), inet_server_port()").fetchone()
        assert (wal_level, port) == ("logical", local_platform.primary_port(server)), server.name


def test_every_server_archives_its_wal_and_one_whose_archiving_fails_is_found_unhealthy(local_platform: LocalPlatform):
    """Each server archives its completed WAL segments into its two pgBackRest repositories, the platform's backups
    and the offsite S3 bucket (point-in-time recovery starts there), compressed and encrypted; one whose archiving
    fails is unhealthy to servers_probe.yml and platform_status.yml says so, until archiving works again."""
    server = local_platform.servers["pool-shared-02"]
    archive = LOCAL_STATE / "backups/_servers/archive" / server.name

    def archiver(conn) -> tuple:
        return conn.execute(
            "SELECT last_archived_wal, failed_count, last_failed_time > coalesce(last_archived_time, '-infinity')"
            " FROM pg_stat_archiver"
        ).fetchone()

    def wait_for(conn, condition, what: str) -> tuple:
        deadline = time.monotonic() + 30
        while not condition(state := archiver(conn)):
            assert time.monotonic() < deadline, f"{what}: not within 30 s ({state})"
            time.sleep(0.2)
        return state

    def health() -> tuple[str, str]:
        with local_platform.registry() as conn:
            return conn.execute(
                "SELECT health, coalesce(health_detail, '') FROM registry.db_servers WHERE name = %s", (server.name,)
            ).fetchone()

    with superuser(server.name, server.port) as conn:
        conn.execute("SELECT pg_logical_emit_message(false, 'test', 'a segment with writes')")
        segment = conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()[0]
        wait_for(conn, lambda state: (state[0] or "") >= segment, "the segment archived")
        [archived] = archive.glob(f"*/{segment[:16]}/{segment}-*")  # <PostgreSQL version>-<n>/, <sha1>.lz4
        assert 0 < archived.stat().st_size < 16 * 1024**2, "compressed"
        assert archived.read_bytes()[:8] == b"Salted__", "encrypted (OpenSSL's salted aes-256-cbc)"
        offsite, bucket = local_platform.offsite_store()  # and into the offsite one, as encrypted
        listed = offsite.list_objects_v2(Bucket=bucket, Prefix=f"pgbackrest/archive/{server.name}/")["Contents"]
        [offsite_copy] = [o["Key"] for o in listed if f"/{segment[:16]}/{segment}-" in o["Key"]]
        assert offsite.get_object(Bucket=bucket, Key=offsite_copy)["Body"].read()[:8] == b"Salted__"
        try:
            conn.execute("ALTER SYSTEM SET archive_command = 'false'")
            conn.execute("SELECT pg_reload_conf()")
            conn.execute("SELECT pg_logical_emit_message(false, 'test', 'a segment that cannot be archived')")
            conn.execute("SELECT pg_switch_wal()")
            wait_for(conn, lambda state: state[2], "archiving failing")
            # Its pgBackRest check due (hourly; an earlier test's probe may have run it within the hour).
            due = run_playbook("servers_probe.yml", "-e", '{"saasodoo_pgbackrest_check_minutes": 0}')
            assert due.returncode == 0, due.output[-3000:]
            verdict, detail = health()
            assert verdict == "unhealthy" and "WAL archiving fails: segment" in detail, detail
            assert "pgBackRest check fails: " in detail, detail
            shown = " ".join(run_playbook("platform_status.yml").output.split())  # its lines as YAML wraps them
            assert re.search(rf"{server.name}: [^;]*; WAL archiving FAILS since", shown), shown
            # And the monitoring raises it to the operator (roles/monitoring: WalArchivingFailing).
            wait_until(lambda: alertmanager_alerts("WalArchivingFailing", server=server.name), "the alert", 90)
        finally:
            conn.execute("ALTER SYSTEM RESET archive_command")
            conn.execute("SELECT pg_reload_conf()")
        wait_for(conn, lambda state: not state[2], "archiving working again")
    assert run_playbook("servers_probe.yml").returncode == 0
    assert health() == ("healthy", "")
    assert (LOCAL_STATE / "pg" / server.name / "pgbackrest/last-check").exists(), "its check passed again"
    wait_until(lambda: not prometheus_alerts("WalArchivingFailing", server=server.name), "the alert resolved", 90)


def test_every_server_runs_on_every_cpu_of_the_host(local_platform: LocalPlatform):
    """Daemons a playbook starts inherit its CPU affinity: Mitogen's pinning once put them all on one core."""
    for server in local_platform.servers.values():
        password = local_platform.password(f"monitor@{server.name}")
        with local_platform.connect(server.port, "saasodoo_monitor", password) as conn:
            backend = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
            assert os.sched_getaffinity(backend) == os.sched_getaffinity(0), server.name


def test_every_pgbouncer_forwards_to_its_own_pool(local_platform: LocalPlatform):
    pools = [s for s in local_platform.servers.values() if s.pgbouncer_port]
    assert len(pools) == 2
    for pool in pools:
        password = local_platform.password(f"monitor@{pool.name}")
        with local_platform.connect(pool.pgbouncer_port, "saasodoo_monitor", password) as conn:
            # Repeat past psycopg's auto-prepare threshold: transaction pooling must keep working.
            ports = {conn.execute("SELECT inet_server_port()").fetchone()[0] for _ in range(10)}
        assert ports == {local_platform.primary_port(pool)}, pool.name


def test_auth_file_rewrites_of_one_pgbouncer_wait_for_each_other(local_platform: LocalPlatform, tmp_path: Path):
    """Runs for different tenants of a pool rewrite its PgBouncer's auth file: one that read the login roles just
    before another added its role would write the file without it. A rewrite holds <file>.lock while it reads and
    writes: one started while another holds it waits (the kernel lists it blocked on the lock), then reads the role
    created meanwhile."""
    pool = next(s for s in local_platform.servers.values() if s.pgbouncer_port)
    base = LOCAL_STATE / "pgbouncer" / pool.name
    userlist, role = base / "userlist.txt", "userlist_lock_probe"
    params = tmp_path / "args.json"
    params.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": {
        "path": str(userlist), "owner": "postgres", "pidfile": str(base / "run/pgbouncer.pid"),
        "login_unix_socket": str((LOCAL_STATE / "pg" / pool.name / "run").resolve()), "login_port": pool.port,
    }}))  # fmt: skip
    module = REPO / "collections/ansible_collections/saasodoo/platform/plugins/modules/pgbouncer_userlist.py"
    env = {**os.environ, "PYTHONPATH": str(REPO / "collections")}

    def rewrite() -> subprocess.Popen:
        return subprocess.Popen([str(VENV_BIN / "python"), str(module), str(params)], env=env,
                                stdout=subprocess.PIPE, text=True)  # fmt: skip

    def blocked_on(path: Path) -> bool:
        inode = f":{os.stat(path).st_ino} "
        return any("->" in line and inode in line for line in Path("/proc/locks").read_text().splitlines())

    try:
        with auth_file_lock(str(userlist)):  # another run, between its read and its write
            waiting = rewrite()
            deadline = time.monotonic() + 30
            while not blocked_on(Path(f"{userlist}.lock")):
                assert waiting.poll() is None, f"it did not wait for the lock: {waiting.stdout.read()}"
                assert time.monotonic() < deadline, "it never asked for the lock"
                time.sleep(0.05)  # the rewrite is another process: poll the kernel's lock table
            with superuser(pool.name, pool.port) as conn:
                conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'probe-only'")
        assert json.loads(waiting.communicate(timeout=60)[0])["changed"]
        assert f'"{role}"' in userlist.read_text()
    finally:
        with superuser(pool.name, pool.port) as conn:
            conn.execute(f"DROP ROLE IF EXISTS {role}")
        rewrite().communicate(timeout=60)
    assert f'"{role}"' not in userlist.read_text()


def test_psql_reaches_every_server_and_every_pgbouncer(local_platform: LocalPlatform):
    for server in local_platform.servers.values():
        for port in filter(None, (server.port, server.pgbouncer_port)):
            env = {"PGPASSWORD": local_platform.password(f"monitor@{server.name}"), "PGCONNECT_TIMEOUT": "5"}
            result = subprocess.run(
                [
                    PSQL,
                    "--no-psqlrc",
                    "-At",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(port),
                    "-U",
                    "saasodoo_monitor",
                    "-d",
                    "postgres",
                    "-c",
                    "SELECT inet_server_port()",
                ],
                env=env,
                capture_output=True,
                text=True,
                check=False,
            )
            assert result.returncode == 0, f"{server.name} on {port}: {result.stderr}"
            assert result.stdout.strip() == str(local_platform.primary_port(server))


def test_a_monitor_password_opens_only_its_own_server(local_platform: LocalPlatform):
    pool_1, pool_2 = (local_platform.servers[n] for n in ("pool-shared-01", "pool-shared-02"))
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        local_platform.connect(pool_2.port, "saasodoo_monitor", local_platform.password(f"monitor@{pool_1.name}"))


def test_the_monitor_role_cannot_reach_the_registry(local_platform: LocalPlatform):
    platform = local_platform.servers["platform-db"]
    with pytest.raises(psycopg.OperationalError, match=r"no pg_hba\.conf entry"):
        local_platform.connect(
            platform.port,
            "saasodoo_monitor",
            local_platform.password("monitor@platform-db"),
            dbname="saasodoo_registry",
        )


def test_down_stops_everything_and_site_brings_it_back(local_platform: LocalPlatform):
    """Every server and PgBouncer stops, and the platform's Ceph with them; site.yml starts them again, and the
    offsite store still holds what it held (its OSD keeps its data on disk)."""
    offsite, bucket = local_platform.offsite_store()

    def offsite_keys() -> set[str]:
        pages = offsite.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="pgbackrest/")
        return {item["Key"] for page in pages for item in page.get("Contents", [])}

    held = offsite_keys()
    assert held
    down = run_playbook(*DOWN)
    assert down.returncode == 0, down.output[-3000:]
    for server in local_platform.servers.values():
        for port in filter(None, (server.port, server.pgbouncer_port)):
            with pytest.raises(psycopg.OperationalError):
                local_platform.connect(port, "saasodoo_monitor", local_platform.password(f"monitor@{server.name}"))
    ceph_conf = LOCAL_STATE / "ceph/ceph.conf"
    assert subprocess.run(["pgrep", "--full", "--", f"--conf {ceph_conf}"], capture_output=True).returncode == 1
    again = run_playbook("site.yml")
    assert again.returncode == 0, again.output[-3000:]
    test_psql_reaches_every_server_and_every_pgbouncer(local_platform)
    assert held <= offsite_keys()
