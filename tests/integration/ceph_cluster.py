"""A real single-node Ceph cluster with CephFS, for tests: mon, mgr, memstore OSD and MDS on 127.0.0.1.

The bring-up follows Ceph's manual deployment, as measured in reference/feasibility-ceph.md: every
daemon runs in the foreground (`-f`: a self-daemonized ceph-mgr has no usable stderr), detached in its
own session, its output in `<base>/log/`; cephx is on; everything (conf, keyrings, daemon data, admin
sockets, logs, mount points) lives under one base directory, `.state/ceph` in this checkout by default.
The admin's ceph-fuse mount of the CephFS root is `<base>/mnt`.

Teardown is SIGKILL, on purpose: a graceful stop takes 5-10 s (the MDS and OSD shutdown waits) against
0.1 s, and nothing in the base directory needs to survive. Every process this module starts is given
`--conf <base>/ceph.conf`, which is how teardown finds them again, even after the run that started them
was killed; mounts for other clients belong under `mount_point()`, so teardown unmounts them too.

Ports are fixed (3300 and 6789 for the mon, 6800+ for the others): one cluster per machine.

    python tests/integration/ceph_cluster.py up [basedir]     # tears down a leftover cluster first
    python tests/integration/ceph_cluster.py down [basedir]

Only the standard library is needed, so the command line runs from any Python 3.11; the `ceph_cluster`
pytest fixture is defined when pytest is importable.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

try:
    import pytest
except ModuleNotFoundError:  # the command line needs no pytest
    pytest = None  # type: ignore[assignment]

REPO = Path(__file__).resolve().parents[2]
DEFAULT_BASE = REPO / ".state/ceph"
FS_NAME = "cephfs"
MON_PORTS = (3300, 6789)
MEMSTORE_DEVICE_BYTES = 4 * 1024**3  # memstore keeps only what is written in RAM
# sun_path is 108 bytes with its terminating NUL. The longest socket is a client's:
# run/client.<name>.<pid>.asok; leave room for a 32-character client name and a 7-digit pid.
SOCKET_PATH_MAX = 107
CLIENT_NAME_ROOM = 32
READY_TIMEOUT = 60.0
POLL_INTERVAL = 0.2
CEPH_TIMEOUT = 30.0
CEPH_FUSE_TYPE = "fuse.ceph-fuse"

CONF_TEMPLATE = """\
[global]
fsid = {fsid}
mon host = v2:127.0.0.1:{mon_v2},v1:127.0.0.1:{mon_v1}
mon initial members = a
public addr = 127.0.0.1
cluster addr = 127.0.0.1
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
run dir = {base}/run
admin socket = {base}/run/$name.asok
pid file = {base}/run/$name.pid
log file = {base}/log/$name.log
crash dir = {base}/crash
osd pool default size = 1
osd pool default min size = 1
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon warn on insecure global id reclaim allowed = false
auth allow insecure global id reclaim = false
mon data avail warn = 2
mon data avail crit = 1
[mon]
mon data = {base}/mon/$id
mon cluster log file = {base}/log/$cluster.$channel.log
[mgr]
mgr data = {base}/mgr/$id
[osd]
osd data = {base}/osd/$id
osd objectstore = memstore
memstore device bytes = {memstore_bytes}
osd memory target = 939524096
osd crush update on start = true
osd crush initial weight = 1
[mds]
mds data = {base}/mds/$id
mds cache memory limit = 134217728
[client]
keyring = {base}/keyring
admin socket = {base}/run/$name.$pid.asok
pid file = {base}/run/$name.$pid.pid
client mount timeout = 30
"""


class CephClusterError(RuntimeError):
    """The cluster could not be brought up or torn down; the message says why and where to look."""


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return f"  ({path}: no such file)"
    return "\n".join(f"  {line}" for line in text) or f"  ({path}: empty)"


def _unescape_mount_path(field: str) -> str:
    # /proc/self/mountinfo escapes space, tab, newline and backslash as \ooo.
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mounts_below(directory: Path) -> list[tuple[Path, str]]:
    """Mount points at or below `directory` with their file system type, deepest first."""
    found = []
    prefix = str(directory).rstrip("/") + "/"
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        target = _unescape_mount_path(fields[4])
        fstype = fields[fields.index("-") + 1]
        if target == prefix[:-1] or target.startswith(prefix):
            found.append((Path(target), fstype))
    return sorted(found, key=lambda m: len(str(m[0])), reverse=True)


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (an exited child its parent, or PID 1, has not reaped yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def processes_using(conf: Path) -> list[int]:
    """Every live process started with `conf` as an argument: the cluster's daemons, ceph-fuse, CLIs."""
    wanted = os.fsencode(str(conf))
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if wanted in argv:
            pids.append(int(entry.name))
    return pids


def _wait_for(what: str, condition: Callable[[], bool], timeout: float, hint: Callable[[], str]) -> float:
    """Poll `condition` until it holds; raise with `hint()` once `timeout` seconds have passed."""
    start = time.monotonic()
    deadline = start + timeout
    while True:
        if condition():
            return time.monotonic() - start
        if time.monotonic() >= deadline:
            raise CephClusterError(f"{what}: not reached within {timeout:.0f} s.\n{hint()}")
        time.sleep(POLL_INTERVAL)


class CephCluster:
    """One single-node Ceph cluster with a CephFS, all of it under `base`."""

    def __init__(self, base: Path | str = DEFAULT_BASE, fs_name: str = FS_NAME, ready_timeout: float = READY_TIMEOUT):
        self.base = Path(base).absolute()
        self.fs_name = fs_name
        self.ready_timeout = ready_timeout
        self._daemons: dict[str, subprocess.Popen] = {}

    # Paths ------------------------------------------------------------------------------------

    @property
    def conf(self) -> Path:
        return self.base / "ceph.conf"

    @property
    def admin_keyring(self) -> Path:
        return self.base / "keyring"

    @property
    def mount(self) -> Path:
        """The admin's ceph-fuse mount of the CephFS root."""
        return self.base / "mnt"

    @property
    def run_dir(self) -> Path:
        return self.base / "run"

    @property
    def log_dir(self) -> Path:
        return self.base / "log"

    def mount_point(self, name: str) -> Path:
        """A directory for another client's mount; teardown unmounts everything below the base dir."""
        path = self.base / "mounts" / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def env(self) -> dict[str, str]:
        """The environment for Ceph tools run by hand against this cluster."""
        return {**os.environ, "CEPH_CONF": str(self.conf)}

    # Commands ---------------------------------------------------------------------------------

    def ceph(
        self, *args: str, stdin: str | None = None, check: bool = True, timeout: float = CEPH_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        """Run `ceph <args>` as client.admin; with check, a non-zero exit raises with its stderr."""
        argv = ["ceph", "--conf", str(self.conf), "--connect-timeout", str(int(timeout)), *args]
        try:
            result = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout + 5, check=False)
        except subprocess.TimeoutExpired as exc:
            raise CephClusterError(f"`ceph {' '.join(args)}` did not return within {timeout + 5:.0f} s") from exc
        if check and result.returncode != 0:
            raise CephClusterError(
                f"`ceph {' '.join(args)}` failed (exit {result.returncode}): {result.stderr.strip()}"
            )
        return result

    def ceph_json(self, *args: str) -> Any:
        return json.loads(self.ceph(*args, "--format", "json").stdout)

    def _tool(self, *argv: str) -> str:
        try:
            result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        except subprocess.TimeoutExpired as exc:
            raise CephClusterError(f"`{' '.join(argv)}` did not return within 60 s") from exc
        if result.returncode != 0:
            raise CephClusterError(
                f"`{' '.join(argv)}` failed (exit {result.returncode}):\n{result.stdout}{result.stderr}"
            )
        return result.stdout

    def _start(self, name: str, *argv: str) -> None:
        """Start a daemon in the foreground, detached in its own session, its output in log/<name>.stdout."""
        with open(self.log_dir / f"{name}.stdout", "ab") as log:
            self._daemons[name] = subprocess.Popen(
                [*argv, "--conf", str(self.conf), "-f"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _daemon_hint(self) -> str:
        parts = []
        for name, proc in self._daemons.items():
            state = "running" if proc.poll() is None else f"exited with {proc.returncode}"
            parts.append(f"{name} ({state}), {self.log_dir}/{name}.log:\n{_tail(self.log_dir / f'{name}.log')}")
            if proc.returncode is not None:
                parts.append(f"{self.log_dir}/{name}.stdout:\n{_tail(self.log_dir / f'{name}.stdout')}")
        return "\n".join(parts)

    def _check_daemons(self) -> None:
        dead = [name for name, proc in self._daemons.items() if proc.poll() is not None]
        if dead:
            raise CephClusterError(f"Ceph daemon(s) {', '.join(dead)} exited during bring-up.\n{self._daemon_hint()}")

    def _answers(self, *args: str) -> bool:
        self._check_daemons()
        return self.ceph(*args, check=False, timeout=5).returncode == 0

    # Bring-up ---------------------------------------------------------------------------------

    def _check_socket_paths(self) -> None:
        longest = self.run_dir / f"client.{'x' * CLIENT_NAME_ROOM}.4194304.asok"
        if len(os.fsencode(str(longest))) > SOCKET_PATH_MAX:
            room = SOCKET_PATH_MAX - (len(os.fsencode(str(longest))) - len(os.fsencode(str(self.base))))
            raise CephClusterError(
                f"The Ceph base dir {self.base} is too long for Unix socket paths: admin sockets such as "
                f"{longest} must stay within {SOCKET_PATH_MAX} bytes. Use a base dir of at most {room} bytes "
                "(or a checkout with a shorter path)."
            )

    def _check_ports_free(self) -> None:
        for port in MON_PORTS:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind(("127.0.0.1", port))
                except OSError as exc:
                    raise CephClusterError(
                        f"127.0.0.1:{port} (the Ceph mon's port) is taken: is another Ceph cluster running, "
                        "e.g. from another checkout? Stop it with `python tests/integration/ceph_cluster.py "
                        f"down <its base dir>` ({exc.strerror})."
                    ) from exc

    def up(self) -> float:
        """Tear down whatever is left in the base dir, bring a fresh cluster up, mount CephFS; return seconds."""
        start = time.monotonic()
        self._check_socket_paths()
        self.down()
        self._check_ports_free()
        for sub in ("run", "log", "crash", "mon/a", "mgr/x", "osd", "mds/a", "mnt"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        try:
            self._bring_up()
        except BaseException:
            # Leave the logs for reading but no process or mount behind.
            self._stop_everything()
            raise
        return time.monotonic() - start

    def _bring_up(self) -> None:
        base = self.base
        fsid = str(uuid.uuid4())
        self.conf.write_text(
            CONF_TEMPLATE.format(
                fsid=fsid, base=base, mon_v2=MON_PORTS[0], mon_v1=MON_PORTS[1], memstore_bytes=MEMSTORE_DEVICE_BYTES
            )
        )
        mon_keyring = base / "mon.keyring"
        self._tool(
            "ceph-authtool", "--create-keyring", str(mon_keyring), "--gen-key", "-n", "mon.", "--cap", "mon", "allow *"
        )
        self._tool(
            "ceph-authtool", "--create-keyring", str(self.admin_keyring), "--gen-key", "-n", "client.admin",
            "--cap", "mon", "allow *", "--cap", "osd", "allow *", "--cap", "mds", "allow *", "--cap", "mgr", "allow *",
        )  # fmt: skip
        self._tool("ceph-authtool", str(mon_keyring), "--import-keyring", str(self.admin_keyring))
        monmap = base / "monmap"
        mon_addrs = f"[v2:127.0.0.1:{MON_PORTS[0]},v1:127.0.0.1:{MON_PORTS[1]}]"
        self._tool("monmaptool", "--create", "--fsid", fsid, "--addv", "a", mon_addrs, str(monmap))
        self._tool(
            "ceph-mon", "--conf", str(self.conf), "--mkfs", "-i", "a", "--monmap", str(monmap),
            "--keyring", str(mon_keyring),
        )  # fmt: skip
        self._start("mon.a", "ceph-mon", "-i", "a")
        _wait_for("the Ceph mon answering", lambda: self._answers("mon", "stat"), self.ready_timeout, self._daemon_hint)

        self.ceph(
            "auth", "get-or-create", "mgr.x", "mon", "allow profile mgr", "osd", "allow *", "mds", "allow *",
            "-o", str(base / "mgr/x/keyring"),
        )  # fmt: skip
        self._start("mgr.x", "ceph-mgr", "-i", "x")

        osd_uuid = str(uuid.uuid4())
        secret = self._tool("ceph-authtool", "--gen-print-key").strip()
        osd_id = self.ceph("osd", "new", osd_uuid, "-i", "-", stdin=json.dumps({"cephx_secret": secret})).stdout.strip()
        osd_dir = base / "osd" / osd_id
        osd_dir.mkdir(parents=True, exist_ok=True)
        self._tool(
            "ceph-authtool",
            "--create-keyring",
            str(osd_dir / "keyring"),
            "--name",
            f"osd.{osd_id}",
            "--add-key",
            secret,
        )
        self._tool("ceph-osd", "--conf", str(self.conf), "-i", osd_id, "--mkfs", "--osd-uuid", osd_uuid)
        self._start(f"osd.{osd_id}", "ceph-osd", "-i", osd_id)

        self.ceph(
            "auth", "get-or-create", "mds.a", "mon", "allow profile mds", "osd", "allow rwx", "mds", "allow *",
            "mgr", "allow profile mds", "-o", str(base / "mds/a/keyring"),
        )  # fmt: skip
        self._start("mds.a", "ceph-mds", "-i", "a")

        self.ceph("osd", "pool", "create", f"{self.fs_name}_metadata", "8", "8")
        self.ceph("osd", "pool", "create", f"{self.fs_name}_data", "8", "8")
        self.ceph("fs", "new", self.fs_name, f"{self.fs_name}_metadata", f"{self.fs_name}_data")
        _wait_for("Ceph ready (OSD up, MDS active, mgr available)", self._ready, self.ready_timeout, self._status_hint)

        self._tool("ceph-fuse", "--conf", str(self.conf), "--id", "admin", str(self.mount))
        _wait_for(
            f"the admin ceph-fuse mount at {self.mount}",
            lambda: (self.mount, CEPH_FUSE_TYPE) in mounts_below(self.mount),
            self.ready_timeout,
            lambda: f"{self.log_dir}/client.admin.log:\n{_tail(self.log_dir / 'client.admin.log')}",
        )

    def _ready(self) -> bool:
        self._check_daemons()
        result = self.ceph("status", "--format", "json", check=False, timeout=5)
        if result.returncode != 0:
            return False
        status = json.loads(result.stdout)
        ranks = status.get("fsmap", {}).get("by_rank", [])
        return (
            status.get("osdmap", {}).get("num_up_osds") == 1
            and any(rank.get("status") == "up:active" for rank in ranks)
            and status.get("mgrmap", {}).get("available") is True
        )

    def _status_hint(self) -> str:
        result = self.ceph("status", check=False, timeout=5)
        return f"ceph status:\n{result.stdout}{result.stderr}\n{self._daemon_hint()}"

    # Teardown ---------------------------------------------------------------------------------

    def _stop_everything(self) -> None:
        """Unmount every mount below the base dir and SIGKILL every process using its conf."""
        for target, fstype in mounts_below(self.base):
            if fstype != CEPH_FUSE_TYPE:
                continue
            try:
                unmounted = subprocess.run(
                    ["fusermount", "-u", str(target)], capture_output=True, timeout=10
                ).returncode
            except subprocess.TimeoutExpired:
                unmounted = 1
            if unmounted != 0:
                subprocess.run(["umount", "-l", str(target)], capture_output=True, timeout=10, check=False)
        pids = set(processes_using(self.conf)) | {p.pid for p in self._daemons.values() if p.poll() is None}
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _wait_for(
            "the Ceph processes gone after SIGKILL",
            lambda: not any(alive(pid) for pid in pids) and all(p.poll() is not None for p in self._daemons.values()),
            10,
            lambda: f"still alive: {sorted(pid for pid in pids if alive(pid))}",
        )
        self._daemons.clear()

    def down(self) -> None:
        """Unmount, SIGKILL every daemon and client of this cluster, then delete the base dir."""
        if not self.base.exists():
            return
        self._stop_everything()
        left = mounts_below(self.base)
        if left:
            raise CephClusterError(
                f"Still mounted below {self.base}, so it was not deleted: "
                f"{', '.join(f'{t} ({fs})' for t, fs in left)}. Unmount them (umount -l) and run down again."
            )
        shutil.rmtree(self.base)


if pytest is not None:

    @pytest.fixture(scope="session")
    def ceph_cluster() -> Iterator[CephCluster]:
        """A fresh Ceph cluster with CephFS mounted at `.mount` for the session; gone afterwards."""
        cluster = CephCluster()
        cluster.up()
        try:
            yield cluster
        finally:
            cluster.down()


def main(argv: list[str]) -> int:
    if len(argv) not in (1, 2) or argv[0] not in ("up", "down"):
        print(f"usage: {Path(__file__).name} up|down [basedir]  (default {DEFAULT_BASE})", file=sys.stderr)
        return 2
    cluster = CephCluster(argv[1] if len(argv) == 2 else DEFAULT_BASE)
    try:
        if argv[0] == "up":
            seconds = cluster.up()
            print(f"Ceph is up in {seconds:.1f} s: conf {cluster.conf}, CephFS {cluster.fs_name!r} at {cluster.mount}")
        else:
            existed = cluster.base.exists()
            cluster.down()
            print(f"Ceph under {cluster.base}: {'stopped and deleted' if existed else 'nothing to stop'}")
    except CephClusterError as exc:
        print(f"ceph_cluster {argv[0]}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
