"""The local platform, converged for real: PostgreSQL clusters, PgBouncers and the registry."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import psycopg
import pytest

from ansible_collections.saasodoo.platform.plugins.module_utils.secrets import derive_password

from conftest import REPO, load_yaml

VENV_BIN = REPO / ".venv/bin"
LOCAL_STATE = REPO / ".state/local"
PSQL = "/usr/lib/postgresql/15/bin/psql"
RECAP_LINE = re.compile(
    r"^(?P<host>\S+)\s+:\s+ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+unreachable=(?P<unreachable>\d+)"
    r"\s+failed=(?P<failed>\d+)",
    re.MULTILINE,
)


def ansible_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}:{env['PATH']}"
    env["ANSIBLE_CONFIG"] = str(REPO / "ansible.cfg")
    env["ANSIBLE_NOCOLOR"] = "1"
    return env


@dataclass
class PlaybookRun:
    returncode: int
    output: str
    run_id: str = ""  # its id in the registry's audit chain

    @property
    def recap(self) -> dict[str, dict[str, int]]:
        return {
            m["host"]: {k: int(v) for k, v in m.groupdict().items() if k != "host"}
            for m in RECAP_LINE.finditer(self.output)
        }


def ansible_playbook(
    path: str, *args: str, inventory: str = "inventories/local", env: dict[str, str] | None = None
) -> PlaybookRun:
    """Run a playbook (path from the repository root) with the repository's ansible.cfg.

    On the local inventory, every run must then be in the registry's audit chain with its outcome (the
    saasodoo_audit callback), or have warned that the registry could not take it.
    """
    env = {"SAASODOO_AUDIT_RUN": f"test-{uuid.uuid4().hex}", **(env or {})}
    run_id = env["SAASODOO_AUDIT_RUN"]
    result = subprocess.run(
        [str(VENV_BIN / "ansible-playbook"), "-i", inventory, path, *args],
        cwd=REPO,
        env={**ansible_env(), **env},
        capture_output=True,
        text=True,
        check=False,
    )
    run = PlaybookRun(result.returncode, result.stdout + result.stderr, run_id)
    if inventory == "inventories/local":
        assert_audited(run)
    return run


def recorded_outcome(run_id: str) -> str | None:
    """The outcome the audit callback recorded at the end of a run; None without an end row or a registry."""
    port = load_yaml(REPO / "inventories/local/saasodoo.registry.yml")["registry_port"]
    try:
        with superuser("platform-db", port, "saasodoo_registry") as conn:
            row = conn.execute(
                "SELECT detail ->> 'outcome' FROM registry.audit"
                " WHERE detail ? 'run' AND detail ->> 'run' = %s AND kind = 'run' AND detail ->> 'phase' = 'end'",
                (run_id,),
            ).fetchone()
    except psycopg.Error:  # no registry (down, or not created yet)
        return None
    return row[0] if row else None


def assert_audited(run: PlaybookRun) -> None:
    outcome = recorded_outcome(run.run_id)
    if outcome is None:
        # No end row: the callback warned (the registry was down or not there yet), or the run failed before any
        # play (a syntax error), so there was nothing to record.
        assert "saasodoo_audit: the end of run" in run.output or "PLAY RECAP" not in run.output, (
            f"run {run.run_id} (rc {run.returncode}) is not in the audit chain and nothing said why:\n"
            + run.output[-2000:]
        )
    else:
        assert (outcome == "ok") == (run.returncode == 0), (
            f"run {run.run_id} is recorded as {outcome} but ended with rc {run.returncode}"
        )


def run_playbook(playbook: str, *args: str, inventory: str = "inventories/local") -> PlaybookRun:
    """Run one of the project's entry points in playbooks/."""
    return ansible_playbook(f"playbooks/{playbook}", *args, inventory=inventory)


def remove_tenants(tenants: list[str], runtime: str | None = "none", parallel: int = 1) -> bool:
    """Terminate and purge tenants (a benchmark's): the platform's pools are left as they were found. `runtime` is
    the runtime backend they were provisioned with (None: the inventory's); `parallel` tenants at a time."""
    backend = ("-e", f"saasodoo_runtime_backend={runtime}") if runtime else ()

    def remove(tenant: str) -> bool:
        for playbook, *extra in (("tenant_terminate.yml",), ("tenant_purge.yml", "-e", "force=true")):
            run = run_playbook(playbook, "-e", f"tenant_id={tenant}", *backend, *extra)
            if run.returncode != 0:
                print(f"could not remove {tenant} ({playbook}):\n{run.output[-2000:]}", file=sys.stderr)
                return False
        return True

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        return all(list(pool.map(remove, tenants)))


def run_ansible_tool(tool: str, *args: str) -> str:
    result = subprocess.run(
        [str(VENV_BIN / tool), *args], cwd=REPO, env=ansible_env(), capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, f"{tool} {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@dataclass
class Server:
    name: str
    port: int
    pgbouncer_port: int | None


@dataclass
class LocalPlatform:
    first_run: PlaybookRun
    second_run: PlaybookRun
    servers: dict[str, Server]
    groups: dict[str, list[str]]

    def password(self, purpose: str) -> str:
        secret = (LOCAL_STATE / "secrets/platform_secret").read_text().strip()
        return derive_password(secret, purpose)

    def connect(self, port: int, user: str, password: str, dbname: str = "postgres") -> psycopg.Connection:
        # prepare_threshold=None: PgBouncer 1.18 in transaction mode has no prepared statements.
        return psycopg.connect(
            host="127.0.0.1",
            port=port,
            user=user,
            password=password,
            dbname=dbname,
            connect_timeout=5,
            prepare_threshold=None,
            autocommit=True,
        )

    def registry(self) -> psycopg.Connection:
        """The registry as its owner, over TCP."""
        return self.connect(
            self.servers["platform-db"].port,
            "saasodoo_registry",
            self.password("registry@saasodoo_registry"),
            "saasodoo_registry",
        )


def superuser(server: str, port: int, dbname: str = "postgres") -> psycopg.Connection:
    """A local server's superuser, over its Unix socket (as the roles and db_migrate reach it)."""
    socket_dir = (LOCAL_STATE / "pg" / server / "run").resolve()
    return psycopg.connect(host=str(socket_dir), port=port, user="postgres", dbname=dbname, autocommit=True)


def inventory_hosts(inventory: str = "inventories/local") -> tuple[dict[str, dict], dict[str, list[str]]]:
    """Host variables and group membership, templated by Ansible itself."""
    listing = json.loads(run_ansible_tool("ansible-inventory", "-i", inventory, "--list"))
    hostvars = listing["_meta"]["hostvars"]
    groups = {name: body.get("hosts", []) for name, body in listing.items() if name != "_meta"}
    return hostvars, groups


def reset_local_platform() -> None:
    """Stop the local platform and drop its servers' state (keeping the platform secret).

    Integration tests start from the platform `make demo` builds on a fresh clone, so what they
    assert (which pool fills first, when the fleet grows) does not depend on earlier runs.
    """
    down = run_playbook("down.yml")
    assert down.returncode == 0, down.output[-3000:]
    for kind in ("pg", "pgbouncer", "runtime", "storage", "backups"):
        shutil.rmtree(LOCAL_STATE / kind, ignore_errors=True)


@pytest.fixture(scope="session")
def local_platform() -> LocalPlatform:
    return start_local_platform()


@pytest.fixture(scope="module")
def fresh_local_platform() -> LocalPlatform:
    """For tests that count the fleet (which pool fills first): the platform reset, as a fresh clone has it."""
    return start_local_platform()


def start_local_platform() -> LocalPlatform:
    reset_local_platform()
    first = run_playbook("site.yml")
    assert first.returncode == 0, first.output[-4000:]
    second = run_playbook("site.yml")
    assert second.returncode == 0, second.output[-4000:]
    hostvars, groups = inventory_hosts()
    servers = {
        name: Server(
            name,
            int(hostvars[name]["postgres_server_port"]),
            int(hostvars[name]["pgbouncer_listen_port"]) if "pgbouncer_listen_port" in hostvars[name] else None,
        )
        for group in ("platform", "pools_shared", "pools_dedicated")
        for name in groups.get(group, [])
    }
    return LocalPlatform(first, second, servers, groups)


PLATFORM_SOCKET_DIR = LOCAL_STATE / "pg/platform-db/run"
MIGRATIONS = sorted((REPO / "roles/platform_registry/files/migrations").glob("*.sql"))


@dataclass
class ScratchRegistry:
    """A throwaway registry database on the platform server: the real schema, no real tenants."""

    dbname: str
    port: int

    def connect(self) -> psycopg.Connection:
        return psycopg.connect(
            host=str(PLATFORM_SOCKET_DIR),
            port=self.port,
            user="postgres",
            dbname=self.dbname,
            prepare_threshold=None,
            autocommit=True,
        )


@pytest.fixture
def scratch_registry(local_platform: LocalPlatform):
    port = local_platform.servers["platform-db"].port
    dbname = f"saasodoo_scratch_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(
        host=str(PLATFORM_SOCKET_DIR), port=port, user="postgres", dbname="postgres", autocommit=True
    ) as admin:
        admin.execute(f'CREATE DATABASE "{dbname}"')
    registry = ScratchRegistry(dbname, port)
    try:
        with registry.connect() as conn, conn.transaction():
            conn.execute("CREATE SCHEMA registry")
            for migration in MIGRATIONS:
                conn.execute(migration.read_text())
        yield registry
    finally:
        with psycopg.connect(
            host=str(PLATFORM_SOCKET_DIR), port=port, user="postgres", dbname="postgres", autocommit=True
        ) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


from .ceph_cluster import ceph_cluster  # noqa: E402, F401  (fixture)
