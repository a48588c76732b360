"""roles/storage with the cephfs backend against a real Ceph cluster (the `ceph_cluster` fixture).

Each test drives tests/integration/playbooks/storage.yml for a tenant of its own and checks the result
on CephFS itself: directories, the quota xattr and its enforcement (EDQUOT), the tenant's cephx key
confined to its subtree, removal, and changed=0 on every second run.
"""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from .ceph_cluster import CEPH_FUSE_TYPE, CephCluster, mounts_below
from .conftest import PlaybookRun, ansible_playbook, wait_until

PLAYBOOK = "tests/integration/playbooks/storage.yml"
CLIENT_PREFIX = "saasodoo-tenant-"
MiB = 1024**2
SUBDIRS = ("filestore", "sessions", "addons")
# The playbook's last task prints `storage_tenant=<json>`; with the JSON result format it is one line.
RESULT_LINE = re.compile(r'^\s*"msg": (".*")$', re.MULTILINE)
# The MDS propagates a subdirectory's usage up to the quota directory lazily (mds_scatter_nudge_interval,
# 5 s by default); until then ceph-fuse lets writes through.
PROPAGATION_TIMEOUT = 30.0


@dataclass
class StorageRun:
    run: PlaybookRun
    tenant: dict | None

    @property
    def changed(self) -> int:
        return self.run.recap["localhost"]["changed"]


def apply_storage(cluster: CephCluster, tenant_id: str, state: str = "present", **inputs) -> StorageRun:
    extra_vars = {
        "storage_backend": "cephfs",
        "storage_state": state,
        "storage_tenant_id": tenant_id,
        "storage_db_name": f"t_{tenant_id}",
        "storage_root": str(cluster.mount),
        "storage_cephfs_conf": str(cluster.conf),
        "storage_cephfs_fs_name": cluster.fs_name,
        **inputs,
    }
    run = ansible_playbook(
        PLAYBOOK,
        "-e",
        json.dumps(extra_vars),
        inventory="localhost,",
        # host_list parses `-i localhost,` (ansible.cfg enables file inventories only).
        env={"ANSIBLE_CALLBACK_RESULT_FORMAT": "json", "ANSIBLE_INVENTORY_ENABLED": "host_list"},
    )
    tenant = None
    for match in RESULT_LINE.finditer(run.output):
        message = json.loads(match[1])
        if message.startswith("storage_tenant="):
            tenant = json.loads(message.removeprefix("storage_tenant="))
    return StorageRun(run, tenant)


def present(cluster: CephCluster, tenant_id: str, quota_bytes: int) -> StorageRun:
    applied = apply_storage(cluster, tenant_id, storage_quota_bytes=quota_bytes)
    assert applied.run.returncode == 0, applied.run.output[-4000:]
    return applied


def quota_of(path: Path) -> int:
    return int(os.getxattr(path, "ceph.quota.max_bytes"))


def rbytes_of(path: Path) -> int:
    return int(os.getxattr(path, "ceph.dir.rbytes"))


def auth_exists(cluster: CephCluster, client: str) -> bool:
    # `ceph auth get` prints the key: keep its output to this process.
    result = cluster.ceph("auth", "get", client, check=False)
    assert result.returncode in (0, errno.ENOENT), result.stderr
    return result.returncode == 0


def write_chunks(path: Path, limit: int, mode: str = "ab") -> tuple[int, OSError | None]:
    """Append 1 MiB chunks (each fsync'd, like a file being saved) until `limit` bytes or an error."""
    written, chunk = 0, b"\0" * MiB
    try:
        with open(path, mode, buffering=0) as f:
            while written < limit:
                f.write(chunk)
                os.fsync(f.fileno())
                written += len(chunk)
    except OSError as exc:
        return written, exc
    return written, None


def unmount(mnt: Path) -> None:
    if (mnt, CEPH_FUSE_TYPE) in mounts_below(mnt):
        subprocess.run(["fusermount", "-u", str(mnt)], capture_output=True, timeout=30, check=False)
        if mounts_below(mnt):
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30, check=False)


@contextmanager
def tenant_mount(
    cluster: CephCluster, client_id: str, keyring: Path, root: str, name: str
) -> Iterator[tuple[subprocess.CompletedProcess[str], Path]]:
    """ceph-fuse as the tenant's client, with `root` as the mount's root; unmounted on the way out."""
    mnt = cluster.mount_point(name)
    argv = ["ceph-fuse", "--conf", str(cluster.conf), "--id", client_id, "-k", str(keyring), "-r", root, str(mnt)]
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        yield result, mnt
    finally:
        unmount(mnt)


def test_present_makes_the_tenant_directory_quota_and_client(ceph_cluster: CephCluster):
    quota = 1024**3
    first = present(ceph_cluster, "alpha", quota)
    data_dir = ceph_cluster.mount / "odoo_instances/odoo_data_t_alpha_alpha"
    assert first.tenant == {
        "backend": "cephfs",
        "path": str(data_dir),
        "fs_path": "/odoo_instances/odoo_data_t_alpha_alpha",
        "quota_bytes": quota,
        "used_bytes": 0,
        "cephx_client": f"client.{CLIENT_PREFIX}alpha",
    }
    for sub in ("", *SUBDIRS):
        assert (data_dir / sub).is_dir()
        assert (data_dir / sub).stat().st_mode & 0o777 == 0o750
    assert quota_of(data_dir) == quota
    caps = ceph_cluster.ceph_json("auth", "get", f"client.{CLIENT_PREFIX}alpha")[0]["caps"]
    assert caps["mds"] == f"allow rw fsname={ceph_cluster.fs_name} path=/odoo_instances/odoo_data_t_alpha_alpha"
    assert first.changed > 0

    second = present(ceph_cluster, "alpha", quota)
    assert second.changed == 0, second.run.output[-4000:]
    assert second.tenant == first.tenant


def test_quota_is_enforced_and_resized_live(ceph_cluster: CephCluster):
    quota = 50 * MiB
    data_dir = Path(present(ceph_cluster, "bravo", quota).tenant["path"])
    assert quota_of(data_dir) == quota
    blob = data_dir / "filestore/t_bravo/ab/blob"
    blob.parent.mkdir(parents=True)

    # ceph-fuse enforces the quota against the usage the MDS has counted so far: writes may pass it
    # until the usage below filestore/ has reached the tenant directory, then every write fails.
    written, error = write_chunks(blob, quota * 3 // 2)
    if error is None:
        wait_until(lambda: rbytes_of(data_dir) > quota, "the MDS counting the writes", PROPAGATION_TIMEOUT, 0.2)
        more, error = write_chunks(blob, MiB)
        written += more
    assert error is not None and error.errno == errno.EDQUOT, f"{written} bytes written, no EDQUOT: {error!r}"
    _, new_file_error = write_chunks(data_dir / "filestore/t_bravo/ab/other", MiB, mode="wb")
    assert new_file_error is not None and new_file_error.errno == errno.EDQUOT
    assert quota <= blob.stat().st_size < 2 * quota

    again = present(ceph_cluster, "bravo", quota)
    assert again.changed == 0, again.run.output[-4000:]
    assert again.tenant["used_bytes"] > quota
    assert "[WARNING]: tenant bravo uses" in again.run.output  # tenant_storage's own warning

    resized = present(ceph_cluster, "bravo", 4 * quota)
    assert resized.changed == 1, resized.run.output[-4000:]
    assert resized.tenant["quota_bytes"] == 4 * quota
    assert quota_of(data_dir) == 4 * quota
    more, error = write_chunks(blob, 10 * MiB)
    assert error is None and more == 10 * MiB
    assert present(ceph_cluster, "bravo", 4 * quota).changed == 0


def test_tenant_key_opens_its_own_subtree_only(ceph_cluster: CephCluster, tmp_path: Path):
    applied = present(ceph_cluster, "charlie", 100 * MiB)
    client = applied.tenant["cephx_client"]
    client_id = client.removeprefix("client.")
    key = ceph_cluster.ceph("auth", "get-key", client).stdout.strip()
    assert key and key not in applied.run.output
    keyring = tmp_path / "keyring"
    keyring.touch(mode=0o600)
    keyring.write_text(f"[{client}]\n\tkey = {key}\n")

    with tenant_mount(ceph_cluster, client_id, keyring, applied.tenant["fs_path"], "charlie") as (mounted, mnt):
        assert mounted.returncode == 0, mounted.stdout + mounted.stderr
        assert sorted(p.name for p in mnt.iterdir()) == sorted(SUBDIRS)
        (mnt / "filestore/hello.txt").write_text("written with the tenant's own key\n")
        assert (Path(applied.tenant["path"]) / "filestore/hello.txt").read_text().startswith("written with")
        raise_quota = subprocess.run(
            ["setfattr", "-n", "ceph.quota.max_bytes", "-v", str(1024**4), str(mnt)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert raise_quota.returncode != 0 and "Permission denied" in raise_quota.stderr
        assert quota_of(Path(applied.tenant["path"])) == 100 * MiB

    with tenant_mount(ceph_cluster, client_id, keyring, "/", "charlie-root") as (mounted, mnt):
        assert mounted.returncode != 0, f"the tenant's key mounted / at {mnt}"
        assert not mounts_below(mnt)

    with tenant_mount(ceph_cluster, client_id, keyring, "/odoo_instances", "charlie-parent") as (mounted, mnt):
        assert mounted.returncode != 0, f"the tenant's key mounted /odoo_instances at {mnt}"


def test_absent_removes_the_tree_and_the_client(ceph_cluster: CephCluster):
    applied = present(ceph_cluster, "delta", 10 * MiB)
    data_dir = Path(applied.tenant["path"])
    (data_dir / "filestore/t_delta").mkdir()
    (data_dir / "filestore/t_delta/attachment").write_bytes(b"x" * 4096)
    client = applied.tenant["cephx_client"]
    assert auth_exists(ceph_cluster, client)

    removed = apply_storage(ceph_cluster, "delta", state="absent")
    assert removed.run.returncode == 0, removed.run.output[-4000:]
    assert removed.changed == 1  # one module call: the client, then the tree
    assert not data_dir.exists()
    assert not auth_exists(ceph_cluster, client)
    assert removed.tenant["quota_bytes"] is None and removed.tenant["used_bytes"] == 0

    again = apply_storage(ceph_cluster, "delta", state="absent")
    assert again.run.returncode == 0, again.run.output[-4000:]
    assert again.changed == 0


@pytest.mark.parametrize("state", ["present", "absent"])
def test_refuses_to_work_without_the_admin_mount(ceph_cluster: CephCluster, tmp_path: Path, state: str):
    refused = apply_storage(ceph_cluster, "echo", state=state, storage_root=str(tmp_path), storage_quota_bytes=MiB)
    assert refused.run.returncode != 0
    assert f"Tenant echo: the CephFS admin mount {tmp_path} is not mounted" in refused.run.output
    assert not list(tmp_path.iterdir())
