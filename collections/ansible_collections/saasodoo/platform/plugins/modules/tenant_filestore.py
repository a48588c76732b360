#!/usr/bin/python
"""Archive a tenant's filestore into a backup, or put a backup's archive back, never through a link the tenant made."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: tenant_filestore
short_description: Archive or restore one tenant's filestore by descriptor, tar running as the tenant
description:
  - The filestore work of C(playbooks/tenant_backup.yml) and C(playbooks/tenant_restore.yml), which run as root in a
    tree the tenant owns. The tenant may swap any of its directories for a link to one of root's; this module reaches
    C(<data_dir>/filestore/<db_name>) one name at a time and follows no link below I(data_dir), and C(tar) runs as
    the tenant's OS user (I(owner)), so it reads and writes nothing the tenant could not.
  - I(state=archived) writes I(archive) (a gzipped tar of C(<db_name>/)) once; the filestore directory is made, the
    tenant's own, when the tenant never started. The archive's directory is the platform's; the tenant's C(tar)
    writes through a descriptor root opened there. A file changing while it is read (an attachment added after the
    database dump) is not an error.
  - I(state=restored) extracts the archive's C(<archive_db_name>/) into a new directory beside the filestore, then
    swaps it in as C(<db_name>) and removes what was there.
  - I(state=filled) extracts it the same way, then moves in only the files the filestore lacks (a point-in-time
    restore keeps the current filestore and fills in the files deleted since).
version_added: 0.10.0
author: SaaSOdoo ops maintainers
options:
  data_dir:
    description: The tenant's directory (made by C(saasodoo.platform.tenant_storage)); links above it are followed
      only where no one but root could have put them.
    type: path
    required: true
  db_name:
    description: The tenant's database name, which Odoo names its filestore directory after.
    type: str
    required: true
  state:
    description: Archive the filestore, replace it with the archive's, or fill in the files it lacks.
    type: str
    choices: [archived, restored, filled]
    required: true
  archive:
    description: The archive file (written once with I(state=archived), read otherwise).
    type: path
    required: true
  archive_db_name:
    description: The directory name inside the archive (the database the backup was taken of); default I(db_name).
    type: str
  owner:
    description: The OS user owning the tenant's files, which C(tar) runs as.
    type: str
    default: root
  group:
    description: Their group.
    type: str
    default: root
  mode:
    description: Mode of a filestore directory this module makes.
    type: str
    default: "0750"
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
"""

EXAMPLES = r"""
- name: Archive the tenant's filestore into its backup
  saasodoo.platform.tenant_filestore:
    data_dir: /srv/saasodoo/odoo_instances/odoo_data_t_acme_acme
    db_name: t_acme
    state: archived
    archive: /var/backups/saasodoo/acme/acme-20261121T101500123456Z/filestore.tar.gz
    owner: odoo_acme
    group: odoo_acme
    mode: "0700"
"""

RETURN = r"""
path:
  description: The filestore directory, C(<data_dir>/filestore/<db_name>).
  returned: always
  type: str
moved_in:
  description: How many files and directories I(state=filled) moved in.
  returned: when state is filled
  type: int
"""

import grp
import os
import pwd
import re
import secrets
import shutil
import stat
import subprocess
from contextlib import suppress

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.saasodoo.platform.plugins.module_utils.files import (
    make_directory,
    open_beneath,
    open_directory,
)

NAME = re.compile(r"[A-Za-z0-9_]+")


class FilestoreError(Exception):
    """The filestore could not be archived or restored; the message says why."""


class TenantFilestore:
    def __init__(self, params: dict, check_mode: bool):
        self.p, self.check_mode = params, check_mode
        self.changed = False
        for key in ("db_name", "archive_db_name"):
            if not NAME.fullmatch(params[key]):
                raise FilestoreError(f"the {key.replace('_', ' ')} {params[key]!r} must be letters, digits or '_'")
        try:
            uid, gid = pwd.getpwnam(params["owner"]).pw_uid, grp.getgrnam(params["group"]).gr_gid
        except KeyError:
            raise FilestoreError(f"no OS user {params['owner']} or group {params['group']} on this host") from None
        self.owned = (uid, gid, int(params["mode"], 8))
        self.path = os.path.join(params["data_dir"], "filestore", params["db_name"])

    def filestore(self) -> int:
        """The tenant's `filestore` directory, made (its own) when missing."""
        base = open_directory(self.p["data_dir"])
        try:
            return open_beneath(base, "filestore", make=self.owned)
        finally:
            os.close(base)

    def tar(self, cwd: int, *args: str, stdin: int | None = None, stdout: int | None = None) -> int:
        """tar as the tenant's user in the directory open at `cwd` (chdir through the descriptor, not a name)."""
        argv = ["runuser", "-u", self.p["owner"], "--", "tar", *args]
        done = subprocess.run(argv, cwd=f"/proc/self/fd/{cwd}", stdin=stdin, stdout=stdout, stderr=subprocess.PIPE,
                              check=False)  # fmt: skip
        if done.returncode not in (0, 1) or (done.returncode == 1 and "--create" not in args):
            raise FilestoreError(f"tar {args[0]} failed (exit {done.returncode}): {done.stderr.decode().strip()}")
        return done.returncode

    def archived(self) -> None:
        archive = self.p["archive"]
        if os.path.lexists(archive):
            return  # a backup's parts are written once
        self.changed = True
        if self.check_mode:
            return
        partial = f"{archive}.partial"  # never seen by the manifest: renamed when whole, removed otherwise
        try:
            with open(partial, "wb", opener=lambda path, flags: os.open(path, flags | os.O_NOFOLLOW, 0o600)) as out:
                filestore = self.filestore()
                try:
                    os.close(open_beneath(filestore, self.p["db_name"], make=self.owned))  # Odoo makes it at start
                    # rc 1: a file changed while it was read (Odoo's filestore is write-once: an attachment added
                    # after the database dump, which the dump does not reference); the archive is usable.
                    self.tar(filestore, "--create", "--gzip", "--file=-", "--", self.p["db_name"], stdout=out.fileno())
                finally:
                    os.close(filestore)
                out.flush()
                os.fsync(out.fileno())
            os.replace(partial, archive)
        except BaseException:
            with suppress(FileNotFoundError):
                os.unlink(partial)
            raise

    def extracted(self, filestore: int) -> tuple[str, int]:
        """The archive's directory extracted by the tenant's tar into a new directory beside the filestore, renamed
        after the tenant's database; returns the new directory's name and descriptor (the tenant owns it and could
        swap the name for a link: what follows goes through the descriptor)."""
        fresh = f".restore-{secrets.token_hex(8)}"
        source = os.open(self.p["archive"], os.O_RDONLY | os.O_NOFOLLOW)
        try:
            into = make_directory(filestore, fresh, *self.owned[:2], 0o700)
            try:
                archived_as, db_name = self.p["archive_db_name"], self.p["db_name"]
                self.tar(into, "--extract", "--gzip", "--no-same-owner", "--file=-",
                         f"--transform=s,^{archived_as},{db_name},", "--", archived_as, stdin=source)  # fmt: skip
                try:  # an archive of an empty filestore still holds its directory; a hand-made one may not
                    os.close(open_beneath(into, db_name))
                except FileNotFoundError:
                    os.close(make_directory(into, db_name, *self.owned))
            except BaseException:
                os.close(into)
                raise
        finally:
            os.close(source)
        return fresh, into

    def restored(self) -> None:
        self.changed = True
        if self.check_mode:
            return
        filestore = self.filestore()
        try:
            db_name, old = self.p["db_name"], f".replaced-{secrets.token_hex(8)}"
            fresh, into = self.extracted(filestore)
            try:
                try:  # a link is renamed, not followed
                    os.rename(db_name, old, src_dir_fd=filestore, dst_dir_fd=filestore)
                except FileNotFoundError:
                    old = None
                os.rename(db_name, db_name, src_dir_fd=into, dst_dir_fd=filestore)
            finally:
                os.close(into)
            for leftover in (fresh, old):
                if leftover:
                    remove(leftover, filestore)
        finally:
            os.close(filestore)

    def filled(self) -> int:
        self.changed = True
        if self.check_mode:
            return 0
        filestore = self.filestore()
        try:
            db_name = self.p["db_name"]
            fresh, into = self.extracted(filestore)
            try:
                current = open_beneath(filestore, db_name, make=self.owned)
                restored = open_beneath(into, db_name)
                try:
                    moved = move_missing(restored, current)
                finally:
                    os.close(current)
                    os.close(restored)
            finally:
                os.close(into)
            remove(fresh, filestore)
            return moved
        finally:
            os.close(filestore)


def remove(name: str, fd: int) -> None:
    """Remove `name` from the directory open at `fd`: a tree by descriptor (rmtree with a dir_fd removes the links in
    it without following them), anything else (a link the tenant put there) unlinked."""
    if stat.S_ISDIR(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode):
        shutil.rmtree(name, dir_fd=fd)
    else:
        os.unlink(name, dir_fd=fd)


def move_missing(source: int, target: int) -> int:
    """Move what the directory open at `source` holds and the one at `target` lacks, into it, descending where both
    hold a directory of the same name; nothing is followed: a link in either is left where it is."""
    moved = 0
    for name in os.listdir(source):
        try:
            there = os.stat(name, dir_fd=target, follow_symlinks=False)
        except FileNotFoundError:
            os.rename(name, name, src_dir_fd=source, dst_dir_fd=target)
            moved += 1
            continue
        here = os.stat(name, dir_fd=source, follow_symlinks=False)
        if stat.S_ISDIR(there.st_mode) and stat.S_ISDIR(here.st_mode):
            inner_source, inner_target = open_beneath(source, name), open_beneath(target, name)
            try:
                moved += move_missing(inner_source, inner_target)
            finally:
                os.close(inner_source)
                os.close(inner_target)
    return moved


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            data_dir=dict(type="path", required=True),
            db_name=dict(type="str", required=True),
            state=dict(type="str", choices=["archived", "restored", "filled"], required=True),
            archive=dict(type="path", required=True),
            archive_db_name=dict(type="str"),
            owner=dict(type="str", default="root"),
            group=dict(type="str", default="root"),
            mode=dict(type="str", default="0750"),
        ),
        supports_check_mode=True,
    )
    p = module.params
    p["archive_db_name"] = p["archive_db_name"] or p["db_name"]
    result: dict = {}
    try:
        filestore = TenantFilestore(p, module.check_mode)
        result["path"] = filestore.path
        if p["state"] == "archived":
            filestore.archived()
        elif p["state"] == "restored":
            filestore.restored()
        else:
            result["moved_in"] = filestore.filled()
    except (FilestoreError, OSError, ValueError) as error:
        module.fail_json(msg=f"the filestore of {p['db_name']} under {p['data_dir']}: {error}", **result)
    module.exit_json(changed=filestore.changed, **result)


if __name__ == "__main__":
    main()
