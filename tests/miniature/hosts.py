"""The production shape in miniature: a few hosts on this machine, each a network namespace with its own address
on a private bridge, its own mount namespace and its own real sshd.

    python tests/miniature/hosts.py up     # bring the hosts up (again), print their addresses
    python tests/miniature/hosts.py down   # stop everything in them and remove them

What makes them hosts rather than directories:
- Each has its own network: the controller (this machine's root namespace, 10.77.4.1 on the bridge) reaches a host
  only at its address, over TCP; a PostgreSQL listening there is not on the controller's loopback.
- Each has its own /etc/postgresql, /var/lib/postgresql, /var/log/postgresql, /etc/saasodoo and /var/lib/saasodoo
  (bind mounts of its directory under .state/miniature/hosts/<host>/) and its own empty /run/postgresql: a server's
  Unix socket cannot be reached from another host or from the controller, so anything that works here works over
  TCP. /var/backups/saasodoo is the one directory all of them share, as a backup store mounted on every host is.
- Ansible reaches each over SSH (`ansible_host` its address), with host key checking on: the host keys are made
  here and written to the known_hosts file the inventory names. The machine's control groups are mounted in each,
  as a host has its own. Processes a task starts (PostgreSQL, PgBouncer,
  supervisord, nginx) stay in the host's namespaces, as they would on a machine of their own.
The programs are the machine's own (Debian's postgresql-15, pgbouncer, supervisor, nginx, openssh-server).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
STATE = REPO / ".state/miniature"
SSH_DIR = STATE / "ssh"
KEY = SSH_DIR / "id_ed25519"
KNOWN_HOSTS = SSH_DIR / "known_hosts"
BRIDGE = "saasodoo-mini"
CONTROLLER_ADDRESS = "10.77.4.1"
PREFIX_LENGTH = 16
SSHD = "/usr/sbin/sshd"
SSHD_DIR = "/run/saasodoo-sshd"  # in each host, its sshd's configuration, keys and pid file


@dataclass(frozen=True)
class Host:
    name: str
    address: str

    @property
    def namespace(self) -> str:
        return f"mini-{self.name}"

    @property
    def veth(self) -> str:  # interface names are at most 15 characters
        return f"mini{self.address.split('.', 2)[2].replace('.', 'x')}"

    @property
    def dir(self) -> Path:
        return STATE / "hosts" / self.name


# The names and addresses tests/miniature/inventory/hosts.yml gives them (a test keeps the two in step).
HOSTS = (
    Host("platform-db-01", "10.77.1.10"),
    Host("pool-shared-01", "10.77.1.11"),
    Host("pool-shared-02", "10.77.1.12"),
    Host("pool-dedicated", "10.77.2.100"),
    Host("odoo-node-01", "10.77.3.10"),
)
# Each host's own copy of these (the paths a Debian PostgreSQL, PgBouncer and the platform's roles use).
PRIVATE_DIRS = ("etc/postgresql", "var/lib/postgresql", "var/log/postgresql", "etc/saasodoo", "var/lib/saasodoo")
PRIVATE_TMPFS = ("run/postgresql",)
SHARED_DIRS = {"var/backups/saasodoo": STATE / "shared/backups"}
# The hosts' runtime directory (inventory/group_vars/odoo_hosts/odoo_runtime.yml), whose hash names its tenants'
# control groups on this machine (module_utils/tenant_network.py runtime_scope_id).
RUNTIME_SCOPE = hashlib.sha256(b"/var/lib/saasodoo/runtime").hexdigest()[:8]
CGROUP_DIRS = ("/sys/fs/cgroup/saasodoo", "/sys/fs/cgroup/cpu/saasodoo", "/sys/fs/cgroup/memory/saasodoo")


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check)


def host_script(host: Host) -> str:
    """What runs in the host's fresh mount namespace: its own directories mounted, then its sshd."""
    q = shlex.quote
    lines = ["set -e", "mount --make-rprivate /"]
    for path in PRIVATE_DIRS:
        source = host.dir / "root" / path
        lines.append(f"mkdir -p /{path} {q(str(source))} && mount --bind {q(str(source))} /{path}")
    for path in PRIVATE_TMPFS:
        lines.append(f"mkdir -p /{path} && mount -t tmpfs -o mode=2775 tmpfs /{path}")
        lines.append(f"chown postgres:postgres /{path}")
    for path, source in SHARED_DIRS.items():
        lines.append(f"mkdir -p /{path} {q(str(source))} && mount --bind {q(str(source))} /{path}")
    # Without this machine's systemd: pg_ctlcluster would hand a start to systemctl, which starts the cluster of
    # this machine, not the host's.
    lines.append("if [ -d /run/systemd ]; then mount -t tmpfs tmpfs /run/systemd; fi")
    lines.append(f"mkdir -p /run/sshd {SSHD_DIR} && mount --bind {q(str(host.dir / 'sshd'))} {SSHD_DIR}")
    # `ip netns exec` gave the host a sysfs of its own, without the machine's control groups: mounted again, the
    # machine's own hierarchies, as a host has them (the tenants' CPU and memory ceilings, odoo_runtime_limits).
    lines.extend(cgroup_mounts())
    # Last: the controller's state (platform secret, CA key, SSH key) and the other hosts' disks are out of sight.
    lines.append(f"mount -t tmpfs -o mode=0755 tmpfs {q(str(REPO / '.state'))}")
    lines.append(f"exec {SSHD} -f {SSHD_DIR}/sshd_config")
    return "\n".join(lines)


def cgroup_mounts() -> list[str]:
    """Commands mounting this machine's cpu and memory control groups again as the machine has them: the unified
    hierarchy, or each v1 hierarchy with the controllers mounted together there (cpu,cpuacct on many hosts)."""
    mounts = [line.split() for line in Path("/proc/self/mounts").read_text().splitlines()]
    if any(fs == "cgroup2" and target == "/sys/fs/cgroup" for _, target, fs, *_ in mounts):
        return ["mount -t cgroup2 cgroup2 /sys/fs/cgroup"]
    commands = []
    for _, target, fs, options, *_ in mounts:
        controllers = [o for o in options.split(",") if o in ("cpu", "cpuacct", "memory")]
        if fs == "cgroup" and target.startswith("/sys/fs/cgroup/") and {"cpu", "memory"} & set(controllers):
            commands.append(f"mkdir -p {target} && mount -t cgroup -o {','.join(controllers)} cgroup {target}")
    links = [  # cpu -> cpu,cpuacct where they are mounted together
        f"ln -s {os.readlink(path)} {path}"
        for path in (os.path.join("/sys/fs/cgroup", name) for name in ("cpu", "cpuacct", "memory"))
        if os.path.islink(path)
    ]
    return ["mount -t tmpfs -o mode=0755 cgroup /sys/fs/cgroup", *commands, *links] if commands else []


def sshd_config(host: Host) -> str:
    return "\n".join(
        [
            f"ListenAddress {host.address}",
            f"HostKey {SSHD_DIR}/ssh_host_ed25519_key",
            f"PidFile {SSHD_DIR}/sshd.pid",
            f"AuthorizedKeysFile {SSHD_DIR}/authorized_keys",
            "PermitRootLogin prohibit-password",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "Subsystem sftp /usr/lib/openssh/sftp-server",
            "",
        ]
    )


def up() -> None:
    if os.geteuid() != 0:
        sys.exit("the miniature's hosts need root (network and mount namespaces)")
    if not Path(SSHD).exists():
        sys.exit(f"{SSHD} not found: install openssh-server (make setup does)")
    down()
    shutil.rmtree(STATE, ignore_errors=True)  # every bring-up starts from empty hosts
    SSH_DIR.mkdir(parents=True, exist_ok=True)
    if not KEY.exists():
        run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "saasodoo-miniature-controller", "-f", str(KEY))
    (SSH_DIR / "authorized_keys").write_text(KEY.with_suffix(".pub").read_text())
    run("ip", "link", "add", BRIDGE, "type", "bridge")
    run("ip", "addr", "add", f"{CONTROLLER_ADDRESS}/{PREFIX_LENGTH}", "dev", BRIDGE)
    run("ip", "link", "set", BRIDGE, "up")
    known_hosts = []
    for host in HOSTS:
        (host.dir / "sshd").mkdir(parents=True, exist_ok=True)
        host_key = host.dir / "sshd/ssh_host_ed25519_key"
        if not host_key.exists():
            run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", host.name, "-f", str(host_key))
        key_type, public_key = host_key.with_suffix(".pub").read_text().split()[:2]
        known_hosts.append(f"{host.address} {key_type} {public_key}")
        (host.dir / "sshd/sshd_config").write_text(sshd_config(host))
        shutil.copy(SSH_DIR / "authorized_keys", host.dir / "sshd/authorized_keys")
        run("ip", "netns", "add", host.namespace)
        run("ip", "link", "add", host.veth, "type", "veth", "peer", "name", "eth0", "netns", host.namespace)
        run("ip", "link", "set", host.veth, "master", BRIDGE, "up")
        in_host = ("ip", "netns", "exec", host.namespace)
        run(*in_host, "ip", "addr", "add", f"{host.address}/{PREFIX_LENGTH}", "dev", "eth0")
        run(*in_host, "ip", "link", "set", "eth0", "up")
        run(*in_host, "ip", "link", "set", "lo", "up")
        run(*in_host, "unshare", "--mount", "--", "sh", "-c", host_script(host))
    KNOWN_HOSTS.write_text("\n".join(known_hosts) + "\n")
    for host in HOSTS:
        wait_for_ssh(host)
        print(f"{host.name:16} {host.address}")


def wait_for_ssh(host: Host, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        probe = run(*ssh_command(host), "true", check=False)
        if probe.returncode == 0:
            return
        if time.monotonic() > deadline:
            sys.exit(f"{host.name} ({host.address}) did not accept SSH: {probe.stderr.strip()}")
        time.sleep(0.2)


def ssh_command(host: Host) -> list[str]:
    """ssh to the host as Ansible does: the controller's key, host key checked against the known_hosts file."""
    return [
        "ssh",
        "-i",
        str(KEY),
        "-o",
        f"UserKnownHostsFile={KNOWN_HOSTS}",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "BatchMode=yes",
        "-o",
        "ConnectTimeout=5",
        f"root@{host.address}",
    ]


def host_pids(namespace: str) -> list[int]:
    """The processes of a host: those in its network namespace, those in the mount namespace its own have (the
    tenants' Odoo, each in a network namespace of its own, that a host's runtime made), and their descendants (a
    tenant's Odoo in mount and IPC namespaces of its own too: its private temporary directories)."""
    pids = {int(pid) for pid in run("ip", "netns", "pids", namespace, check=False).stdout.split()}
    ours = os.readlink("/proc/self/ns/mnt")
    mounts = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            mounts.add(os.readlink(f"/proc/{pid}/ns/mnt"))
    mounts.discard(ours)
    parents = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/ns/mnt") in mounts:
                pids.add(int(pid))
            # /proc/<pid>/stat: pid (comm) state ppid ...; comm may hold spaces and parentheses.
            parents[int(pid)] = int(Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[1])
    while children := {pid for pid, parent in parents.items() if parent in pids and pid not in pids}:
        pids |= children
    return sorted(pids)


def kill_everything_in(namespace: str, seconds: float = 10.0) -> None:
    """SIGKILL every process of the host (host_pids). A parent may fork a replacement for a child killed before it
    (nginx's master respawns its workers): each round stops them all, then kills them, until none is left."""
    deadline = time.monotonic() + seconds
    while pids := host_pids(namespace):
        if time.monotonic() > deadline:
            print(f"hosts.py down: {pids} in {namespace} outlived SIGKILL for {seconds:.0f} s", file=sys.stderr)
            return
        for sig in (signal.SIGSTOP, signal.SIGKILL):
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):  # gone meanwhile
                    os.kill(pid, sig)


def down() -> None:
    if not shutil.which("ip"):  # no iproute2: no namespace was ever made here
        return
    present = set(run("ip", "netns", "list").stdout.split())
    for host in HOSTS:
        if host.namespace in present:
            kill_everything_in(host.namespace)
            run("ip", "netns", "del", host.namespace, check=False)
        run("ip", "link", "del", host.veth, check=False)
    run("ip", "link", "del", BRIDGE, check=False)
    # The names of the tenants' network namespaces a host's runtime made in its mount namespace: mounted there only,
    # plain files here, stale once it is gone (odoo_process makes them again where one stands).
    for stale in Path("/run/netns").glob("saasodoo-*"):
        if not os.path.ismount(stale):
            stale.unlink(missing_ok=True)
    # The hosts' tenants' control groups, empty now (the machine's: the hosts mount its hierarchies).
    for group in (g for parent in CGROUP_DIRS for g in Path(parent).glob(f"{RUNTIME_SCOPE}-*")):
        with contextlib.suppress(OSError):
            group.rmdir()
    # The hosts' disks go with them: no pid file outlives its process for down.yml to find.
    shutil.rmtree(STATE / "hosts", ignore_errors=True)
    shutil.rmtree(STATE / "shared", ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["up", "down"])
    args = parser.parse_args()
    up() if args.action == "up" else down()


if __name__ == "__main__":
    main()
