"""The registry inventory plugin against the converged local registry: tenants show up, secrets never do."""

from __future__ import annotations

import json
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from psycopg import sql

from ansible_collections.saasodoo.platform.plugins.module_utils.secrets import derive_password

from .conftest import LOCAL_STATE, VENV_BIN, ansible_env, run_ansible_tool, run_playbook
from conftest import INVENTORIES, REPO, load_yaml

CONFIG = load_yaml(INVENTORIES / "local/saasodoo.registry.yml")
REGISTRY_PURPOSE = "registry@saasodoo_registry"
POOL = "pool-shared-01"
PLAN = "basic-monthly"
# Stored as a tenant's customer id: proves registry data is never templated on its way into hostvars.
TEMPLATE_BAIT = "{{ 6 * 7 }}"
# What a server's registry record says of it now rather than what describes it: the other test stream's placements
# change these (a tenant placed, a pool grown and brought up, probed healthy) between two listings.
LIVE_FIELDS = ("tenant_count", "storage_committed_gb", "status", "health")


def platform_secret() -> str:
    return (LOCAL_STATE / "secrets/platform_secret").read_text().strip()


def connect_registry() -> psycopg.Connection:
    return psycopg.connect(
        host="127.0.0.1",
        port=CONFIG["registry_port"],
        dbname="saasodoo_registry",
        user="saasodoo_registry",
        password=derive_password(platform_secret(), REGISTRY_PURPOSE),
        connect_timeout=5,
        prepare_threshold=None,
        autocommit=True,
    )


@pytest.fixture(scope="module")
def registry() -> Iterator[psycopg.Connection]:
    """The local registry, converging the platform first if it is not up."""
    try:
        conn = connect_registry()
    except (OSError, psycopg.OperationalError):
        converge = run_playbook("site.yml")
        assert converge.returncode == 0, converge.output[-4000:]
        conn = connect_registry()
    with conn:
        yield conn


def latest_plan(registry: psycopg.Connection) -> tuple[int, dict[str, Any]]:
    return registry.execute(
        "SELECT version, entitlements FROM registry.plans WHERE name = %s ORDER BY version DESC LIMIT 1", (PLAN,)
    ).fetchone()


@pytest.fixture(scope="module")
def throwaway_tenants(registry: psycopg.Connection) -> Iterator[list[str]]:
    """Two active tenants on pool-shared-01, inserted straight into the registry and deleted afterwards."""
    version, entitlements = latest_plan(registry)
    ids = [f"invtest-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    try:
        for number, tenant_id in enumerate(ids):
            registry.execute(
                """
                INSERT INTO registry.tenants (tenant_id, customer_id, subscription_id, plan_name, plan_version,
                                              db_type, db_server, db_name, db_role, status, billing_status, quotas)
                VALUES (%s, %s, %s, %s, %s, 'shared', %s, %s, %s, 'active', 'paid', %s::jsonb)
                """,
                (
                    tenant_id,
                    TEMPLATE_BAIT if number == 0 else f"kb-account-{tenant_id}",
                    f"kb-sub-{tenant_id}",
                    PLAN,
                    version,
                    POOL,
                    tenant_id.replace("-", "_"),
                    tenant_id.replace("-", "_"),
                    json.dumps({"storage_gb": entitlements["storage_gb"]}),
                ),
            )
        yield ids
    finally:
        registry.execute("DELETE FROM registry.tenants WHERE tenant_id = ANY(%s)", (ids,))


def plain(node: Any) -> Any:
    """ansible-inventory --list output without the {"__ansible_unsafe": ...} wrappers of untrusted strings."""
    if isinstance(node, dict):
        if set(node) == {"__ansible_unsafe"}:
            return node["__ansible_unsafe"]
        return {key: plain(value) for key, value in node.items()}
    if isinstance(node, list):
        return [plain(value) for value in node]
    return node


@pytest.fixture(scope="module")
def listing(throwaway_tenants: list[str]) -> tuple[str, dict[str, Any]]:
    """The raw text of ansible-inventory --list, and its data with plain strings."""
    text = run_ansible_tool("ansible-inventory", "-i", "inventories/local", "--list")
    return text, plain(json.loads(text))


def described(server: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in server.items() if key not in LIVE_FIELDS}


def hosts_of(listing: dict[str, Any], group: str) -> set[str]:
    return set(listing.get(group, {}).get("hosts", []))


def test_graph_shows_the_tenants(throwaway_tenants: list[str]):
    graph = run_ansible_tool("ansible-inventory", "-i", "inventories/local", "--graph")
    assert "@tenants:" in graph and "@pool_pool_shared_01:" in graph
    for tenant_id in throwaway_tenants:
        assert f"--tenant-{tenant_id}\n" in graph


def test_the_runners_jobs_leave_the_tenants_out(listing, throwaway_tenants: list[str]):
    """SAASODOO_INVENTORY_TENANTS=false (the webhook runner's jobs): the servers, with what the registry says of
    them, and not one tenant host or group."""
    done = subprocess.run(
        [str(VENV_BIN / "ansible-inventory"), "-i", "inventories/local", "--list"], cwd=REPO, capture_output=True,
        env={**ansible_env(), "SAASODOO_INVENTORY_TENANTS": "false"}, text=True, check=True,
    )  # fmt: skip
    without = plain(json.loads(done.stdout))
    assert not [host for host in without["_meta"]["hostvars"] if host.startswith("tenant-")]
    assert "tenants" not in without and "status_active" not in without
    servers = hosts_of(listing[1], "pools_shared")
    assert servers and servers <= hosts_of(without, "pools_shared")  # the other stream may grow a pool meanwhile
    for server in servers:
        registry_view = listing[1]["_meta"]["hostvars"][server]["saasodoo_registry_db_server"]
        runner_view = without["_meta"]["hostvars"][server]["saasodoo_registry_db_server"]
        assert runner_view.keys() == registry_view.keys() and described(runner_view) == described(registry_view)


@pytest.mark.parametrize("group", ["tenants", "plan_basic_monthly", "pool_pool_shared_01", "status_active"])
def test_tenants_are_in_their_groups(listing, throwaway_tenants: list[str], group: str):
    assert {f"tenant-{t}" for t in throwaway_tenants} <= hosts_of(listing[1], group)


def test_tenant_hostvars_are_the_registry_record(listing, registry: psycopg.Connection, throwaway_tenants: list[str]):
    tenant_id = throwaway_tenants[1]
    version, entitlements = latest_plan(registry)
    record = listing[1]["_meta"]["hostvars"][f"tenant-{tenant_id}"]["saasodoo_tenant"]
    assert record == {
        "tenant_id": tenant_id,
        "customer_id": f"kb-account-{tenant_id}",
        "subscription_id": f"kb-sub-{tenant_id}",
        "plan": PLAN,
        "plan_version": version,
        "db_type": "shared",
        "db_server": POOL,
        "db_name": tenant_id.replace("-", "_"),
        "db_role": tenant_id.replace("-", "_"),
        "status": "active",
        "billing_status": "paid",
        "storage_path": None,
        "quotas": {"storage_gb": entitlements["storage_gb"]},
        "extra_modules": [],
    }


def test_servers_carry_the_registry_view(listing, registry: psycopg.Connection):
    record = listing[1]["_meta"]["hostvars"][POOL]["saasodoo_registry_db_server"]
    # Its status as the registry has it: the drain tests leave their pool draining.
    (status,) = registry.execute("SELECT status FROM registry.db_servers WHERE name = %s", (POOL,)).fetchone()
    assert record["name"] == POOL and record["kind"] == "shared" and record["status"] == status
    assert POOL in hosts_of(listing[1], "pools_shared")


def known_passwords(registry: psycopg.Connection, servers: list[str]) -> dict[str, str]:
    """Every credential the platform derives today: registry owner, monitors, each tenant's current version."""
    secret = platform_secret()
    purposes = [REGISTRY_PURPOSE] + [f"monitor@{server}" for server in servers]
    purposes += [
        f"tenant:{t}:v{v}" for t, v in registry.execute("SELECT tenant_id, credential_version FROM registry.tenants")
    ]
    return {purpose: derive_password(secret, purpose) for purpose in purposes}


def keyed_values(node: Any, path: str = "") -> Iterator[tuple[str, str, Any]]:
    """(path, key, value) for every mapping entry anywhere in a JSON document."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield path, key, value
            yield from keyed_values(value, f"{path}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from keyed_values(value, f"{path}/{index}")


def test_no_secret_reaches_the_inventory(listing, registry: psycopg.Connection):
    text, data = listing
    servers = sorted(hosts_of(data, "pools_shared") | hosts_of(data, "pools_dedicated") | hosts_of(data, "platform"))
    assert platform_secret() not in text
    for purpose, password in known_passwords(registry, servers).items():
        assert password not in text, f"the {purpose} password is in ansible-inventory --list"


def test_no_password_key_holds_a_value(listing):
    # The static inventory may say how a password is derived (a template, rendered only at run time);
    # a concrete value under a password key would be a leak.
    def templates_only(value) -> bool:  # a password, or a dict of them (postgres_ha_passwords)
        if isinstance(value, dict):
            return bool(value) and all(templates_only(v) for v in value.values())
        return isinstance(value, str) and "{{" in value

    for path, key, value in keyed_values(listing[1]):
        if "password" in key.lower():
            assert templates_only(value), f"{path}/{key} holds a concrete value"


@pytest.mark.parametrize("variable", ["saasodoo_tenant", "saasodoo_registry_db_server"])
def test_plugin_records_have_no_secret_keys(listing, variable: str):
    records = [hv[variable] for hv in listing[1]["_meta"]["hostvars"].values() if variable in hv]
    assert records
    for record in records:
        assert not [key for key in record if any(word in key for word in ("password", "secret", "credential"))]


def test_tenant_hosts_get_nothing_else_from_the_plugin(listing, throwaway_tenants: list[str]):
    # Tenants share group_vars/all with every host; only their record and their last run come on top of it.
    all_keys = set()
    for path in (INVENTORIES / "local/group_vars/all").glob("*.yml"):
        all_keys |= set(load_yaml(path) or {})
    tenant_keys = set(listing[1]["_meta"]["hostvars"][f"tenant-{throwaway_tenants[0]}"])
    assert tenant_keys - all_keys == {"saasodoo_tenant", "saasodoo_tenant_last_run"}


def run_static_host_vars(host: str) -> dict[str, Any]:
    return json.loads(run_ansible_tool("ansible-inventory", "-i", "inventories/local/hosts.yml", "--host", host))


@pytest.mark.parametrize("host", ["platform-db", "pool-shared-01", "pool-shared-02"])
def test_static_servers_keep_their_variables(throwaway_tenants: list[str], host: str):
    static = run_static_host_vars(host)
    merged = json.loads(run_ansible_tool("ansible-inventory", "-i", "inventories/local", "--host", host))
    assert {k: merged.get(k) for k in static} == static
    assert set(merged) - set(static) <= {"saasodoo_registry_db_server", "saasodoo_server_ha"}


def test_registry_values_are_data_not_templates(throwaway_tenants: list[str]):
    out = run_ansible_tool(
        "ansible",
        "-i",
        "inventories/local",
        f"tenant-{throwaway_tenants[0]}",
        "-m",
        "ansible.builtin.debug",
        "-a",
        "var=saasodoo_tenant.customer_id",
    )
    assert f"saasodoo_tenant.customer_id: '{TEMPLATE_BAIT}'" in out


def test_registry_strings_are_listed_as_unsafe(listing, throwaway_tenants: list[str]):
    # ansible-core marks untrusted strings this way in --list, so a saved snapshot stays untrusted when reused.
    raw = json.loads(listing[0])["_meta"]["hostvars"][f"tenant-{throwaway_tenants[0]}"]["saasodoo_tenant"]
    assert raw["customer_id"] == {"__ansible_unsafe": TEMPLATE_BAIT}
    assert isinstance(raw["plan_version"], int)  # only strings can carry a template


@pytest.fixture
def empty_database(registry: psycopg.Connection) -> Iterator[tuple[int, str, str]]:
    """A database without the registry schema, reachable over TCP as a fresh install's would be.

    It lives on pool-shared-01 (up once `registry` is), whose pg_hba admits a role to the database of its name.
    """
    port = load_yaml(INVENTORIES / "local/host_vars/pool-shared-01.yml")["postgres_server_port"]
    name, password = f"invtest_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    admin = psycopg.connect(
        host=str(LOCAL_STATE / "pg/pool-shared-01/run"), port=port, user="postgres", dbname="postgres", autocommit=True
    )
    with admin:
        try:
            admin.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(name), password))
            admin.execute(sql.SQL("CREATE DATABASE {0} OWNER {0}").format(sql.Identifier(name)))
            yield port, name, password
        finally:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


def inventory_with(config: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """An ansible tool over the static local inventory plus the registry source `config`."""
    tool, *rest = args
    return subprocess.run(
        [str(VENV_BIN / tool), "-i", "inventories/local/hosts.yml", "-i", str(config), *rest],
        cwd=REPO,
        env={**ansible_env(), **(env or {})},
        capture_output=True,
        text=True,
        check=False,
    )


def test_a_registry_without_schema_asks_for_site_yml(tmp_path: Path, empty_database: tuple[int, str, str]):
    port, name, password = empty_database
    config = tmp_path / "saasodoo.registry.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "plugin": "saasodoo.platform.registry",
                "registry_port": port,
                "registry_database": name,
                "registry_user": name,
            }
        )
    )
    # The password comes from the environment, as in production.
    result = inventory_with(config, "ansible-inventory", "--graph", env={"SAASODOO_REGISTRY_PASSWORD": password})
    assert result.returncode == 0, result.stderr
    expected = (
        f"the registry at 127.0.0.1:{port}/{name} has no schema yet (fresh install): run playbooks/site.yml first"
    )
    assert expected in result.stderr
    assert password not in result.stderr + result.stdout
    assert "pool-shared-01" in result.stdout and "tenant-" not in result.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_registry_only_warns(tmp_path: Path):
    port = free_port()
    config = tmp_path / "saasodoo.registry.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "plugin": "saasodoo.platform.registry",
                "registry_port": port,
                "connect_timeout": 2,
                "platform_secret_file": str(LOCAL_STATE / "secrets/platform_secret"),
            }
        )
    )
    for args in [("ansible-inventory", "--graph"), ("ansible-playbook", "--list-hosts", "playbooks/site.yml")]:
        result = inventory_with(config, *args)
        assert result.returncode == 0, result.stderr
        assert f"cannot reach the registry saasodoo_registry at 127.0.0.1:{port}" in result.stderr
        assert "Run playbooks/site.yml" in result.stderr
        assert "pool-shared-01" in result.stdout and "tenant-" not in result.stdout
