"""A real single-node Ceph cluster with CephFS, for tests: roles/ceph_cluster in local mode (mon, mgr, memstore OSD
and MDS on 127.0.0.1, cephx on), brought up and torn down through tests/integration/playbooks/ceph_cluster.yml.

Everything (conf, keyrings, daemon data, admin sockets, logs, mount points) lives under one base directory,
`.state/ceph` in this checkout by default. The admin's ceph-fuse mount of the CephFS root is `<base>/mnt`; mounts for
other clients belong under `mount_point()`, so teardown unmounts them too. Teardown SIGKILLs every process started
with the cluster's conf (the role says why), even after the run that started them was killed.

The mon listens on 3300 and 6789 (the role's default ports): one such cluster per machine. The molecule scenario of
roles/ceph_cluster uses other ports, so it runs beside.

    python tests/integration/ceph_cluster.py up [basedir]     # tears down a leftover cluster first
    python tests/integration/ceph_cluster.py down [basedir]

Only the standard library is imported, so the command line runs from any Python 3.11 (the playbook runs with this
checkout's venv, `make setup`); the `ceph_cluster` pytest fixture is defined when pytest is importable.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

try:
    import pytest
except ModuleNotFoundError:  # the command line needs no pytest
    pytest = None  # type: ignore[assignment]

REPO = Path(__file__).resolve().parents[2]
DEFAULT_BASE = REPO / ".state/ceph"
PLAYBOOK = REPO / "tests/integration/playbooks/ceph_cluster.yml"
ANSIBLE_PLAYBOOK = REPO / ".venv/bin/ansible-playbook"
FS_NAME = "cephfs"
CEPH_TIMEOUT = 30.0
PLAYBOOK_TIMEOUT = 300
CEPH_FUSE_TYPE = "fuse.ceph-fuse"


class CephClusterError(RuntimeError):
    """The cluster could not be brought up or torn down; the message says why and where to look."""


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


class CephCluster:
    """One single-node Ceph cluster with a CephFS, all of it under `base`."""

    def __init__(self, base: Path | str = DEFAULT_BASE, fs_name: str = FS_NAME):
        self.base = Path(base).absolute()
        self.fs_name = fs_name

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

    def _apply(self, state: str) -> None:
        """Run roles/ceph_cluster with this base dir; a failure raises with the playbook's output's end."""
        if not ANSIBLE_PLAYBOOK.exists():
            raise CephClusterError(f"{ANSIBLE_PLAYBOOK} is missing: run `make setup` first")
        extra_vars = {"ceph_cluster_base_dir": str(self.base), "ceph_cluster_fs_name": self.fs_name,
                      "ceph_cluster_state": state}  # fmt: skip
        argv = [str(ANSIBLE_PLAYBOOK), str(PLAYBOOK), "-i", "localhost,", "-e", json.dumps(extra_vars)]
        # host_list parses `-i localhost,` (ansible.cfg enables file inventories only).
        env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_INVENTORY_ENABLED": "host_list"}
        try:
            result = subprocess.run(
                argv, capture_output=True, text=True, timeout=PLAYBOOK_TIMEOUT, check=False, env=env, cwd=REPO
            )
        except subprocess.TimeoutExpired as exc:
            raise CephClusterError(f"roles/ceph_cluster ({state}) did not finish within {PLAYBOOK_TIMEOUT} s") from exc
        if result.returncode != 0:
            raise CephClusterError(
                f"roles/ceph_cluster ({state}) failed (exit {result.returncode}); the daemons' logs are in "
                f"{self.log_dir}. The playbook's output ends:\n{(result.stdout + result.stderr)[-4000:]}"
            )

    def up(self) -> float:
        """Tear down whatever is left in the base dir, bring a fresh cluster up, mount CephFS; return seconds."""
        start = time.monotonic()
        self.down()
        self._apply("present")
        return time.monotonic() - start

    def down(self) -> None:
        """Unmount, SIGKILL every daemon and client of this cluster, then delete the base dir."""
        if self.base.exists():
            self._apply("absent")


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
