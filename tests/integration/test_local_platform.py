"""site.yml on inventories/local: real clusters and PgBouncers, converged twice, reachable every way."""

from __future__ import annotations

import os
import subprocess

import psycopg
import pytest

from .conftest import PSQL, LocalPlatform, run_playbook


def test_second_site_run_changes_nothing(local_platform: LocalPlatform):
    recap = local_platform.second_run.recap
    assert set(recap) == set(local_platform.servers) | set(local_platform.groups["odoo_hosts"])
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
        assert (wal_level, port) == ("logical", server.port), server.name


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
        assert ports == {pool.port}, pool.name


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
            assert result.stdout.strip() == str(server.port)


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
    down = run_playbook("down.yml")
    assert down.returncode == 0, down.output[-3000:]
    for server in local_platform.servers.values():
        for port in filter(None, (server.port, server.pgbouncer_port)):
            with pytest.raises(psycopg.OperationalError):
                local_platform.connect(port, "saasodoo_monitor", local_platform.password(f"monitor@{server.name}"))
    again = run_playbook("site.yml")
    assert again.returncode == 0, again.output[-3000:]
    test_psql_reaches_every_server_and_every_pgbouncer(local_platform)
