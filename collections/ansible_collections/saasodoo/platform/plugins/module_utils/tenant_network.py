"""Each process-runtime tenant's own network namespace: where its Odoo listens, reached by nginx over a veth pair.

Every tenant shares the host's loopback otherwise, where any OS user may bind any free port: another tenant's user
could take a tenant's HTTP or websocket port while it restarts and receive its customers' requests, session cookies
included. In a namespace of its own, only the tenant's processes can listen on its address. Names and addresses
derive from the tenant's HTTP port, which the platform hands out (never from its id, which the customer chooses)."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import subprocess

# RFC 6598 shared address space, private to the host: a /30 per port (host end .1, tenant end .2).
NETWORK = ipaddress.IPv4Network("100.64.0.0/10")
MAX_PORT = 65535
IP = "/sbin/ip"  # iproute2's, where Debian puts it


def runtime_scope_id(scope: str) -> str:
    """Tells apart the runtimes of one machine in names that are machine-wide (a namespace, a control group)."""
    return hashlib.sha256(scope.encode()).hexdigest()[:8]


def tenant_network(http_port: int, scope: str) -> dict:
    """The namespace, veth pair and addresses of the tenant whose Odoo has `http_port`. `scope` (its runtime's
    directory) tells apart the runtimes of one machine: namespaces are named machine-wide, and two runtimes on one
    network (the local platform and a molecule scenario) already have ports apart."""
    port = int(http_port)
    if not 0 < port <= MAX_PORT:
        raise ValueError(f"{http_port!r} is not a TCP port: a tenant's network needs its HTTP port")
    base = NETWORK.network_address + 4 * port
    scope_id = runtime_scope_id(scope)
    return {
        "namespace": f"saasodoo-{scope_id}-{port}",
        "host_interface": f"sod{port}h",  # 15 bytes at most (IFNAMSIZ)
        "tenant_interface": f"sod{port}t",
        "host_address": str(base + 1),
        "tenant_address": str(base + 2),
        "prefix": 30,
    }


def ensure_namespace(name: str) -> bool:
    """The network namespace `name` exists and can be entered; whether it had to be made. A name whose mount is gone
    (made inside a mount namespace that ended: a host of tests/miniature) is a stale file, deleted and made again."""
    if subprocess.run([IP, "-n", name, "link", "show", "lo"], capture_output=True, check=False).returncode == 0:
        return False
    subprocess.run([IP, "netns", "delete", name], capture_output=True, check=False)
    made = subprocess.run([IP, "netns", "add", name], capture_output=True, text=True, check=False)
    if made.returncode != 0:
        raise OSError(f"ip netns add {name} failed: {made.stderr.strip()}")
    return True


def _ip(*args: str, check: bool = True) -> str:
    run = subprocess.run([IP, *args], capture_output=True, text=True, check=False)
    if run.returncode != 0 and check:
        raise OSError(f"ip {' '.join(args)} failed: {run.stderr.strip()}")
    return run.stdout


def network_ready(network: dict) -> bool:
    """Whether `network` (tenant_network's) is there: the namespace, both ends of the pair up and addressed, its
    loopback up."""
    if not os.path.exists(f"/run/netns/{network['namespace']}"):
        return False

    def up_with(links: list, name: str, address: str | None) -> bool:
        return any(
            link.get("ifname") == name and "UP" in link.get("flags", [])
            and (address is None or any(a.get("local") == address for a in link.get("addr_info", [])))
            for link in links
        )  # fmt: skip

    host = json.loads(_ip("-j", "addr", "show", "dev", network["host_interface"], check=False) or "[]")
    inside = json.loads(_ip("-n", network["namespace"], "-j", "addr", "show", check=False) or "[]")
    return (up_with(host, network["host_interface"], network["host_address"]) and up_with(inside, "lo", None)
            and up_with(inside, network["tenant_interface"], network["tenant_address"]))  # fmt: skip


def make_network(network: dict) -> None:
    """`network` made whole: the namespace, the veth pair between it and the host, addresses, links up."""
    ns, host, tenant = network["namespace"], network["host_interface"], network["tenant_interface"]
    ensure_namespace(ns)
    _ip("link", "del", host, check=False)  # half made by a run cut short: made again
    # Where a tenant's link is missing (a host rebooted, its namespaces gone), its address is unreachable: never
    # sent on by the default route, with its customers' requests, to whatever holds that range outside.
    _ip("route", "replace", "unreachable", str(NETWORK))
    _ip("link", "add", host, "type", "veth", "peer", "name", tenant, "netns", ns)
    _ip("addr", "add", f"{network['host_address']}/{network['prefix']}", "dev", host)
    _ip("link", "set", host, "up")
    _ip("-n", ns, "addr", "add", f"{network['tenant_address']}/{network['prefix']}", "dev", tenant)
    _ip("-n", ns, "link", "set", tenant, "up")
    _ip("-n", ns, "link", "set", "lo", "up")


def remove_network(network: dict) -> None:
    """The namespace and its pair gone. The kernel cleans a deleted namespace up later, its end of the pair with it:
    the host's end is deleted first (taking the other), so a tenant given this port next finds the name free."""
    _ip("link", "del", network["host_interface"], check=False)
    _ip("netns", "del", network["namespace"])
