#!/usr/bin/python
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A tenant's storage (directories, filestore seed, CephFS quota and cephx client, usage) in one module call."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: tenant_storage
short_description: Keep one tenant's storage directory, quota and CephFS client as asked
description:
  - The implementation of C(roles/storage), which is where playbooks call it from; one module call where the
    directories, the seed, the quota, the cephx client and the usage cost a dozen tasks.
  - I(state=present) makes the instances directory and the tenant's directory with its C(filestore), C(sessions)
    and C(addons), owned and moded as asked; seeds the filestore from its template's once (copied aside by the
    tenant's owner, then renamed into place); on CephFS sets the directory's quota (live, no remount) and makes the
    tenant's cephx client limited to that directory (C(ceph fs authorize)), refusing an existing client with other
    capabilities; then measures the usage (the blocks on disk, C(du), locally; C(ceph.dir.rbytes) on CephFS), with a
    warning when it is over the quota.
  - I(state=absent) deletes the cephx client and the tenant's directory tree.
  - On CephFS the root must be the admin mount (C(ceph-fuse) or the kernel client); anything else is refused, so a
    missing mount never puts a tenant's files on the disk under the mount point.
version_added: 0.2.0
author: SaaSOdoo ops maintainers (@saasodoo)
options:
  tenant_id:
    description: The tenant's id (letters, digits, C(-), C(_)); part of the directory's and the client's names.
    type: str
    required: true
  db_name:
    description: The tenant's database name; part of the directory's name and the filestore's.
    type: str
    required: true
  state:
    description: Whether the tenant's storage exists.
    type: str
    choices: [present, absent]
    default: present
  backend:
    description: C(local) directories, or C(cephfs) through the admin mount at I(root).
    type: str
    choices: [local, cephfs]
    default: local
  root:
    description: The storage root (the CephFS admin mount with I(backend=cephfs)).
    type: path
    required: true
  instances_dir:
    description: The directory below I(root) holding the tenants' directories.
    type: str
    default: odoo_instances
  owner:
    description: Owner of the root (local) and the instances directory.
    type: str
    default: root
  group:
    description: Group of the root (local) and the instances directory.
    type: str
    default: root
  dir_mode:
    description: Mode of the root (local) and the instances directory.
    type: str
    default: "0750"
  tenant_owner:
    description: Owner of the tenant's directories (its Odoo's OS user).
    type: str
    default: root
  tenant_group:
    description: Group of the tenant's directories.
    type: str
    default: root
  tenant_dir_mode:
    description: Mode of the tenant's directories.
    type: str
    default: "0750"
  quota_bytes:
    description: The plan's storage in bytes; required and positive with I(state=present).
    type: int
  filestore_seed:
    description: The template's filestore directory the tenant's starts as; empty for none.
    type: path
    default: ""
  cephfs:
    description: How C(ceph) reaches the cluster (I(backend=cephfs) only).
    type: dict
    default: {}
    suboptions:
      conf:
        description: The cluster's C(ceph.conf).
        type: path
        default: /etc/ceph/ceph.conf
      fs_name:
        description: The CephFS file system's name.
        type: str
        default: cephfs
      admin_id:
        description: The cephx id C(ceph) runs as.
        type: str
        default: admin
      keyring:
        description: The keyring of I(admin_id); empty for the default.
        type: str
        default: ""
      root_path:
        description: The path inside CephFS that I(root) mounts.
        type: str
        default: /
      client_prefix:
        description: Prefix of the tenants' cephx client names (C(client.<prefix><tenant_id>)).
        type: str
        default: saasodoo-tenant-
      connect_timeout:
        description: Seconds C(ceph) waits for the cluster.
        type: int
        default: 30
extends_documentation_fragment:
  - saasodoo.platform.attributes
"""

EXAMPLES = r"""
- name: Ensure the tenant's storage
  saasodoo.platform.tenant_storage:
    tenant_id: acme
    db_name: t_acme
    root: /srv/saasodoo
    tenant_owner: saasodoo-acme
    tenant_group: saasodoo-acme
    tenant_dir_mode: "0700"
    quota_bytes: 10737418240
    filestore_seed: /srv/saasodoo/templates/odoo_18_basic_en_US/filestore/odoo_18_basic_en_US
"""

RETURN = r"""
storage:
  description: The tenant's storage as it now is.
  returned: always
  type: dict
  contains:
    backend: {description: C(local) or C(cephfs)., type: str}
    path: {description: The tenant's directory on this host., type: str}
    fs_path: {description: The same directory inside CephFS (null locally)., type: str}
    quota_bytes: {description: The quota (null once absent)., type: int}
    used_bytes: {description: The bytes used (on disk locally; on CephFS as the MDS propagates them)., type: int}
    cephx_client: {description: The tenant's cephx client (null locally)., type: str}
"""

import errno
import grp
import json
import os
import pwd
import re
import shutil
import stat

from ansible.module_utils.basic import AnsibleModule

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
CLIENT = re.compile(r"client\.[A-Za-z0-9_.-]+")
SUBDIRS = ("filestore", "sessions", "addons")
CEPHFS_TYPES = ("fuse.ceph-fuse", "fuse.ceph", "ceph")
QUOTA = "ceph.quota.max_bytes"
RBYTES = "ceph.dir.rbytes"


class Storage:
    def __init__(self, module: AnsibleModule):
        self.module, p = module, module.params
        self.p, self.ceph_p = p, p["cephfs"] or {}
        self.changed = False
        for key in ("tenant_id", "db_name"):
            if not NAME.fullmatch(p[key]):
                self.fail(f"the {key.replace('_', ' ')} {json.dumps(p[key])} must be letters, digits, '-' or '_', "
                          "starting with a letter or a digit")  # fmt: skip
        instances = p["instances_dir"].strip("/")
        if not os.path.isabs(p["root"]) or not instances or ".." in instances.split("/"):
            self.fail(f"root ({json.dumps(p['root'])}) must be an absolute path and instances_dir "
                      f"({json.dumps(p['instances_dir'])}) a directory below it")  # fmt: skip
        self.root = p["root"].rstrip("/") or "/"
        self.instances = os.path.join(self.root, instances)
        name = f"odoo_data_{p['db_name']}_{p['tenant_id']}"
        self.path = os.path.join(self.instances, name)
        self.cephfs = p["backend"] == "cephfs"
        self.fs_path = self.client = None
        if self.cephfs:
            self.fs_path = f"{self.ceph_p['root_path'].rstrip('/')}/{instances}/{name}"
            self.client = f"client.{self.ceph_p['client_prefix']}{p['tenant_id']}"
            if not CLIENT.fullmatch(self.client):
                self.fail(f"{json.dumps(self.client)} is not a valid cephx client name: cephfs.client_prefix may hold "
                          "letters, digits, '.', '-' and '_' only")  # fmt: skip

    def fail(self, msg: str, **extra) -> None:
        self.module.fail_json(msg=f"Tenant {self.p['tenant_id']}: {msg}", changed=self.changed, **extra)

    # -- directories ---------------------------------------------------------------------------------------

    def directory(self, path: str, mode: str, owner: str | None = None, group: str | None = None,
                  tenants: bool = True) -> None:  # fmt: skip
        """Like the file module's state=directory. A tenant's directories are opened without following a link and
        changed through that descriptor: the tenant owns them and could swap one for a link to anything. The root
        and the instances directory are the operator's: a link there is followed, and missing parents are made."""
        uid, gid = self.ids(owner, group)
        try:
            wanted = int(mode, 8)
        except ValueError:
            self.fail(f'the mode {json.dumps(mode)} of {path} is not octal: quote it in YAML, like "0750"')
        fd = self.open_directory(path, tenants)
        if fd is None:
            self.changed = True
            if self.module.check_mode:
                return
            try:
                if not tenants:
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                os.mkdir(path, 0o700)
            except OSError as error:  # FileExistsError: something appeared there meanwhile
                self.fail(f"cannot make the directory {path}: {error.strerror}")
            fd = self.open_directory(path, tenants)
        try:
            st = os.fstat(fd)
            if (uid is not None and (st.st_uid, st.st_gid) != (uid, gid)) or stat.S_IMODE(st.st_mode) != wanted:
                self.changed = True
                if not self.module.check_mode:
                    if uid is not None:
                        os.fchown(fd, uid, gid)
                    os.fchmod(fd, wanted)
        finally:
            os.close(fd)

    def ids(self, owner: str | None, group: str | None) -> tuple[int | None, int | None]:
        if owner is None:
            return None, None
        try:
            return pwd.getpwnam(owner).pw_uid, grp.getgrnam(group).gr_gid
        except KeyError:
            self.fail(f"no OS user {owner} or group {group} on this host: make them first")

    def open_directory(self, path: str, tenants: bool) -> int | None:
        flags = os.O_RDONLY | os.O_DIRECTORY | (os.O_NOFOLLOW if tenants else 0)
        try:
            return os.open(path, flags)
        except FileNotFoundError:
            return None
        except OSError as error:  # ENOTDIR, or ELOOP for a link
            self.fail(f"{path} exists and is not a directory ({error.strerror}): move it aside and run again")

    def seed(self) -> None:
        """The template's filestore copied aside by the tenant's owner, then renamed into place, once."""
        seed, owner = self.p["filestore_seed"], self.p["tenant_owner"]
        target = os.path.join(self.path, "filestore", self.p["db_name"])
        if not seed or os.path.lexists(target):
            return
        self.changed = True
        if self.module.check_mode:
            return
        script = 'umask 077; rm -rf "$2.partial"; cp -R "$1" "$2.partial"; mv "$2.partial" "$2"'
        argv = ["runuser", "-u", owner, "--", "sh", "-ec", script, "storage-seed", seed, target]
        rc, _out, err = self.module.run_command(argv)
        if rc != 0:
            self.fail(f"seeding the filestore from {seed} failed: {err.strip()}")

    # -- CephFS --------------------------------------------------------------------------------------------

    def ceph(self, *args: str) -> tuple[int, str, str]:
        c = self.ceph_p
        argv = ["ceph", "--conf", c["conf"], "--id", c["admin_id"], "--connect-timeout", str(c["connect_timeout"])]
        argv += ["--keyring", c["keyring"]] if c["keyring"] else []
        return self.module.run_command([*argv, *args])

    def require_admin_mount(self) -> None:
        rc, out, _err = self.module.run_command(["findmnt", "--noheadings", "--output", "FSTYPE", "--mountpoint",
                                                self.root])  # fmt: skip
        if rc != 0 or out.strip() not in CEPHFS_TYPES:
            found = f"it holds a {out.strip()} file system" if rc == 0 else "nothing is mounted there"
            self.fail(f"the CephFS admin mount {self.root} is not mounted ({found}): bring the Ceph cluster up and "
                      f"mount CephFS there (ceph-fuse --id {self.ceph_p['admin_id']} -r {self.ceph_p['root_path']} "
                      f"{self.root}), then run again")  # fmt: skip

    def quota(self) -> None:
        wanted = self.p["quota_bytes"]
        try:
            current = int(os.getxattr(self.path, QUOTA, follow_symlinks=False) or b"0")
        except OSError as error:
            if error.errno == errno.ENODATA:
                current = 0  # no quota yet
            elif error.errno == errno.ENOENT and self.module.check_mode:
                current = 0  # check mode did not make the directory
            else:
                self.fail(f"cannot read the quota of {self.path}: {error}")
        if current == wanted:
            return
        self.changed = True
        if not self.module.check_mode:
            os.setxattr(self.path, QUOTA, str(wanted).encode(), follow_symlinks=False)

    def client_caps(self) -> dict | None:
        """The tenant's cephx client's capabilities (never its key), or None when there is none."""
        rc, out, err = self.ceph("auth", "get", self.client, "--format", "json")
        if rc == 2:  # ENOENT: no such client
            return None
        if rc != 0:
            c = self.ceph_p
            self.fail(f"`ceph auth get {self.client}` failed (exit {rc}): {err.strip()}. Check that the cluster is up "
                      f"and that {c['conf']} and the keyring of client.{c['admin_id']} are right")  # fmt: skip
        return (json.loads(out)[0].get("caps") or {}) if out.strip() else {}

    def ensure_client(self) -> None:
        caps = self.client_caps()
        if caps is not None:
            mds = caps.get("mds", "")
            for key, value in (("path", self.fs_path), ("fsname", self.ceph_p["fs_name"])):
                if not re.search(rf"(^|[ ,]){key}={re.escape(value)}($|[ ,])", mds):
                    self.fail(f"{self.client} exists with capabilities that are not for {self.ceph_p['fs_name']}:"
                              f"{self.fs_path} ({json.dumps(caps)}). Check that no other tenant uses it, remove it "
                              f"(ceph auth del {self.client}) and run again")  # fmt: skip
            return
        self.changed = True
        if not self.module.check_mode:  # it prints the new key, which is never returned
            rc, _out, err = self.ceph("fs", "authorize", self.ceph_p["fs_name"], self.client, self.fs_path, "rw")
            if rc != 0:
                self.fail(f"`ceph fs authorize` for {self.client} failed (exit {rc}): {err.strip()}")

    # -- usage ---------------------------------------------------------------------------------------------

    def used_bytes(self) -> int:
        if not os.path.isdir(self.path):
            return 0  # check mode has not made it
        if self.cephfs:  # the MDS propagates recursive statistics lazily: a write of a moment ago may be missing
            return int(os.getxattr(self.path, RBYTES, follow_symlinks=False) or b"0")
        # The blocks its files take on disk: a sparse file's claimed size is not use (CephFS counts that, though).
        rc, out, err = self.module.run_command(["du", "--summarize", "--block-size=1", self.path])
        if rc == 1 and out.strip():  # a file went away while du walked (Odoo's sessions come and go): still a total
            self.module.warn(f"du {self.path}: {err.strip()}")
        elif rc != 0:
            self.fail(f"cannot measure {self.path}: {err.strip()}")
        return int(out.split()[0])

    # -- states --------------------------------------------------------------------------------------------

    def present(self) -> dict:
        p = self.p
        if not p["quota_bytes"] or p["quota_bytes"] <= 0:
            self.fail("quota_bytes is required with state=present and must be positive: pass the plan's "
                      "storage_gb * 1024**3")  # fmt: skip
        if self.cephfs:
            self.require_admin_mount()
        else:  # made here with the instances directory's mode, not as a parent with whatever its child asks
            self.directory(self.root, p["dir_mode"], tenants=False)  # its mode only: it may hold more than tenants
        self.directory(self.instances, p["dir_mode"], p["owner"], p["group"], tenants=False)
        for path in (self.path, *(os.path.join(self.path, sub) for sub in SUBDIRS)):
            self.directory(path, p["tenant_dir_mode"], p["tenant_owner"], p["tenant_group"])
        self.seed()
        if self.cephfs:
            self.quota()
            self.ensure_client()
        used = self.used_bytes()
        if used > p["quota_bytes"]:
            self.module.warn(
                f"tenant {p['tenant_id']} uses {used} bytes in {self.path}, over its quota of {p['quota_bytes']} bytes "
                f"({'CephFS refuses further writes' if self.cephfs else 'not enforced on the local backend'})"
            )
        return {"storage": self.report(p["quota_bytes"], used)}

    def absent(self) -> dict:
        if self.cephfs:
            self.require_admin_mount()
            if self.client_caps() is not None:
                self.changed = True
                if not self.module.check_mode:
                    rc, _out, err = self.ceph("auth", "del", self.client)
                    if rc != 0:
                        self.fail(f"`ceph auth del {self.client}` failed (exit {rc}): {err.strip()}")
        if os.path.lexists(self.path):
            self.changed = True
            if not self.module.check_mode:
                if os.path.islink(self.path):
                    os.unlink(self.path)
                else:  # rmtree removes links inside the tree without following them
                    shutil.rmtree(self.path)
        return {"storage": self.report(None, 0)}

    def report(self, quota: int | None, used: int) -> dict:
        return {
            "backend": self.p["backend"], "path": self.path, "fs_path": self.fs_path, "quota_bytes": quota,
            "used_bytes": used, "cephx_client": self.client,
        }  # fmt: skip


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            tenant_id=dict(type="str", required=True),
            db_name=dict(type="str", required=True),
            state=dict(type="str", choices=["present", "absent"], default="present"),
            backend=dict(type="str", choices=["local", "cephfs"], default="local"),
            root=dict(type="path", required=True),
            instances_dir=dict(type="str", default="odoo_instances"),
            owner=dict(type="str", default="root"),
            group=dict(type="str", default="root"),
            dir_mode=dict(type="str", default="0750"),
            tenant_owner=dict(type="str", default="root"),
            tenant_group=dict(type="str", default="root"),
            tenant_dir_mode=dict(type="str", default="0750"),
            quota_bytes=dict(type="int"),
            filestore_seed=dict(type="path", default=""),
            cephfs=dict(
                type="dict",
                default={},
                options=dict(
                    conf=dict(type="path", default="/etc/ceph/ceph.conf"),
                    fs_name=dict(type="str", default="cephfs"),
                    admin_id=dict(type="str", default="admin"),
                    keyring=dict(type="str", default="", no_log=False),
                    root_path=dict(type="str", default="/"),
                    client_prefix=dict(type="str", default="saasodoo-tenant-"),
                    connect_timeout=dict(type="int", default=30),
                ),
            ),
        ),
        supports_check_mode=True,
    )
    storage = Storage(module)
    result = storage.present() if module.params["state"] == "present" else storage.absent()
    module.exit_json(changed=storage.changed, **result)


if __name__ == "__main__":
    main()
