#!/usr/bin/python
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Archive a tenant's filestore into a backup, or put a backup's archive back, never through a link the tenant made."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: tenant_filestore
short_description: Archive or restore one tenant's filestore by descriptor, tar running as the tenant
description:
  - The filestore work of C(playbooks/tenant_backup.yml) and C(playbooks/tenant_restore.yml), which run as root in a
    tree the tenant owns. The tenant may swap any of its directories for a link to one of root's; this module reaches
    C(<data_dir>/filestore/<db_name>) one name at a time and follows no link below I(data_dir).
  - I(state=archived) writes I(archive) (a gzipped tar of C(<db_name>/)) once; the filestore directory is made, the
    tenant's own, when the tenant never started. C(tar) runs as root with no capability but reading any file
    (C(CAP_DAC_READ_SEARCH)), so the tenant can neither stop nor trace it, nor hide a file from it by its mode, and
    C(tar) follows no link it finds; it writes to the archive root opened. A file changing while it is read (an
    attachment added after the database dump) is not an error.
  - I(state=restored) extracts the archive's C(<archive_db_name>/) into a new directory beside the filestore, C(tar)
    running as I(owner) (in the tenant's network namespace, I(namespace), where it has one), then swaps it in as
    C(<db_name>) and removes what was there (root's C(rm), which follows no link).
  - I(state=filled) extracts it the same way, then moves in only the files the filestore lacks (a point-in-time
    restore keeps the current filestore and fills in the files deleted since).
  - Every C(tar) and C(rm) is bounded by I(timeout); what a failed run left beside the filestore is removed.
version_added: 0.2.0
author: SaaSOdoo ops maintainers (@saasodoo)
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
  namespace:
    description: The tenant's network namespace (C(ip netns) name), which its extraction runs in; none by default.
    type: str
    default: ""
  timeout:
    description: Seconds each C(tar) or C(rm) may take before it is killed and the module fails.
    type: int
    default: 3600
extends_documentation_fragment:
  - saasodoo.platform.attributes
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
import signal
import stat
import subprocess
import threading
from contextlib import suppress

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.saasodoo.platform.plugins.module_utils.files import (
    make_directory,
    open_beneath,
    open_directory,
)
from ansible_collections.saasodoo.platform.plugins.module_utils.tenant_network import ensure_namespace

NAME = re.compile(r"[A-Za-z0-9_]+")
STDERR_KEPT = 4096  # what of a tool's stderr a failure reports (the rest is read and dropped: it may be the tenant's)


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
        if not re.fullmatch(r"[A-Za-z0-9_.-]*", params["namespace"]) or params["namespace"].startswith("."):
            raise FilestoreError(f"the namespace {params['namespace']!r} is not a network namespace's name")
        self.path = os.path.join(params["data_dir"], "filestore", params["db_name"])

    def filestore(self) -> int:
        """The tenant's `filestore` directory, made (its own) when missing."""
        base = open_directory(self.p["data_dir"])
        try:
            return open_beneath(base, "filestore", make=self.owned)
        finally:
            os.close(base)

    def as_owner(self) -> list[str]:
        """The tenant's user and groups, in its network namespace if it has one (made when missing: after a reboot,
        before the tenant's Odoo started again), no way back to more privileges."""
        namespace = self.p["namespace"]
        if namespace:
            ensure_namespace(namespace)
        enter = ["nsenter", f"--net=/run/netns/{namespace}", "--"] if namespace else []
        return [*enter, "setpriv", f"--reuid={self.p['owner']}", f"--regid={self.p['group']}", "--init-groups",
                "--no-new-privs", "--"]  # fmt: skip

    @staticmethod
    def as_archiver() -> list[str]:
        """Root's user (the tenant can neither signal nor trace it; CephFS lets it read what the tenant hid by its
        modes) with no capability but reading any file: it may write nothing but the output root gave it."""
        read_any = "dac_read_search"
        return ["setpriv", "--clear-groups", f"--inh-caps=-all,+{read_any}", f"--bounding-set=-all,+{read_any}",
                "--no-new-privs", "--"]  # fmt: skip

    def run(self, cwd: int, argv: list[str], stdin: int | None = None, stdout: int | None = None) -> int:
        """argv in the directory open at `cwd` (chdir through the descriptor, not a name), in a session of its own,
        killed with it after the timeout; its exit code. Only the start of its stderr is kept."""
        process = subprocess.Popen(argv, cwd=f"/proc/self/fd/{cwd}", stdin=stdin, stdout=stdout, stderr=subprocess.PIPE,
                                   start_new_session=True)  # fmt: skip
        kept = bytearray()

        def read_stderr() -> None:
            while chunk := process.stderr.read(65536):
                kept.extend(chunk[: max(0, STDERR_KEPT - len(kept))])

        reader = threading.Thread(target=read_stderr, daemon=True)
        reader.start()
        try:
            rc = process.wait(timeout=self.p["timeout"])
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            raise FilestoreError(f"{argv[argv.index('--') + 1]} did not end within {self.p['timeout']} s") from None
        finally:
            reader.join(timeout=5)
        self.stderr = kept.decode(errors="replace").strip()
        return rc

    def tar_extract(self, cwd: int, source: int, *args: str) -> None:
        rc = self.run(cwd, [*self.as_owner(), "tar", "--extract", "--gzip", "--no-same-owner", "--no-same-permissions",
                            "--file=-", *args], stdin=source)  # fmt: skip
        if rc != 0:
            raise FilestoreError(f"tar --extract failed (exit {rc}): {self.stderr}")

    def remove(self, name: str, fd: int) -> None:
        """Remove `name` from the directory open at `fd`, with root's `rm` (the tenant's tree may hold what its user
        cannot remove): GNU rm walks by descriptor and opens every directory without following a link or blocking,
        so whatever the tenant swaps in meanwhile is removed or left, never followed; the tenant cannot signal it."""
        rc = self.run(fd, ["rm", "-rf", "--one-file-system", "--", name])
        if rc != 0:
            raise FilestoreError(f"rm -rf {name} failed (exit {rc}): {self.stderr}")

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
                    argv = [*self.as_archiver(), "tar", "--create", "--gzip", "--file=-", "--", self.p["db_name"]]
                    rc = self.run(filestore, argv, stdout=out.fileno())
                finally:
                    os.close(filestore)
                # 1: a file changed while it was read (Odoo's filestore is write-once: an attachment added after the
                # database dump, which the dump does not reference); the archive is usable.
                if rc not in (0, 1):
                    raise FilestoreError(f"tar --create failed (exit {rc}): {self.stderr}")
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
        swap the name for a link: what follows goes through the descriptor). Removed again if the extraction fails."""
        fresh = f".restore-{secrets.token_hex(8)}"
        source = os.open(self.p["archive"], os.O_RDONLY | os.O_NOFOLLOW)
        try:
            into = make_directory(filestore, fresh, *self.owned[:2], 0o700)
            try:
                archived_as, db_name = self.p["archive_db_name"], self.p["db_name"]
                self.tar_extract(into, source, f"--transform=s,^{archived_as},{db_name},", "--", archived_as)
            except BaseException:
                os.close(into)
                self.remove(fresh, filestore)
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
                    self.remove(leftover, filestore)
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
                try:
                    restored = open_beneath(into, db_name)
                    try:
                        moved = move_missing(restored, current)
                    finally:
                        os.close(restored)
                finally:
                    os.close(current)
            finally:
                os.close(into)
                self.remove(fresh, filestore)
            return moved
        finally:
            os.close(filestore)


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
            namespace=dict(type="str", default=""),
            timeout=dict(type="int", default=3600),
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
