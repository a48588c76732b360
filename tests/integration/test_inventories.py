"""Both inventories parse, hold the groups the design names, and every playbook passes --syntax-check."""

from __future__ import annotations

import ipaddress

import pytest
import yaml

from .conftest import inventory_hosts, run_ansible_tool
from conftest import REPO

INVENTORIES = ["inventories/local", "inventories/production.example"]
PLAYBOOKS = sorted(p.name for p in (REPO / "playbooks").glob("*.yml"))


@pytest.mark.parametrize("inventory", INVENTORIES)
def test_inventory_lists_the_platform_groups(inventory):
    hostvars, groups = inventory_hosts(inventory)
    assert groups["platform"], inventory
    assert groups["pools_shared"], inventory
    assert all("saasodoo_db_server" in hostvars[h] for h in groups["pools_shared"])


def test_production_example_is_a_real_fleet():
    _, groups = inventory_hosts("inventories/production.example")
    assert len(groups["pools_shared"]) >= 3
    assert groups["pools_dedicated"] and groups["k8s_cluster"] and groups["webhook_runner"]


@pytest.mark.parametrize("inventory", INVENTORIES)
def test_every_playbook_passes_syntax_check(inventory):
    # One ansible-playbook for all of them (it names the one that fails): a start-up each cost 40 s of CPU.
    run_ansible_tool("ansible-playbook", "-i", inventory, "--syntax-check", *(f"playbooks/{p}" for p in PLAYBOOKS))


def test_graph_shows_the_pools():
    graph = run_ansible_tool("ansible-inventory", "-i", "inventories/local", "--graph")
    assert "@pools_shared:" in graph and "pool-shared-01" in graph


def test_the_production_ceph_cluster_is_three_monitors_and_size_three_pools():
    """roles/ceph_cluster's hosts mode (not run here: it needs block devices and systemd) accepts the production
    example's inputs and writes a ceph.conf naming its three monitors by address."""
    output = run_ansible_tool(
        "ansible-playbook",
        "-i",
        "inventories/production.example/hosts.yml",
        "tests/integration/playbooks/ceph_conf.yml",
    )
    conf = {line.split(" = ")[0].strip(): line.split(" = ", 1)[1] for line in output.splitlines() if " = " in line}
    addresses = ",".join(f"[v2:10.20.3.1{n}:3300,v1:10.20.3.1{n}:6789]" for n in (1, 2, 3))
    assert conf["mon host"] == addresses, output
    assert conf["mon initial members"] == "ceph-mon-01,ceph-mon-02,ceph-mon-03", output
    assert conf["public network"] == "10.20.3.0/24", output
    assert (conf["osd pool default size"], conf["osd pool default min size"]) == ("3", "2"), output


def test_the_production_monitoring_scrapes_every_machines_exporters_at_its_private_address():
    """production.example: every server's exporter and its host's node exporter run beside it, on its private
    address (all servers listen on 5432: their exporters could not share the monitoring host); the monitoring host
    lists the other machines' node exporters (runners, Ceph hosts), and neither itself nor the Kubernetes API, which
    is not a machine of ours."""
    output = run_ansible_tool(
        "ansible", "-i", "inventories/production.example", "monitoring", "-m", "ansible.builtin.debug", "-a",
        "msg={{ {'listed': monitoring_node_hosts, 'groups': groups, 'servers': dict(groups.postgres_servers"
        " | zip(groups.postgres_servers | map('extract', hostvars) | map('dict2items')"
        " | map('selectattr', 'key', 'match', '^(postgres_server_listen_addresses|monitoring_.*_exporter_address)$')"
        " | map('items2dict')))} }}",
    )  # fmt: skip
    (monitor, reply) = output.split(" | SUCCESS =>")
    found = yaml.safe_load(reply)["msg"]  # the stdout callback's YAML
    listed, groups = found["listed"], found["groups"]
    assert set(listed) == set(groups["webhook_runner"]) | set(groups["ceph"]), listed
    assert monitor not in listed and "kubernetes-api" not in listed
    assert all(ipaddress.ip_address(address) in ipaddress.ip_network("10.20.0.0/16") for address in listed.values())
    assert len(found["servers"]) >= 5, found["servers"]
    for server, addresses in found["servers"].items():
        private = addresses.pop("postgres_server_listen_addresses")
        assert addresses == {"monitoring_postgres_exporter_address": private,
                             "monitoring_node_exporter_address": private}, server  # fmt: skip
