"""tests/miniature/inventory stays the shape of inventories/production.example, which it stands for in the tests."""

from __future__ import annotations

import importlib.util
import ipaddress
import sys

import pytest

from conftest import INVENTORIES, REPO, load_yaml

PRODUCTION = INVENTORIES / "production.example"
MINIATURE = REPO / "tests/miniature/inventory"


def hba_shape(inventory, group: str) -> list[tuple[str, str, str, str, str]]:
    """A group's pg_hba lines: who may log in to what, from where (the same variables), how, in which order."""
    variables = {}
    for path in sorted((inventory / "group_vars" / group).glob("*.yml")):
        variables |= load_yaml(path) or {}
    entries = variables.get("postgres_server_hba_entries", []) + variables.get("postgres_server_group_hba_entries", [])
    return [(e["type"], e["database"], e["user"], e["address"], e["method"]) for e in entries]


@pytest.mark.parametrize("group", ["postgres_servers", "platform", "pools_shared", "pools_dedicated"])
def test_the_miniature_admits_whom_production_admits(group):
    assert hba_shape(MINIATURE, group) == hba_shape(PRODUCTION, group)


@pytest.mark.parametrize(
    "path",
    [
        "group_vars/all/platform.yml",
        "group_vars/all/placement.yml",
        "group_vars/platform/platform_registry.yml",
        "group_vars/postgres_servers/postgres_server.yml",
        "group_vars/postgres_servers/odoo_template.yml",
        "group_vars/pools_shared/pgbouncer.yml",
        "group_vars/pools_shared/pool.yml",
        "group_vars/pools_dedicated/pool.yml",
        "group_vars/tenants/connection.yml",
    ],
)
def test_the_miniature_sets_what_production_sets(path):
    """Each file production has for the servers and the platform, the miniature has with the same variables, but
    for production's secrets from the vault, sudo, and sizing the miniature leaves at the roles' defaults; and the
    miniature's own builder user and range of tenants' OS ids (its hosts share this machine's users with the local
    platform)."""
    production, miniature = (set(load_yaml(inventory / path)) for inventory in (PRODUCTION, MINIATURE))
    production_only = {"ansible_become", "ansible_become_method", "postgres_server_settings"}
    miniature_only = {"ansible_ssh_private_key_file", "ansible_ssh_common_args", "saasodoo_miniature_dir",
                      "postgres_server_bin_dir", "odoo_template_builder_user",
                      "platform_registry_tenant_os_ids_from"}  # fmt: skip
    assert production - production_only - miniature == set()
    assert miniature - miniature_only - production == set()


def test_the_bring_up_makes_the_hosts_the_inventory_names():
    spec = importlib.util.spec_from_file_location("miniature_hosts", REPO / "tests/miniature/hosts.py")
    hosts = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = hosts  # its dataclasses look their module up
    spec.loader.exec_module(hosts)
    inventory = load_yaml(MINIATURE / "hosts.yml")
    declared = {}
    for group in inventory["all"]["children"].values():
        for child in group.get("children", {"": group}).values():
            declared |= {name: body["ansible_host"] for name, body in (child.get("hosts") or {}).items()}
    placement = load_yaml(MINIATURE / "group_vars/all/placement.yml")
    (dedicated_host,) = placement["saasodoo_dedicated_servers"]["hosts"]
    declared["pool-dedicated"] = dedicated_host["address"]
    assert {host.name: host.address for host in hosts.HOSTS} == declared
    # The networks the pg_hba lines name are the ones the hosts are on.
    platform = load_yaml(MINIATURE / "group_vars/all/platform.yml")
    private = ipaddress.ip_network(platform["saasodoo_private_network_cidr"])
    assert all(ipaddress.ip_address(host.address) in private for host in hosts.HOSTS)
    assert ipaddress.ip_address(hosts.CONTROLLER_ADDRESS) in ipaddress.ip_network(
        platform["saasodoo_controller_network_cidr"]
    )
    assert platform["saasodoo_platform_host_cidr"] == f"{declared[platform['saasodoo_registry_host']]}/32"


def test_the_platform_host_is_the_registrys_host_in_both():
    """The address the pools' admin login and the registry admit for the platform's plays is the registry host's."""
    for inventory in (PRODUCTION, MINIATURE):
        platform = load_yaml(inventory / "group_vars/all/platform.yml")
        registry_host = platform["saasodoo_registry_host"]
        listen = load_yaml(inventory / f"host_vars/{registry_host}.yml")["postgres_server_listen_addresses"]
        assert platform["saasodoo_platform_host_cidr"] == f"{listen}/32", inventory
