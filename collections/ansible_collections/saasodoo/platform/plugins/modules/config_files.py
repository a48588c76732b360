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
    differ. A link or anything else found at a file's path is replaced, never followed. The directory must exist.
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
        description: Its whole content.
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
  description: The paths written, in the order given.
  returned: always
  type: list
  elements: str
"""

import grp
import os
import pwd

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.saasodoo.platform.plugins.module_utils.files import holds, write_atomically


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
    try:
        uid, gid = pwd.getpwnam(p["owner"]).pw_uid, grp.getgrnam(p["group"]).gr_gid
    except KeyError as error:
        module.fail_json(msg=f"no such owner or group: {error}")
    written = []
    for file in p["files"]:
        path, content = file["path"], file["content"].encode()
        try:
            mode = int(file["mode"], 8)
        except ValueError:
            module.fail_json(msg=f"{path}: mode {file['mode']!r} is not octal")
        if not os.path.isdir(os.path.dirname(path)):
            module.fail_json(msg=f"{path}: its directory is not there", written=written)
        if holds(path, content, uid, gid, mode):
            continue
        written.append(path)
        if not module.check_mode:
            try:
                write_atomically(path, content, uid, gid, mode)
            except OSError as error:
                module.fail_json(msg=f"{path}: {error}", written=written[:-1])
    module.exit_json(changed=bool(written), written=written)


if __name__ == "__main__":
    main()
