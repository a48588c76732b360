#!/usr/bin/python
"""A server's small configuration files (its TLS certificate, key and CA), all in one module call."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: config_files
short_description: Ensure a few files hold exactly the given content, owner, group and mode, in one call
description:
  - Writes what C(ansible.builtin.copy) with C(content) writes, for several files at once. A C(copy) loop costs two
    module runs per file even when nothing changes (a stat, then the file's attributes), and the roles' TLS files,
    three per server, made that loop the longest task of a no-change C(site.yml).
  - Each file is written atomically (beside it, then renamed over it) only when its content, owner, group or mode
    differ. A link, a FIFO or another file found at a file's path is replaced, never followed. The directories must
    exist (in check mode, on a host not converged yet, a file whose directory or owner is missing would be written).
  - Every entry is checked before anything is written.
  - The contents are never returned or logged (they hold private keys).
version_added: 0.7.0
author: SaaSOdoo ops maintainers
options:
  files:
    description: The files.
    type: list
    elements: dict
    required: true
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
    description: The files' owner.
    type: str
    default: root
  group:
    description: The files' group.
    type: str
    default: root
"""

EXAMPLES = r"""
- name: Ensure the server's TLS certificate and key are in place
  saasodoo.platform.config_files:
    files:
      - {path: /etc/postgresql/15/main/server.crt, content: "{{ certificate }}", mode: "0644"}
      - {path: /etc/postgresql/15/main/server.key, content: "{{ private_key }}", mode: "0600"}
    owner: postgres
    group: postgres
"""

RETURN = r"""
written:
  description: The paths written (in check mode, those that would be), in the order given.
  returned: success
  type: list
  elements: str
"""

import grp
import os
import pwd

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.saasodoo.platform.plugins.module_utils.files import holds, write_atomically


def file_mode(text: str) -> int | None:
    """An octal mode from 0 to 07777 ("0644", "644", "0o644"); None for anything else."""
    try:
        mode = int(text, 8)
    except ValueError:
        return None
    return mode if 0 <= mode <= 0o7777 and not text.startswith(("-", "+")) else None


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            files=dict(
                type="list",
                elements="dict",
                required=True,
                options=dict(
                    path=dict(type="path", required=True),
                    content=dict(type="str", required=True, no_log=True),
                    mode=dict(type="str", required=True),
                ),
            ),
            owner=dict(type="str", default="root"),
            group=dict(type="str", default="root"),
        ),
        supports_check_mode=True,
    )
    p = module.params
    # Every entry is checked before any file is written: a refused run leaves them all as they were.
    modes = [file_mode(file["mode"]) for file in p["files"]]
    for file, mode in zip(p["files"], modes, strict=True):
        if mode is None:
            module.fail_json(msg=f"{file['path']}: mode {file['mode']!r} is not an octal mode (0644)")
    try:
        uid, gid = pwd.getpwnam(p["owner"]).pw_uid, grp.getgrnam(p["group"]).gr_gid
    except KeyError as error:
        if not module.check_mode:
            module.fail_json(msg=f"no such owner or group: {error}")
        uid = gid = None  # a host not converged yet (check mode): every file would be written
    missing = [file["path"] for file in p["files"] if not os.path.isdir(os.path.dirname(file["path"]))]
    if missing and not module.check_mode:
        module.fail_json(msg=f"{missing[0]}: its directory is not there")
    written = []
    for file, mode in zip(p["files"], modes, strict=True):
        path, content = file["path"], file["content"].encode()
        content += b"" if content.endswith(b"\n") else b"\n"
        try:
            if uid is not None and path not in missing and holds(path, content, uid, gid, mode):
                continue
            written.append(path)
            if not module.check_mode:
                write_atomically(path, content, uid, gid, mode)
        except OSError as error:  # e.g. a directory where the file goes
            module.fail_json(msg=f"{path}: {error}")
    module.exit_json(changed=bool(written), written=written)


if __name__ == "__main__":
    main()
