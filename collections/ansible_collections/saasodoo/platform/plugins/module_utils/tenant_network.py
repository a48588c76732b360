"""Each process-runtime tenant's own network namespace: where its Odoo listens, reached by nginx over a veth pair.

Every tenant shares the host's loopback otherwise, where any OS user may bind any free port: another tenant's user
could take a tenant's HTTP or websocket port while it restarts and receive its customers' requests, session cookies
included. In a namespace of its own, only the tenant's processes can listen on its address. Names and addresses
derive from the tenant's HTTP port, which the platform hands out (never from its id, which the customer chooses)."""

from __future__ import annotations

import hashlib
import ipaddress
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
