"""The local platform, converged for real: PostgreSQL clusters, PgBouncers and the registry."""

from __future__ import annotations

import fcntl
import grp
import hashlib
import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import psycopg
import pytest

from ansible_collections.saasodoo.platform.plugins.module_utils.secrets import derive_password
from tests.ha_cluster import Cluster

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
    saasodoo.platform.audit callback), or have warned that the registry could not take it.
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


TASK_HEADER = re.compile(r"^(?:TASK|RUNNING HANDLER) \[(?:[^\]]* : )?(?P<task>[^\]]*)\]", re.MULTILINE)
CHANGED_LINE = re.compile(r"^changed: \[(?P<host>[^\]\s]*)", re.MULTILINE)
# A PgBouncer's auth file lists every login role on its server, so a tenant playbook run again rewrites it when
# a tenant of another test stream came or went on the same pool meanwhile (make integration runs two streams at
# once). That task alone may then report a change; run alone (pytest without -n), nothing may.
POOL_USERLIST_TASK = "Ensure the auth file holds exactly the server's login roles"


def changed_tasks(run: PlaybookRun) -> list[tuple[str, str]]:
    """(task name, host) for each task a run reports changed, from the default callback's output."""
    headers = list(TASK_HEADER.finditer(run.output))
    ends = [header.start() for header in headers[1:]] + [len(run.output)] * bool(headers)
    return [
        (header["task"], changed["host"])
        for header, end in zip(headers, ends, strict=True)
        for changed in CHANGED_LINE.finditer(run.output, header.end(), end)
    ]


def assert_nothing_changed(run: PlaybookRun) -> None:
    """The run succeeded and changed nothing: a second run of the same playbook with the same input."""
    assert run.returncode == 0, run.output[-5000:]
    beside_other_streams = "PYTEST_XDIST_WORKER" in os.environ
    reported = changed_tasks(run)
    changed = [(task, host) for task, host in reported if not (beside_other_streams and task == POOL_USERLIST_TASK)]
    assert changed == [], f"the second run changed {changed}:\n{run.output[-5000:]}"
    # Each changed task shows as a line (an item of a loop, one each): the output was read in full.
    assert len(reported) >= sum(counts["changed"] for counts in run.recap.values()), run.output[-5000:]


def registry_superuser() -> psycopg.Connection:
    """The local platform's registry database as its server's superuser, over the Unix socket."""
    port = load_yaml(REPO / "inventories/local/saasodoo.registry.yml")["registry_port"]
    return superuser("platform-db", port, "saasodoo_registry")


def recorded_outcome(run_id: str) -> str | None:
    """The outcome the audit callback recorded at the end of a run; None without an end row or a registry."""
    try:
        with registry_superuser() as conn:
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


def wait_until(condition: Callable[[], object], what: str, seconds: float, every: float = 1):
    """Poll `condition` until it holds (what another process or daemon does on its own clock); its last value."""
    deadline = time.monotonic() + seconds
    while not (value := condition()):
        assert time.monotonic() < deadline, f"{what}: not within {seconds:.0f} s"
        time.sleep(every)
    return value


def supervisor_pid(program: str) -> int:
    """The pid the local runtime's supervisord runs the program with (0 while it does not run)."""
    supervisorctl = ["supervisorctl", "-c", str(LOCAL_STATE / "runtime/supervisor/supervisord.conf"), "pid", program]
    return int(subprocess.run(supervisorctl, capture_output=True, text=True).stdout)


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


def ansible_processes(marker: str) -> list[int]:
    """The pids of the Ansible processes (ansible-playbook, Mitogen's) whose environment holds `marker` (NAME=value):
    one run's, including what escaped its process group (Mitogen's multiplexer starts a session of its own). Not
    the daemons a run started, which inherit its environment too."""
    needle, found = marker.encode() + b"\0", []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            ansible = any(name in (proc / "cmdline").read_bytes() for name in (b"ansible-playbook", b"(mitogen:"))
            if ansible and needle in (proc / "environ").read_bytes():
                found.append(int(proc.name))
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue  # gone meanwhile
    return found


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (an exited child its parent, or PID 1, has not reaped yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


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
    first_run: PlaybookRun | None  # site.yml's two runs, when this session started the platform
    second_run: PlaybookRun | None
    servers: dict[str, Server]
    groups: dict[str, list[str]]

    def password(self, purpose: str) -> str:
        secret = (LOCAL_STATE / "secrets/platform_secret").read_text().strip()
        return derive_password(secret, purpose)

    def offsite_store(self) -> tuple[Any, str]:
        """An S3 client of the offsite backup store (the object gateway of the platform's Ceph), and its bucket."""
        store = load_yaml(REPO / "inventories/local/group_vars/all/backups.yml")["saasodoo_offsite_backups"]
        client = boto3.client(
            "s3",
            endpoint_url=f"https://{store['endpoint']}:{store['port']}",
            aws_access_key_id=store["access_key"],
            aws_secret_access_key=self.password("offsite-backups-secret-key"),
            region_name=store["region"],
            verify=str(LOCAL_STATE / "secrets/tls/ca.crt"),
            # Checksums only where required: Ceph 16's gateway refuses botocore's newer default (MissingContentLength).
            config=botocore.config.Config(
                s3={"addressing_style": "path"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )
        return client, store["bucket"]

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

    def primary_port(self, server: Server) -> int:
        """The port of the PostgreSQL that answers at the server's address: the server's own, or under Patroni
        (group ha_servers) its leader member's."""
        if server.name not in self.groups.get("ha_servers", []):
            return server.port
        cluster = Cluster(server.name, server.port, self.password(f"patroni-restapi@{server.name}"))
        leader = next((member["port"] for member in cluster.members() if member["role"] == "leader"), None)
        assert leader is not None, f"{server.name}: no member leads ({cluster.members()})"
        return leader

    def registry(self) -> psycopg.Connection:
        """The registry as its owner, over TCP."""
        return self.connect(
            self.servers["platform-db"].port,
            "saasodoo_registry",
            self.password("registry@saasodoo_registry"),
            "saasodoo_registry",
        )

    def tenant_server(self, tenant: str) -> tuple[str, int, int, int | None]:
        """Where the registry has the tenant: its server, its Odoo's HTTP port, the server's port and its PgBouncer's
        (None for a server without one)."""
        with self.registry() as registry:
            return registry.execute(
                "SELECT t.db_server, t.http_port, s.port, s.pgbouncer_port FROM registry.tenants t"
                " JOIN registry.db_servers s ON s.name = t.db_server WHERE t.tenant_id = %s",
                (tenant,),
            ).fetchone()


def odoo_url(tenant: str, path: str = "/web/login") -> str:
    """A process tenant's Odoo, straight from where it listens as its odoo.conf says (with the process runtime, the
    address of its own network namespace)."""
    conf = (LOCAL_STATE / "runtime/tenants" / tenant / "odoo.conf").read_text()
    address, port = (re.search(rf"^{key} = (\S+)$", conf, re.MULTILINE)[1] for key in ("http_interface", "http_port"))
    return f"http://{address}:{port}{path}"


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


# down.yml as the tests call it: the molecule scenarios and the miniature, which `make test` runs beside the passes,
# stay up.
DOWN = ("down.yml", "-e", '{"down_leave": ["molecule", "miniature"]}')


def reset_local_platform() -> None:
    """Stop the local platform and drop its servers' state (keeping the platform secret).

    Integration tests start from the platform `make demo` builds on a fresh clone, so what they
    assert (which pool fills first, when the fleet grows) does not depend on earlier runs.
    """
    down = run_playbook(*DOWN)
    assert down.returncode == 0, down.output[-3000:]
    for kind in ("pg", "pgbouncer", "runtime", "storage", "backups", "ceph"):  # ceph: the offsite backups
        shutil.rmtree(LOCAL_STATE / kind, ignore_errors=True)
    (LOCAL_STATE / "audit-seals.txt").unlink(missing_ok=True)  # the seals of the registry dropped with "pg"
    remove_stale_tenant_users()


# This checkout's range of tenants' OS ids (inventories/local group_vars/platform/platform_registry.yml), the
# miniature's included.
OS_IDS_FROM = 2000000 + int(hashlib.sha1(str(REPO.resolve()).encode()).hexdigest()[:8], 16) % 4000 * 10000  # noqa: S324


def remove_stale_tenant_users() -> None:
    """This checkout's tenants' OS users and groups whose home is gone with the state reset: the new registry hands
    their ids out again (migration 0028), which a host that still has them refuses (roles/odoo_runtime
    tasks/tenant_user.yml). One still running something stays (userdel refuses), and the next provision says so."""
    for user in pwd.getpwall():
        mine = OS_IDS_FROM <= user.pw_uid < OS_IDS_FROM + 10000 and user.pw_gecos.startswith("SaaSOdoo tenant ")
        if mine and not Path(user.pw_dir).exists():
            subprocess.run(["userdel", user.pw_name], check=False, capture_output=True)
            if user.pw_name in {group.gr_name for group in grp.getgrall()}:
                subprocess.run(["groupdel", user.pw_name], check=False, capture_output=True)


# `make integration` runs this suite in two passes, each on the local platform reset as a fresh clone has it.
# First `pytest -n 2 -m "not alone"`: two streams side by side, each stream's tests one after another in a worker of
# its own. What the two streams may see of each other, and what the tests allow for: roles of other tenants coming
# and going on the same pools (assert_nothing_changed lets the PgBouncer userlist follow them), other tenants' moves
# (the move tests look for their own moves' leftovers), the fleet growing. Then `pytest -m alone`: what needs the
# platform to itself (it counts the fleet, converges it with site.yml, drains a pool or stops everything), in this
# order. `make test` runs the alone pass first and the streams after it, on the platform as that pass left it
# (PLATFORM_AS_LEFT): the streams allow for other tests' tenants and servers, and a drained pool is one placement
# passes over.
STREAMS = {
    # Every runner stack (they share the Kill Bill inbox and pause the deployed runner), the checks that read the
    # platform host in check mode (a paused runner shows there), and the move fault tests.
    "runner": (
        # First: its schedules back up every server and every tenant in a Kill Bill account, fewest before this
        # stream's other tests have made theirs.
        "test_webhook_runner.py::test_each_periodic_job_runs_once_per_due_time",
        "test_webhook_runner.py",
        "test_registry.py",
        "test_bench.py::test_runner_benchmark",
        "test_bench.py::test_provision_benchmark",
        "test_bench.py::test_migration_benchmark",  # here since make test kills fewer moves and runs fewer accounts
        "test_tenant_move_faults.py",
        "test_audit_runs.py",  # here rather than below: they keep the two streams about as long
        "test_killbill_setup.py",
        "test_monitoring.py",
        "test_odoo_standin.py",  # here rather than with the tenants: they keep the two streams about as long
        # Here rather than with the tenants, whose stream is the longer.
        "test_bench.py::test_lifecycle_benchmark",
        "test_placement_store.py",  # a scratch registry of its own
        "test_odoo_rollout.py",  # the same
        "test_kubernetes_manifests.py",  # rendering only; here to keep the two streams about as long
    ),
    # Both Ceph users, in one worker: the cluster is started and stopped by whoever uses it.
    "tenants": (
        "test_inventories.py",
        "test_storage_cephfs.py",
        "test_tenant_lifecycle.py",
        "test_hostile_tenant.py",
        "test_tenant_move.py",
        # In this stream, after the tests that log in to every server: its server is lost and rebuilt for a while.
        "test_bench.py::test_durability_benchmark",
        "test_failover.py",
        "test_inventory_plugin.py",
        "test_bench.py",
    ),
}
ALONE = (  # after the streams when pytest runs both in one session
    "test_tenant_provision.py",  # first: the platform as the session started it (fresh_local_platform)
    "test_bench.py::test_site_noop_benchmark",
    "test_bench.py::test_migration_benchmark_drains",  # three drains of the pools other tests left tenants on
    "test_local_platform.py",
    "test_audit_runs.py::test_a_rewrite_by_the_registrys_owner",  # it rewrites the chain for a moment
    "test_webhook_runner.py::test_a_registry_failover",  # every run's registry changes primary under it
    "test_tenant_move.py::test_draining_a_pool",  # last: it leaves its pool draining
)

# What uses none of the local platform (its own hosts, tests/miniature): `pytest -m beside`, beside the alone pass.
BESIDE = ("test_miniature.py",)

INTEGRATION = "tests/integration/"


def _place(nodeid: str) -> tuple[str, int]:
    """The stream (or "alone", "beside") a test runs in, and its rank there: the first listed prefix its id starts
    with."""
    path = nodeid.split(INTEGRATION, 1)[-1]
    # An alone test of a module in a stream is alone.
    for stream, prefixes in (("alone", ALONE), ("beside", BESIDE), *STREAMS.items()):
        for rank, prefix in enumerate(prefixes):
            if path.startswith(prefix):
                return stream, rank
    raise pytest.UsageError(f"{nodeid} is in no stream of tests/integration/conftest.py: add its module")


def pytest_itemcollected(item: pytest.Item) -> None:
    stream = _place(item.nodeid)[0]
    if stream in ("alone", "beside"):
        item.add_marker(getattr(pytest.mark, stream))  # as collected: before -m selects


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The streams in their order, then the alone tests in theirs (this hook sees a whole session's items)."""
    order = {stream: n for n, stream in enumerate((*STREAMS, "alone", "beside"))}
    ours = [item for item in items if INTEGRATION in item.nodeid]
    places = {item.nodeid: _place(item.nodeid) for item in ours}
    ours.sort(key=lambda item: (order[places[item.nodeid][0]], places[item.nodeid][1]))  # stable: file order within
    items[:] = [item for item in items if INTEGRATION not in item.nodeid] + ours


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook: pytest without it never calls this
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """pytest -n: each stream to a worker of its own, its tests in the order above."""
    from xdist.scheduler import LoadScopeScheduling  # called under pytest -n only, where xdist is loaded

    class StreamScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            if INTEGRATION not in nodeid:
                return super()._split_scope(nodeid)
            stream = _place(nodeid)[0]
            if stream == "alone":  # never beside a stream
                raise pytest.UsageError(f"{nodeid} needs the platform to itself: pytest -m alone, without -n")
            if stream == "beside":
                raise pytest.UsageError(f"{nodeid} runs in a pass of its own: pytest -m beside, without -n")
            return stream

    return StreamScheduling(config, log)


# Which test run (pytest -n: its workers share one id) last reset and converged the platform.
STARTED_FOR_RUN = LOCAL_STATE / "started-for-test-run"
# SAASODOO_TEST_PLATFORM=as-left: the streams take the platform an earlier pass left up (make test) instead of
# resetting and converging it again.
PLATFORM_AS_LEFT = os.environ.get("SAASODOO_TEST_PLATFORM") == "as-left"


@pytest.fixture(scope="session")
def local_platform() -> LocalPlatform:
    """The local platform reset and converged once per test run: by the first of the run's workers to need it."""
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if run is None:
        return start_local_platform()
    LOCAL_STATE.mkdir(parents=True, exist_ok=True)
    with (LOCAL_STATE / "start.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the other worker waits here while the platform starts
        if STARTED_FOR_RUN.exists() and STARTED_FOR_RUN.read_text() == run:
            return local_platform_as_it_is()
        if PLATFORM_AS_LEFT and registry_answers():
            platform = local_platform_as_it_is()
        else:
            # site.yml's second run is checked alone (test_local_platform.py), on the platform the alone pass starts.
            platform = start_local_platform(second_run=False)
        STARTED_FOR_RUN.write_text(run)
        return platform


# The modules whose tests have used the session's platform so far (pytest_runtest_setup below).
PLATFORM_USERS: set[str] = set()


def pytest_runtest_setup(item: pytest.Item) -> None:
    if "local_platform" in item.fixturenames:
        PLATFORM_USERS.add(item.module.__name__)


@pytest.fixture(scope="module")
def fresh_local_platform(request: pytest.FixtureRequest, local_platform: LocalPlatform) -> LocalPlatform:
    """For tests that count the fleet (which pool fills first): the platform as a fresh clone has it. That is the
    session's own when this process started it and no other module has used it yet (the alone pass runs such
    modules first)."""
    if local_platform.first_run is None or PLATFORM_USERS - {request.module.__name__}:
        return start_local_platform()
    return local_platform


def registry_answers() -> bool:
    try:
        registry_superuser().close()
    except psycopg.Error:
        return False
    return True


def start_local_platform(second_run: bool = True) -> LocalPlatform:
    reset_local_platform()
    first = run_playbook("site.yml")
    assert first.returncode == 0, first.output[-4000:]
    second = run_playbook("site.yml") if second_run else None
    assert second is None or second.returncode == 0, second.output[-4000:]
    return local_platform_as_it_is(first, second)


def local_platform_as_it_is(first: PlaybookRun | None = None, second: PlaybookRun | None = None) -> LocalPlatform:
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

    def migrate(self, migrations: list[Path]) -> None:
        """Apply these migrations, in one transaction as the role applies its pending ones."""
        with self.connect() as conn, conn.transaction():
            for migration in migrations:
                conn.execute(migration.read_text())


@pytest.fixture
def scratch_registry(unmigrated_scratch_registry: ScratchRegistry) -> ScratchRegistry:
    unmigrated_scratch_registry.migrate(MIGRATIONS)
    return unmigrated_scratch_registry


@pytest.fixture
def unmigrated_scratch_registry(local_platform: LocalPlatform):
    """A scratch registry with an empty `registry` schema: no migration applied yet."""
    port = local_platform.servers["platform-db"].port
    dbname = f"saasodoo_scratch_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(
        host=str(PLATFORM_SOCKET_DIR), port=port, user="postgres", dbname="postgres", autocommit=True
    ) as admin:
        admin.execute(f'CREATE DATABASE "{dbname}"')
    registry = ScratchRegistry(dbname, port)
    try:
        with registry.connect() as conn:
            conn.execute("CREATE SCHEMA registry")
        yield registry
    finally:
        with psycopg.connect(
            host=str(PLATFORM_SOCKET_DIR), port=port, user="postgres", dbname="postgres", autocommit=True
        ) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


from .ceph_cluster import ceph_cluster  # noqa: E402, F401  (fixture)
