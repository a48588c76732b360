"""The registry inventory plugin without a database: rows in, hosts, groups and safe host vars out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest
from ansible.errors import AnsibleParserError
from ansible.inventory.data import InventoryData
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar, trust_as_template

from ansible_collections.saasodoo.platform.plugins.inventory import registry
from ansible_collections.saasodoo.platform.plugins.module_utils.registry import connect_hint
from ansible_collections.saasodoo.platform.plugins.module_utils.secrets import derive_password

from conftest import INVENTORIES, load_yaml

SECRET = "p" * 64
SHARED = {
    "name": "pool-shared-01",
    "kind": "shared",
    "host": "127.0.0.1",
    "port": 55433,
    "pgbouncer_host": "127.0.0.1",
    "pgbouncer_port": 56433,
    "pg_major": 15,
    "capacity_tenants": 3,
    "capacity_storage_gb": 200,
    "status": "active",
    "health": "healthy",
    "health_checked_at": "2026-11-21T17:45:53+00:00",
    "dedicated_to": None,
    "created_at": "2026-11-21T17:45:53+00:00",
    "updated_at": "2026-11-21T17:45:53+00:00",
}
DEDICATED = {
    **SHARED,
    "name": "pool-dedicated-01",
    "kind": "dedicated",
    "port": 55470,
    "pgbouncer_host": None,
    "pgbouncer_port": None,
    "capacity_tenants": 1,
    "dedicated_to": "globex",
    "tenant_count": 1,
    "storage_committed_gb": 100,
}
ACME = {
    "tenant_id": "acme",
    "customer_id": "kb-account-1",
    "subscription_id": "kb-sub-1",
    "plan": "basic-monthly",
    "plan_version": 1,
    "db_type": "shared",
    "db_server": "pool-shared-01",
    "db_name": "t_acme",
    "db_role": "t_acme",
    "status": "active",
    "billing_status": "paid",
    "storage_path": "/srv/odoo/acme",
    "quotas": {"storage_gb": 5, "db_connection_limit": 10},
    "extra_modules": ["contacts"],
}
GLOBEX = {
    **ACME,
    "tenant_id": "globex",
    "plan": "premium-monthly",
    "db_type": "dedicated",
    "db_server": "pool-dedicated-01",
    "db_name": "t_globex",
    "db_role": "t_globex",
}
UNPLACED = {
    **ACME,
    "tenant_id": "initech",
    "db_server": None,
    "db_name": None,
    "db_role": None,
    "status": "provisioning",
    "quotas": None,
}


def fleet(servers=(SHARED, DEDICATED), tenants=(ACME, GLOBEX, UNPLACED), inventory=None) -> InventoryData:
    inventory = inventory or InventoryData()
    registry.add_fleet(inventory, list(servers), list(tenants))
    return inventory


def own_vars(inventory: InventoryData, host: str) -> dict[str, Any]:
    """What the plugin set on a host, without the inventory_file/inventory_dir InventoryData adds itself."""
    return {k: v for k, v in inventory.hosts[host].vars.items() if not k.startswith("inventory_")}


def members(inventory: InventoryData, group: str) -> list[str]:
    return sorted(h.name for h in inventory.groups[group].get_hosts())


@pytest.mark.parametrize(
    ("raw", "safe"),
    [
        ("plan_basic-monthly", "plan_basic_monthly"),
        ("pool_pool-shared-01", "pool_pool_shared_01"),
        ("status_active", "status_active"),
        ("plan_odd name.v2/eu", "plan_odd_name_v2_eu"),
        ("plan_caf\u00e9", "plan_caf_"),
        ("pool_{{ lookup('pipe', 'id') }}", "pool____lookup__pipe____id_____"),
    ],
)
def test_group_names_keep_only_letters_digits_and_underscores(raw, safe):
    assert registry.sanitize_group_name(raw) == safe


@pytest.mark.parametrize(
    ("row", "groups"),
    [
        (ACME, ["tenants", "plan_basic_monthly", "pool_pool_shared_01", "status_active"]),
        (GLOBEX, ["tenants", "plan_premium_monthly", "pool_pool_dedicated_01", "status_active"]),
        # Not placed yet: no pool group rather than a "pool_None".
        (UNPLACED, ["tenants", "plan_basic_monthly", "status_provisioning"]),
        ({**ACME, "status": "suspended"}, ["tenants", "plan_basic_monthly", "pool_pool_shared_01", "status_suspended"]),
    ],
)
def test_tenant_groups(row, groups):
    assert registry.tenant_groups(row) == groups


@pytest.mark.parametrize(
    ("group", "hosts"),
    [
        ("pools_shared", ["pool-shared-01"]),
        ("pools_dedicated", ["pool-dedicated-01"]),
        ("postgres_servers", ["pool-dedicated-01", "pool-shared-01"]),
        ("tenants", ["tenant-acme", "tenant-globex", "tenant-initech"]),
        ("plan_basic_monthly", ["tenant-acme", "tenant-initech"]),
        ("plan_premium_monthly", ["tenant-globex"]),
        ("pool_pool_shared_01", ["tenant-acme"]),
        ("pool_pool_dedicated_01", ["tenant-globex"]),
        ("status_active", ["tenant-acme", "tenant-globex"]),
        ("status_provisioning", ["tenant-initech"]),
    ],
)
def test_fleet_groups(group, hosts):
    assert members(fleet(), group) == hosts


def test_server_groups_hang_under_postgres_servers_as_in_the_static_inventories():
    inventory = fleet()
    assert {g.name for g in inventory.groups["postgres_servers"].child_groups} == {"pools_shared", "pools_dedicated"}
    # Only through the child group, so --graph shows each server once.
    assert inventory.groups["postgres_servers"].hosts == []


def test_add_fleet_returns_servers_then_tenants():
    names = registry.add_fleet(InventoryData(), [SHARED, DEDICATED], [ACME, GLOBEX])
    assert names == ["pool-shared-01", "pool-dedicated-01", "tenant-acme", "tenant-globex"]


@pytest.mark.parametrize(
    ("row", "role_vars"),
    [
        (
            SHARED,
            {
                "postgres_server_port": 55433,
                "postgres_server_listen_addresses": "127.0.0.1",
                "pgbouncer_listen_port": 56433,
                "pgbouncer_listen_address": "127.0.0.1",
            },
        ),
        # No PgBouncer on this server: no pgbouncer_* variables at all, not nulls.
        (DEDICATED, {"postgres_server_port": 55470, "postgres_server_listen_addresses": "127.0.0.1"}),
    ],
)
def test_a_new_server_gets_the_role_inputs_to_converge_it(row, role_vars):
    host_vars = own_vars(fleet(servers=[row], tenants=[]), row["name"])
    registry_views = {"saasodoo_registry_db_server", "saasodoo_server_ha"}
    assert {k: v for k, v in host_vars.items() if k not in registry_views} == role_vars


def test_a_server_under_patroni_is_in_ha_servers_too():
    inventory = fleet(servers=[SHARED, {**DEDICATED, "ha": "sync"}], tenants=[])
    assert members(inventory, "ha_servers") == ["pool-dedicated-01"]
    assert members(inventory, "pools_dedicated") == ["pool-dedicated-01"]
    assert inventory.hosts["pool-dedicated-01"].vars["saasodoo_server_ha"] == "sync"
    # A registry from before migration 0025 has no ha: one PostgreSQL.
    assert inventory.hosts["pool-shared-01"].vars["saasodoo_server_ha"] == "none"
    assert "ha_servers" in {g.name for g in inventory.groups["postgres_servers"].child_groups}


def test_a_declared_server_keeps_its_own_variables():
    inventory = InventoryData()
    inventory.add_group("pools_shared")
    inventory.add_host("pool-shared-01", group="pools_shared")
    inventory.set_variable("pool-shared-01", "postgres_server_port", 6543)
    # The registry says sync (as the inventory did once): whether it runs under Patroni is the inventory's to say.
    fleet(servers=[{**SHARED, "ha": "sync"}], tenants=[], inventory=inventory)
    host_vars = inventory.hosts["pool-shared-01"].vars
    assert host_vars["postgres_server_port"] == 6543
    assert not {
        "postgres_server_listen_addresses", "pgbouncer_listen_port", "pgbouncer_listen_address", "saasodoo_server_ha"
    } & set(host_vars)  # fmt: skip
    assert "ha_servers" not in inventory.groups
    # The registry's view is still there, under its own name.
    assert host_vars["saasodoo_registry_db_server"]["port"] == 55433
    assert members(inventory, "pools_shared") == ["pool-shared-01"]


@pytest.mark.parametrize(
    ("row", "extra"),
    [
        (SHARED, {}),  # before migration 0004
        (DEDICATED, {"tenant_count": 1, "storage_committed_gb": 100}),
    ],
)
def test_server_record_is_the_registry_row_without_timestamps(row, extra):
    record = fleet(servers=[row], tenants=[]).hosts[row["name"]].vars["saasodoo_registry_db_server"]
    assert set(record) == set(registry.SERVER_FIELDS) | set(extra)
    assert {k: record[k] for k in extra} == extra
    assert record["kind"] == row["kind"] and record["status"] == "active"


def test_tenant_record_holds_the_non_secret_fields():
    assert own_vars(fleet(servers=[], tenants=[ACME]), "tenant-acme") == {
        "saasodoo_tenant": ACME,
        "saasodoo_tenant_last_run": None,
    }


def test_tenant_names_its_last_run_outside_its_record():
    host_vars = fleet(servers=[], tenants=[{**ACME, "last_run": "job-7-1"}]).hosts["tenant-acme"].vars
    assert host_vars["saasodoo_tenant_last_run"] == "job-7-1"
    assert "last_run" not in host_vars["saasodoo_tenant"]


def test_tenant_without_quotas_gets_an_empty_mapping():
    assert fleet(servers=[], tenants=[UNPLACED]).hosts["tenant-initech"].vars["saasodoo_tenant"]["quotas"] == {}


@pytest.mark.parametrize("column", ["credential_version", "password", "db_password", "created_at"])
def test_columns_outside_the_allow_list_never_reach_host_vars(column):
    row = {**ACME, column: "s3cret-derived-or-not"}
    assert column not in fleet(servers=[], tenants=[row]).hosts["tenant-acme"].vars["saasodoo_tenant"]


@pytest.mark.parametrize("field", ["customer_id", "billing_status", "storage_path"])
def test_registry_values_are_never_templated(field):
    # Even a value that arrives marked as a trusted template (the worst case) comes out as plain data.
    row = {**ACME, field: trust_as_template("{{ 6 * 7 }}")}
    host_vars = fleet(servers=[], tenants=[row]).hosts["tenant-acme"].vars
    templar = Templar(loader=DataLoader(), variables=host_vars)
    assert templar.template(host_vars["saasodoo_tenant"][field]) == "{{ 6 * 7 }}"


@pytest.mark.parametrize(
    ("secret_file", "config", "expected"),
    [
        (
            "../../.state/local/secrets/platform_secret",
            "/repo/inventories/local/saasodoo.registry.yml",
            "/repo/.state/local/secrets/platform_secret",
        ),
        (
            "/etc/saasodoo/platform_secret",
            "/repo/inventories/local/saasodoo.registry.yml",
            "/etc/saasodoo/platform_secret",
        ),
        ("secret", "/repo/inv/saasodoo.registry.yml", "/repo/inv/secret"),
    ],
)
def test_secret_file_is_resolved_against_the_config_directory(secret_file, config, expected):
    assert registry.resolve_secret_path(secret_file, config) == expected


def test_given_password_wins_over_the_secret_file(tmp_path: Path):
    assert registry.resolve_password("given", str(tmp_path / "absent"), "x.registry.yml", "db") == "given"


def test_password_is_derived_as_the_platform_derives_it(tmp_path: Path):
    (tmp_path / "platform_secret").write_text(SECRET + "\n")
    config = str(tmp_path / "saasodoo.registry.yml")
    password = registry.resolve_password(None, "platform_secret", config, "saasodoo_registry")
    assert password == derive_password(SECRET, "registry@saasodoo_registry")


@pytest.mark.parametrize(
    ("secret_file", "content", "message"),
    [
        (None, None, "SAASODOO_REGISTRY_PASSWORD"),
        ("platform_secret", None, "run playbooks/site.yml first"),
        ("platform_secret", "too-short", "at least 32 characters"),
    ],
)
def test_no_usable_password_says_what_to_do(tmp_path: Path, secret_file, content, message):
    if content is not None:
        (tmp_path / secret_file).write_text(content)
    with pytest.raises(registry.RegistryError, match=message) as raised:
        registry.resolve_password(None, secret_file, str(tmp_path / "saasodoo.registry.yml"), "saasodoo_registry")
    assert "too-short" not in str(raised.value)


@pytest.mark.parametrize(
    ("reason", "hint"),
    [
        ('connection to server at "127.0.0.1", port 55432 failed: Connection refused', "Is the platform up?"),
        ('failed: FATAL:  password authentication failed for user "saasodoo_registry"', "refused the login"),
        ('failed: FATAL:  database "saasodoo_registry" does not exist', "playbooks/site.yml"),
    ],
)
def test_connection_failures_come_with_a_hint(reason, hint):
    assert hint in connect_hint(reason)


SETTINGS = registry.RegistrySettings("db.example", 5432, "saasodoo_registry", "saasodoo_registry", "hunter2-pw")


def test_settings_never_show_the_password():
    assert "hunter2-pw" not in repr(SETTINGS)


class FakeConnection:
    def __init__(self, results: list[tuple]):
        self._results = list(results)

    def __enter__(self):
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def execute(self, query: str, params: dict | None = None) -> FakeConnection:
        self.params = params
        self._row = self._results.pop(0)
        return self

    def fetchone(self) -> tuple:
        return self._row


def test_a_registry_without_schema_asks_for_site_yml(monkeypatch):
    monkeypatch.setattr(registry.psycopg, "connect", lambda **kw: FakeConnection([(False,)]))
    with pytest.raises(
        registry.RegistryError, match=r"db\.example:5432/saasodoo_registry has no schema yet.*site\.yml"
    ):
        registry.fetch_fleet(SETTINGS)


def test_fetch_returns_servers_and_tenants(monkeypatch):
    monkeypatch.setattr(registry.psycopg, "connect", lambda **kw: FakeConnection([(True,), ([SHARED], [ACME])]))
    assert registry.fetch_fleet(SETTINGS) == ([SHARED], [ACME])


@pytest.mark.parametrize("tenants", [True, False])
def test_fetch_asks_for_the_tenants_only_when_wanted(monkeypatch, tenants: bool):
    conn = FakeConnection([(True,), ([SHARED], [ACME] if tenants else [])])
    monkeypatch.setattr(registry.psycopg, "connect", lambda **kw: conn)
    registry.fetch_fleet(SETTINGS, tenants=tenants)
    assert conn.params == {"tenants": tenants}


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (psycopg.OperationalError("connection refused\n\tIs the server running?"), "cannot reach the registry"),
        (psycopg.errors.UndefinedColumn("column hunter2-pw does not exist"), "cannot read the platform registry"),
    ],
)
def test_registry_errors_name_the_registry_but_not_the_password(monkeypatch, error, message):
    def refuse(**kwargs: Any) -> None:
        assert kwargs["password"] == "hunter2-pw" and kwargs["prepare_threshold"] is None and kwargs["autocommit"]
        assert "default_transaction_read_only=on" in kwargs["options"]  # the inventory reads, never writes
        raise error

    monkeypatch.setattr(registry.psycopg, "connect", refuse)
    with pytest.raises(registry.RegistryError, match=message) as raised:
        registry.fetch_fleet(SETTINGS)
    assert "db.example:5432" in str(raised.value) and "saasodoo_registry" in str(raised.value)
    assert "hunter2-pw" not in str(raised.value)


@pytest.mark.parametrize(
    ("name", "accepted"),
    [
        ("saasodoo.registry.yml", True),
        ("saasodoo.registry.yaml", True),
        ("registry.yml", True),
        ("hosts.yml", False),
        ("saasodoo.registry.json", False),
        ("registry.yml.bak", False),
    ],
)
def test_verify_file_accepts_only_registry_configs(tmp_path: Path, name, accepted):
    (tmp_path / name).write_text("plugin: saasodoo.platform.registry\n")
    assert registry.InventoryModule().verify_file(str(tmp_path / name)) is accepted


def test_verify_file_refuses_a_missing_file(tmp_path: Path):
    assert registry.InventoryModule().verify_file(str(tmp_path / "saasodoo.registry.yml")) is False


def parse_with(monkeypatch, tmp_path: Path, options: dict[str, Any], fetched=None) -> InventoryData:
    """Run the plugin's parse() on a real InventoryData with `options` as the configuration."""
    plugin = registry.InventoryModule()
    config = {
        "registry_host": "127.0.0.1",
        "registry_port": 55432,
        "registry_database": "saasodoo_registry",
        "registry_user": "saasodoo_registry",
        "registry_password": "pw",
        "platform_secret_file": None,
        "registry_sslmode": "prefer",
        "registry_sslrootcert": None,
        "connect_timeout": 5,
        "tenants": True,
        "strict": False,
        "compose": {},
        "groups": {},
        "keyed_groups": [],
        "leading_separator": True,
        "use_extra_vars": False,
        **options,
    }
    monkeypatch.setattr(plugin, "_read_config_data", lambda path: plugin._options.update(config))
    monkeypatch.setattr(registry, "fetch_fleet", lambda settings, tenants: fetched or ([SHARED], [ACME, GLOBEX]))
    inventory = InventoryData()
    plugin.parse(inventory, DataLoader(), str(tmp_path / "saasodoo.registry.yml"))
    return inventory


def test_parse_applies_the_constructed_options(monkeypatch, tmp_path: Path):
    # The configuration file is loaded as trusted templates; the test marks them the same way.
    inventory = parse_with(
        monkeypatch,
        tmp_path,
        {
            "compose": {"tenant_url": trust_as_template("'https://' ~ saasodoo_tenant.tenant_id ~ '.example.com'")},
            "groups": {"dedicated_tenants": trust_as_template("saasodoo_tenant.db_type == 'dedicated'")},
            "keyed_groups": [{"key": trust_as_template("saasodoo_tenant.db_type"), "prefix": "db_type"}],
        },
    )
    assert inventory.hosts["tenant-acme"].vars["tenant_url"] == "https://acme.example.com"
    assert members(inventory, "dedicated_tenants") == ["tenant-globex"]
    assert members(inventory, "db_type_shared") == ["tenant-acme"]


def test_parse_in_strict_mode_fails_on_a_bad_expression(monkeypatch, tmp_path: Path):
    with pytest.raises(AnsibleParserError, match="pool-shared-01"):
        parse_with(
            monkeypatch,
            tmp_path,
            {"strict": True, "keyed_groups": [{"key": trust_as_template("saasodoo_tenant.db_type")}]},
        )


def test_parse_maps_registry_errors_to_parser_errors(monkeypatch, tmp_path: Path):
    def unreachable(settings: registry.RegistrySettings, tenants: bool) -> None:
        raise registry.RegistryError(f"cannot reach the registry at {settings.where}")

    plugin = registry.InventoryModule()
    monkeypatch.setattr(
        plugin,
        "_read_config_data",
        lambda path: plugin._options.update(
            registry_host="127.0.0.1",
            registry_port=1,
            registry_database="saasodoo_registry",
            registry_user="saasodoo_registry",
            registry_password="pw",
            platform_secret_file=None,
            registry_sslmode="prefer",
            registry_sslrootcert=None,
            connect_timeout=1,
            tenants=True,
        ),
    )
    monkeypatch.setattr(registry, "fetch_fleet", unreachable)
    with pytest.raises(AnsibleParserError, match=r"saasodoo\.platform\.registry: .*127\.0\.0\.1:1/saasodoo_registry"):
        plugin.parse(InventoryData(), DataLoader(), str(tmp_path / "saasodoo.registry.yml"))


def test_local_config_points_at_the_local_registry():
    config = load_yaml(INVENTORIES / "local/saasodoo.registry.yml")
    local = INVENTORIES / "local"
    assert config["plugin"] == "saasodoo.platform.registry"
    assert config["registry_port"] == load_yaml(local / "host_vars/platform-db.yml")["postgres_server_port"]
    secret = registry.resolve_secret_path(config["platform_secret_file"], str(local / "saasodoo.registry.yml"))
    assert Path(secret) == INVENTORIES.parent / ".state/local/secrets/platform_secret"


def test_production_config_points_at_platform_db_01_without_a_password():
    config = load_yaml(INVENTORIES / "production.example/saasodoo.registry.yml")
    production = INVENTORIES / "production.example"
    assert config["plugin"] == "saasodoo.platform.registry"
    assert (
        config["registry_host"]
        == load_yaml(production / "host_vars/platform-db-01.yml")["postgres_server_listen_addresses"]
    )
    assert (
        config["registry_port"]
        == load_yaml(production / "group_vars/postgres_servers/postgres_server.yml")["postgres_server_port"]
    )
    assert "registry_password" not in config and "platform_secret_file" not in config


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"registry_password": None},
            r"127\.0\.0\.1:55432/saasodoo_registry: no password: set SAASODOO_REGISTRY_PASSWORD",
        ),
        (
            {"registry_password": None, "platform_secret_file": "absent/platform_secret"},
            r"127\.0\.0\.1:55432/saasodoo_registry: the platform secret .*absent/platform_secret does not exist yet: "
            r"run playbooks/site\.yml first",
        ),
    ],
)
def test_parse_without_a_password_names_the_registry_and_the_fix(monkeypatch, tmp_path: Path, options, message):
    with pytest.raises(AnsibleParserError, match=message):
        parse_with(monkeypatch, tmp_path, options)


def test_the_registry_certificate_is_checked_against_a_ca_beside_the_configuration(monkeypatch, tmp_path: Path):
    seen = []
    monkeypatch.setattr(registry, "fetch_fleet", lambda settings, tenants: seen.append(settings) or ([SHARED], []))
    plugin = registry.InventoryModule()
    config = {
        "registry_host": "10.0.0.1", "registry_port": 5432, "registry_database": "saasodoo_registry",
        "registry_user": "saasodoo_registry", "registry_password": "pw", "platform_secret_file": None,
        "registry_sslmode": "verify-full", "registry_sslrootcert": "../secrets/tls/ca.crt", "connect_timeout": 5,
        "tenants": True, "strict": False, "compose": {}, "groups": {}, "keyed_groups": [], "leading_separator": True,
        "use_extra_vars": False,
    }  # fmt: skip
    monkeypatch.setattr(plugin, "_read_config_data", lambda path: plugin._options.update(config))
    plugin.parse(InventoryData(), DataLoader(), str(tmp_path / "inventory/saasodoo.registry.yml"))
    [settings] = seen
    assert (settings.sslmode, settings.sslrootcert) == ("verify-full", str(tmp_path / "secrets/tls/ca.crt"))
