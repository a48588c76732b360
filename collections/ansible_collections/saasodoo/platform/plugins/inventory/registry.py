# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Inventory plugin: the live fleet (database servers and tenants) read from the platform registry."""

# ruff: noqa: E402 - the documentation comes first, as in every Ansible plugin; the imports follow it.
from __future__ import annotations

DOCUMENTATION = r"""
name: registry
short_description: The live fleet from the SaaSOdoo platform registry
description:
  - Reads the platform registry database and adds its database servers and Odoo tenants as hosts.
  - Every server in C(registry.db_servers) that is not C(retired) becomes a host named after the server, in
    C(pools_shared) or C(pools_dedicated) by its kind (both children of C(postgres_servers)); one whose C(ha) is
    C(async) or C(sync) (under Patroni with a replica) is in C(ha_servers) too, unless the inventory declares it.
  - Every tenant in C(registry.tenants) that is not C(purged) becomes a host C(tenant-<tenant_id>), in
    C(tenants), C(plan_<plan>), C(pool_<db_server>) (once placed) and C(status_<status>). Characters other than
    letters, digits and underscores in group names become underscores (C(plan_basic_monthly),
    C(pool_pool_shared_01)).
  - Host variables are non-secret and marked unsafe (registry data is never templated). Servers get
    C(saasodoo_registry_db_server), tenants C(saasodoo_tenant) and C(saasodoo_tenant_last_run) (the last playbook
    run whose audit rows name the tenant, as C(playbooks/registry_audit.yml) lists it), servers the inventory does
    not declare also C(saasodoo_server_ha) (C(none), C(async) or C(sync)). No password, and no input of one
    (C(credential_version)), is ever read into the inventory.
  - A server the inventory already declares (a static source parsed before this one) keeps its own variables;
    only servers the platform created at run time get C(postgres_server_port),
    C(postgres_server_listen_addresses), C(pgbouncer_listen_port) and C(pgbouncer_listen_address) from the registry.
  - The configuration file name must end in C(registry.yml) or C(registry.yaml).
author:
  - SaaSOdoo ops maintainers (@saasodoo)
requirements:
  - psycopg >= 3.1 on the controller
extends_documentation_fragment:
  - constructed
options:
  plugin:
    description: The name of this plugin; marks the file as its configuration.
    required: true
    type: str
    choices: [saasodoo.platform.registry]
  registry_host:
    description: Address of the PostgreSQL server holding the registry.
    type: str
    default: 127.0.0.1
  registry_port:
    description: Port of the PostgreSQL server holding the registry.
    type: int
    required: true
  registry_database:
    description: Name of the registry database.
    type: str
    default: saasodoo_registry
  registry_user:
    description: Role the plugin logs in as (the registry owner); it only reads.
    type: str
    default: saasodoo_registry
  registry_password:
    description:
      - Password of O(registry_user). Prefer the environment variable to writing it in the file.
      - When neither this nor the environment variable is set, the password is derived from
        O(platform_secret_file).
    type: str
    env:
      - name: SAASODOO_REGISTRY_PASSWORD
  platform_secret_file:
    description:
      - File holding the platform secret, used to derive the password of O(registry_user) as the platform does
        (purpose C(registry@<registry_database>)) when O(registry_password) is not set.
      - A relative path is resolved against the directory of this configuration file.
    type: str
  registry_sslmode:
    description: libpq C(sslmode) of the login; C(verify-full) checks the registry's certificate and name.
    type: str
    choices: [disable, prefer, require, verify-ca, verify-full]
    default: prefer
  registry_sslrootcert:
    description:
      - The CA file the registry's certificate is checked against (the platform CA, on the controller).
      - A relative path is resolved against the directory of this configuration file.
    type: str
  connect_timeout:
    description: Seconds to wait for the registry before giving up on this source.
    type: int
    default: 5
  tenants:
    description:
      - Whether the tenants become hosts. The servers always do.
      - No playbook targets a tenant host, and each one costs every run that loads this inventory (the registry's
        lookup of its last run, and Ansible's work for a host in four groups). The webhook runner's jobs leave them
        out with C(SAASODOO_INVENTORY_TENANTS=false); ops and auditors see them.
      - Ansible reads any value other than a true one (C(true), C(yes), C(on), C(1)) as false.
    type: bool
    default: true
    env:
      - name: SAASODOO_INVENTORY_TENANTS
notes:
  - When the registry cannot be reached, has no schema yet or refuses the login, parsing fails with a message
    naming C(host:port/database) (never the password). Ansible then warns and goes on with the other inventory
    sources, so C(playbooks/site.yml), which creates the registry, still runs on a fresh install.
  - Name the configuration so that it sorts after the static inventory file (C(hosts.yml) before
    C(saasodoo.registry.yml)), so that the plugin sees which hosts are already declared and leaves their variables
    untouched.
"""

EXAMPLES = r"""
---
# inventories/local/saasodoo.registry.yml: the local registry, password derived from the local platform secret.
plugin: saasodoo.platform.registry
registry_port: 55432
platform_secret_file: ../../.state/local/secrets/platform_secret

---
# inventories/production/saasodoo.registry.yml: password from SAASODOO_REGISTRY_PASSWORD, extra groups per db type.
plugin: saasodoo.platform.registry
registry_host: 10.20.1.10
registry_port: 5432
connect_timeout: 3
keyed_groups:
  - key: saasodoo_tenant.db_type
    prefix: db_type
groups:
  tenants_unplaced: saasodoo_tenant is defined and saasodoo_tenant.db_server is none
compose:
  saasodoo_tenant_url: "'https://' ~ saasodoo_tenant.tenant_id ~ '.odoo.example.com'"
"""

import dataclasses
import os
import re
from collections.abc import Mapping
from typing import Any, Protocol

from ansible.errors import AnsibleParserError
from ansible.plugins.inventory import BaseInventoryPlugin, Constructable

# wrap_var is ansible-core's make_unsafe: registry values are data, so a "{{ ... }}" in a tenant id or
# billing status never reaches the template engine.
from ansible.utils.unsafe_proxy import wrap_var as make_unsafe

from ansible_collections.saasodoo.platform.plugins.module_utils.registry import (
    RegistryUnreachable,
    connect_registry,
    first_line,
)
from ansible_collections.saasodoo.platform.plugins.module_utils.registry_servers import INVENTORY_COLUMNS
from ansible_collections.saasodoo.platform.plugins.module_utils.secrets import WeakSecretError, derive_password

try:
    import psycopg
except ImportError as e:  # pragma: no cover - depends on the controller's environment
    psycopg = None
    PSYCOPG_IMPORT_ERROR: ImportError | None = e
else:
    PSYCOPG_IMPORT_ERROR = None

SERVER_GROUPS = {"shared": "pools_shared", "dedicated": "pools_dedicated"}
# A server under Patroni (ha async or sync) is in this group too: its group_vars run it so (roles/postgres_ha).
HA_SERVERS_GROUP = "ha_servers"
SERVERS_PARENT_GROUP = "postgres_servers"
TENANTS_GROUP = "tenants"
TENANT_HOST_PREFIX = "tenant-"

# What an auditor may see of a server: the columns the inventory owns, and the platform's record of it. The optional
# ones arrived with later migrations.
OPTIONAL_SERVER_FIELDS = ("tenant_count", "storage_committed_gb", "ha", "spare_for")
SERVER_FIELDS = (
    "name",
    *(column for column in INVENTORY_COLUMNS if column not in OPTIONAL_SERVER_FIELDS),
    "status",
    "health",
    "dedicated_to",
)
# What an auditor may see of a tenant: credential_version is left out, it is an input of the tenant's password.
TENANT_FIELDS = (
    "tenant_id",
    "customer_id",
    "subscription_id",
    "plan",
    "plan_version",
    "db_type",
    "db_server",
    "db_name",
    "db_role",
    "status",
    "billing_status",
    "storage_path",
    "quotas",
    "extra_modules",
)

_UNSAFE_GROUP_CHARS = re.compile(r"[^A-Za-z0-9_]")

_SCHEMA_QUERY = "SELECT to_regclass('registry.db_servers') IS NOT NULL AND to_regclass('registry.tenants') IS NOT NULL"
# One statement, so servers and tenants come from the same snapshot. Servers go through row_to_json so the
# query works before and after the migrations that add columns; tenant columns are named, so nothing
# secret-adjacent is ever read.
_FLEET_QUERY = """
SELECT
    (SELECT coalesce(json_agg(row_to_json(s) ORDER BY s.name), '[]')
       FROM registry.db_servers AS s
      WHERE s.status <> 'retired'),
    (SELECT coalesce(json_agg(t ORDER BY t.tenant_id), '[]')
       FROM (SELECT tenant_id, customer_id, subscription_id, plan_name AS plan, plan_version, db_type, db_server,
                    db_name, db_role, status, billing_status, storage_path, quotas,
                    -- read from the row as a whole: a registry before its migration 0023 has no such column
                    to_jsonb(tenants) -> 'extra_modules' AS extra_modules,
                    -- the newest audit row of the tenant that names a playbook run (the index on tenant, id)
                    (SELECT a.detail ->> 'run' FROM registry.audit AS a
                      WHERE a.tenant_id = tenants.tenant_id AND a.detail ? 'run'
                      ORDER BY a.id DESC LIMIT 1) AS last_run
               FROM registry.tenants
              WHERE %(tenants)s AND status <> 'purged') AS t)
"""


class RegistryError(Exception):
    """The registry cannot be read: unreachable, no schema yet, login refused or no password to log in with."""


class InventoryLike(Protocol):
    """The part of ansible.inventory.data.InventoryData the plugin writes through."""

    def add_group(self, group: str) -> str: ...
    def add_host(self, host: str, group: str | None = None, port: int | str | None = None) -> str: ...
    def add_child(self, group: str, child: str) -> bool: ...
    def set_variable(self, entity: str, varname: str, value: Any) -> None: ...
    def get_host(self, hostname: str) -> Any: ...


@dataclasses.dataclass(frozen=True)
class RegistrySettings:
    host: str
    port: int
    database: str
    user: str
    password: str = dataclasses.field(repr=False)
    connect_timeout: int = 5
    sslmode: str = "prefer"
    sslrootcert: str | None = None

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}/{self.database}"

    def login(self) -> dict[str, Any]:
        """The registry login as module_utils/registry.connect_registry takes it (the audit callback's too)."""
        return {
            "login_host": self.host,
            "login_port": self.port,
            "login_db": self.database,
            "login_user": self.user,
            "login_password": self.password,
            "login_sslmode": self.sslmode,
            "login_sslrootcert": self.sslrootcert,
            "connect_timeout": self.connect_timeout,
        }


# ---- Pure parts: rows in, hosts and groups out -------------------------------------------------------


def sanitize_group_name(name: str) -> str:
    """A valid Ansible group name: every character other than [A-Za-z0-9_] becomes '_'."""
    return _UNSAFE_GROUP_CHARS.sub("_", name)


def tenant_host_name(tenant_id: str) -> str:
    return TENANT_HOST_PREFIX + tenant_id


def server_record(row: Mapping[str, Any]) -> dict[str, Any]:
    record = {field: row.get(field) for field in SERVER_FIELDS}
    record.update({field: row[field] for field in OPTIONAL_SERVER_FIELDS if field in row})
    return record


def server_role_vars(row: Mapping[str, Any]) -> dict[str, Any]:
    """The role inputs that let site.yml converge a server the platform created at run time."""
    role_vars = {"postgres_server_port": row["port"], "postgres_server_listen_addresses": row["host"]}
    if row.get("pgbouncer_port") is not None:
        role_vars["pgbouncer_listen_port"] = row["pgbouncer_port"]
        role_vars["pgbouncer_listen_address"] = row["pgbouncer_host"]
    return role_vars


def tenant_record(row: Mapping[str, Any]) -> dict[str, Any]:
    record = {field: row.get(field) for field in TENANT_FIELDS}
    record["quotas"] = record["quotas"] or {}
    record["extra_modules"] = record["extra_modules"] or []
    return record


def tenant_groups(row: Mapping[str, Any]) -> list[str]:
    groups = [TENANTS_GROUP, sanitize_group_name(f"plan_{row['plan']}")]
    if row.get("db_server"):
        groups.append(sanitize_group_name(f"pool_{row['db_server']}"))
    groups.append(sanitize_group_name(f"status_{row['status']}"))
    return groups


def _set_vars(inventory: InventoryLike, host: str, variables: Mapping[str, Any]) -> None:
    for name, value in variables.items():
        inventory.set_variable(host, name, make_unsafe(value))


def add_server(inventory: InventoryLike, row: Mapping[str, Any]) -> str:
    name = row["name"]
    group = SERVER_GROUPS[row["kind"]]
    # Same tree as the static inventories, so group_vars of postgres_servers apply to new servers too.
    inventory.add_group(SERVERS_PARENT_GROUP)
    inventory.add_group(group)
    inventory.add_child(SERVERS_PARENT_GROUP, group)
    # A declared server keeps what the inventory says about it: the plugin's host vars would outrank
    # group_vars, and site.yml would then write the registry's own values back into the registry.
    # Whether it runs under Patroni too (its ha, the group's vars): the inventory's say for a declared one.
    declared = inventory.get_host(name) is not None
    inventory.add_host(name, group=group)
    if not declared:
        if row.get("ha", "none") != "none":
            inventory.add_group(HA_SERVERS_GROUP)
            inventory.add_child(SERVERS_PARENT_GROUP, HA_SERVERS_GROUP)
            inventory.add_host(name, group=HA_SERVERS_GROUP)
        _set_vars(inventory, name, {**server_role_vars(row), "saasodoo_server_ha": row.get("ha", "none")})
    _set_vars(inventory, name, {"saasodoo_registry_db_server": server_record(row)})
    return name


def add_tenant(inventory: InventoryLike, row: Mapping[str, Any]) -> str:
    name = tenant_host_name(row["tenant_id"])
    for group in tenant_groups(row):
        inventory.add_group(group)
        inventory.add_host(name, group=group)
    _set_vars(inventory, name, {"saasodoo_tenant": tenant_record(row), "saasodoo_tenant_last_run": row.get("last_run")})
    return name


def add_fleet(
    inventory: InventoryLike, servers: list[Mapping[str, Any]], tenants: list[Mapping[str, Any]]
) -> list[str]:
    """Add the registry's servers and tenants to `inventory`; returns the host names, servers first."""
    return [add_server(inventory, row) for row in servers] + [add_tenant(inventory, row) for row in tenants]


# ---- Configuration and the registry ---------------------------------------------------------------------


def resolve_secret_path(secret_file: str, config_path: str) -> str:
    path = os.path.expanduser(secret_file)
    if not os.path.isabs(path):
        path = os.path.join(os.path.dirname(os.path.abspath(config_path)), path)
    return os.path.normpath(path)


def resolve_password(password: str | None, secret_file: str | None, config_path: str, database: str) -> str:
    """The registry owner's password: given, or derived from the platform secret as the platform derives it."""
    if password:
        return password
    if not secret_file:
        raise RegistryError(
            "no password: set SAASODOO_REGISTRY_PASSWORD (or registry_password), or platform_secret_file to derive it"
        )
    path = resolve_secret_path(secret_file, config_path)
    try:
        with open(path, encoding="utf-8") as secret:
            platform_secret = secret.read().strip()
    except FileNotFoundError:
        raise RegistryError(
            f"the platform secret {path} does not exist yet: run playbooks/site.yml first (it creates it)"
        ) from None
    except OSError as e:
        raise RegistryError(f"cannot read the platform secret {path}: {e.strerror}") from None
    try:
        return derive_password(platform_secret, f"registry@{database}")
    except WeakSecretError as e:
        raise RegistryError(f"cannot derive the registry password from {path}: {e}") from None


def fetch_fleet(settings: RegistrySettings, tenants: bool = True) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Read the non-retired servers and (unless `tenants` is false) the non-purged tenants, read-only, in one
    snapshot."""
    if psycopg is None:
        raise RegistryError(f"the psycopg package (3.1 or later) is needed on the controller: {PSYCOPG_IMPORT_ERROR}")
    name = "saasodoo.platform.registry inventory"
    try:
        with connect_registry(settings.login(), application_name=name, read_only=True) as conn:
            if not conn.execute(_SCHEMA_QUERY).fetchone()[0]:
                raise RegistryError(
                    f"the registry at {settings.where} has no schema yet (fresh install): run playbooks/site.yml first"
                )
            servers, tenant_rows = conn.execute(_FLEET_QUERY, {"tenants": tenants}).fetchone()
    except RegistryUnreachable as e:
        raise RegistryError(f"{e}; until then this source adds no hosts") from None
    except psycopg.Error as e:  # its reason carries libpq's: chained, Ansible would print it twice
        raise RegistryError(
            f"cannot read the platform registry at {settings.where}: {first_line(e, settings.password)}"
        ) from None
    return servers, tenant_rows


class InventoryModule(BaseInventoryPlugin, Constructable):
    NAME = "saasodoo.platform.registry"

    def verify_file(self, path: str) -> bool:
        return super().verify_file(path) and path.endswith(("registry.yml", "registry.yaml"))

    def parse(self, inventory: Any, loader: Any, path: str, cache: bool = True) -> None:
        super().parse(inventory, loader, path, cache)
        self._read_config_data(path)
        try:
            settings = self._settings(path)
            servers, tenants = fetch_fleet(settings, tenants=self.get_option("tenants"))
        except RegistryError as e:
            raise AnsibleParserError(f"{self.NAME}: {e}") from e
        self.display.vvv(f"{self.NAME}: {len(servers)} servers, {len(tenants)} tenants from {settings.where}")
        for host in add_fleet(self.inventory, servers, tenants):
            self._construct(host)

    def registry_settings(self, loader: Any, path: str) -> RegistrySettings:
        """The registry a configuration file of this plugin names, with its password (the audit callback's too)."""
        self.loader = loader
        self._read_config_data(path)
        return self._settings(path)

    def _settings(self, path: str) -> RegistrySettings:
        settings = RegistrySettings(
            host=self.get_option("registry_host"),
            port=self.get_option("registry_port"),
            database=self.get_option("registry_database"),
            user=self.get_option("registry_user"),
            password="",
            connect_timeout=self.get_option("connect_timeout"),
            sslmode=self.get_option("registry_sslmode"),
            sslrootcert=resolve_secret_path(self.get_option("registry_sslrootcert"), path)
            if self.get_option("registry_sslrootcert")
            else None,
        )
        try:
            password = resolve_password(
                self.get_option("registry_password"), self.get_option("platform_secret_file"), path, settings.database
            )
        except RegistryError as e:
            raise RegistryError(f"cannot log in to the platform registry at {settings.where}: {e}") from None
        return dataclasses.replace(settings, password=password)

    def _construct(self, host: str) -> None:
        """The constructed features (compose, groups, keyed_groups) the configuration asks for."""
        strict = self.get_option("strict")
        variables = self.inventory.get_host(host).get_vars()
        self._set_composite_vars(self.get_option("compose"), variables, host, strict=strict)
        self._add_host_to_composed_groups(self.get_option("groups"), variables, host, strict=strict)
        self._add_host_to_keyed_groups(self.get_option("keyed_groups"), variables, host, strict=strict)
