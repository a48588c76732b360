#!/usr/bin/python
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A server's configuration directories and small files (its settings, its TLS certificate, key and CA), all in one
module call."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: config_files
short_description: Ensure a few directories and files exist with exactly the given content, owner, group and mode
description:
  - Makes what C(ansible.builtin.file) with C(state=directory) makes, then writes what C(ansible.builtin.copy) with
    C(content) (or C(ansible.builtin.template), given its rendering) writes, for several at once. Each of those is a
    task, and a task costs about a tenth of a second on every server of a no-change C(site.yml) whatever it does;
    a C(copy) loop costs two module runs per file.
  - Directories come first, in the order given, then files, in the order given.
  - Each file is written atomically (beside it, then renamed over it) only when its content, owner, group or mode
    differ. A link, a FIFO or another file found at a file's path is replaced, never followed. A file's directory
    must exist or be one of O(directories) (in check mode, on a host not converged yet, a file whose directory or
    owner is missing would be written).
  - A directory's missing parents are made this user's, mode 0755 whatever the umask (the services' users must
    pass through them), and left as they are when they exist. A link where a directory goes is refused.
  - Every path is reached one name at a time from C(/). A link on the way is followed only where no one but root
    and this user could have put it (in a directory one of them owns and no one else may write to), so another user
    who owns a directory on the way (the postgres user, its cluster directory) cannot send the writes elsewhere.
  - The paths (absolute) and modes are checked before anything is made or written.
  - The contents are never returned or logged (they hold private keys).
version_added: 0.2.0
author: SaaSOdoo ops maintainers (@saasodoo)
options:
  directories:
    description: The directories, with the files' owner and group.
    type: list
    elements: dict
    default: []
    suboptions:
      path:
        description: The directory.
        type: path
        required: true
      mode:
        description: Its mode, in octal (C("0750")).
        type: str
        required: true
  files:
    description: The files.
    type: list
    elements: dict
    default: []
    suboptions:
      path:
        description: Where the file goes.
        type: path
        required: true
      content:
        description: Its content; a line break ends the file (one is added when the content has none).
        type: str
        required: true
      mode:
        description: Its mode, in octal (C("0600")).
        type: str
        required: true
  owner:
    description: The owner of the directories and files; without it, the user the module runs as.
    type: str
  group:
    description: Their group; without it, the group the module runs as.
    type: str
extends_documentation_fragment:
  - saasodoo.platform.attributes
"""

EXAMPLES = r"""
- name: Ensure the server's WAL archive, settings, TLS certificate and key are in place
  saasodoo.platform.config_files:
    directories:
      - {path: /var/lib/postgresql/wal-archive, mode: "0700"}
    files:
      - {path: /etc/postgresql/15/main/conf.d/10-site.conf, content: "{{ lookup('template', 'site.conf.j2') }}",
         mode: "0640"}
      - {path: /etc/postgresql/15/main/server.crt, content: "{{ certificate }}", mode: "0644"}
      - {path: /etc/postgresql/15/main/server.key, content: "{{ private_key }}", mode: "0600"}
    owner: postgres
    group: postgres
"""

RETURN = r"""
made:
  description: The directories made or whose owner, group or mode were set (in check mode, those that would be).
  returned: success
  type: list
  elements: str
written:
  description: The paths written (in check mode, those that would be), in the order given.
  returned: success
  type: list
  elements: str
"""

import grp
import os
import pwd
import stat

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.saasodoo.platform.plugins.module_utils.files import holds, open_directory, write_atomically


def file_mode(text: str) -> int | None:
    """An octal mode from 0 to 07777 ("0644", "644", "0o644"); None for anything else."""
    try:
        mode = int(text, 8)
    except ValueError:
        return None
    return mode if 0 <= mode <= 0o7777 and not text.startswith(("-", "+")) else None


def ensure_directory(path: str, uid: int | None, gid: int | None, mode: int, check_mode: bool) -> bool:
    """Whether the directory was made or its owner, group or mode set (in check mode: would be)."""
    parent, name = os.path.split(os.path.normpath(path))
    try:
        parent_fd = open_directory(parent, make=not check_mode)
    except FileNotFoundError:
        if check_mode:
            return True  # its parents would be made, and it
        raise
    try:
        try:
            st, made = os.stat(name, dir_fd=parent_fd, follow_symlinks=False), False
        except FileNotFoundError:
            if check_mode:
                return True
            os.mkdir(name, 0o700, dir_fd=parent_fd)  # no wider than asked for until its owner and mode are set
            st, made = os.stat(name, dir_fd=parent_fd, follow_symlinks=False), True
        if not stat.S_ISDIR(st.st_mode):
            raise NotADirectoryError(f"not a directory ({'a link' if stat.S_ISLNK(st.st_mode) else 'a file'} is there)")
        if (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (uid, gid, mode):
            return made
        if not check_mode:
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent_fd)
            try:
                os.fchown(fd, uid, gid)
                os.fchmod(fd, mode)
            finally:
                os.close(fd)
        return True
    finally:
        os.close(parent_fd)


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            directories=dict(
                type="list",
                elements="dict",
                default=[],
                options=dict(path=dict(type="path", required=True), mode=dict(type="str", required=True)),
            ),
            files=dict(
                type="list",
                elements="dict",
                default=[],
                options=dict(
                    path=dict(type="path", required=True),
                    content=dict(type="str", required=True, no_log=True),
                    mode=dict(type="str", required=True),
                ),
            ),
            owner=dict(type="str"),
            group=dict(type="str"),
        ),
        supports_check_mode=True,
    )
    p = module.params
    # The modes and paths are checked before anything is made or written.
    entries = p["directories"] + p["files"]
    for entry in entries:
        if not os.path.isabs(entry["path"]):
            module.fail_json(msg=f"{entry['path']}: not an absolute path")
    modes = [file_mode(entry["mode"]) for entry in entries]
    for entry, mode in zip(entries, modes, strict=True):
        if mode is None:
            module.fail_json(msg=f"{entry['path']}: mode {entry['mode']!r} is not an octal mode (0644)")
    directory_modes, file_modes = modes[: len(p["directories"])], modes[len(p["directories"]) :]
    try:
        uid = pwd.getpwnam(p["owner"]).pw_uid if p["owner"] else os.geteuid()
        gid = grp.getgrnam(p["group"]).gr_gid if p["group"] else os.getegid()
    except KeyError as error:
        if not module.check_mode:
            module.fail_json(msg=f"no such owner or group: {error}")
        uid = gid = None  # a host not converged yet (check mode): everything would be made and written
    made = []
    for directory, mode in zip(p["directories"], directory_modes, strict=True):
        try:
            if ensure_directory(directory["path"], uid, gid, mode, module.check_mode or uid is None):
                made.append(directory["path"])
        except OSError as error:
            module.fail_json(msg=f"{directory['path']}: {error}", made=made)
    # Each file's directory, reached as open_directory reaches it. In check mode a directory that would be made
    # holds its files.
    would_be_made = {os.path.normpath(path) for path in made}
    directories = {}
    try:
        for file in p["files"]:
            directory = os.path.dirname(os.path.normpath(file["path"]))
            if directory in directories:
                continue
            try:
                directories[directory] = open_directory(directory)
            except FileNotFoundError:
                if not module.check_mode:
                    module.fail_json(msg=f"{file['path']}: its directory is not there", made=made)
                directories[directory] = None
            except OSError as error:
                if not (module.check_mode and directory in would_be_made):
                    module.fail_json(msg=f"{file['path']}: {error}", made=made)
                directories[directory] = None
        written = []
        for file, mode in zip(p["files"], file_modes, strict=True):
            directory, name = os.path.split(os.path.normpath(file["path"]))
            dir_fd, content = directories[directory], file["content"].encode()
            content += b"" if content.endswith(b"\n") else b"\n"
            try:
                if uid is not None and dir_fd is not None and holds(name, content, uid, gid, mode, dir_fd=dir_fd):
                    continue
                written.append(file["path"])
                if not module.check_mode:
                    write_atomically(name, content, uid, gid, mode, dir_fd=dir_fd)
            except OSError as error:  # e.g. a directory where the file goes
                module.fail_json(msg=f"{file['path']}: {error}", made=made, written=written[:-1])
    finally:
        for dir_fd in directories.values():
            if dir_fd is not None:
                os.close(dir_fd)
    module.exit_json(changed=bool(made or written), made=made, written=written)


if __name__ == "__main__":
    main()
