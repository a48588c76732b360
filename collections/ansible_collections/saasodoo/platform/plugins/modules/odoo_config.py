#!/usr/bin/python
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One tenant's odoo.conf for an Odoo that runs elsewhere, in one module call."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: odoo_config
short_description: Converge one tenant's config directory and odoo.conf (the runtime C(none))
description:
  - The implementation of C(roles/odoo_runtime)'s C(none) backend, which is where playbooks call it from. With it
    the tenant gets its database, storage and an odoo.conf for an Odoo run elsewhere, nothing else. The role renders
    the odoo.conf; this module does in one call what C(file) and C(template) did in three module runs.
  - The directory is made C(0750) and the file written atomically C(0600), both root's, only when they differ.
    C(absent) removes the directory.
version_added: 0.2.0
author: SaaSOdoo ops maintainers (@saasodoo)
options:
  state:
    description: Whether the tenant's config should be there.
    type: str
    choices: [present, absent]
    default: present
  tenant_dir:
    description: The tenant's config directory.
    type: path
    required: true
  config:
    description: The content of the tenant's odoo.conf (it holds the database password). Required when present.
    type: str
extends_documentation_fragment:
  - saasodoo.platform.attributes
"""

EXAMPLES = r"""
- name: Ensure the tenant's odoo.conf
  saasodoo.platform.odoo_config:
    tenant_dir: /srv/saasodoo/tenants/acme
    config: "{{ lookup('ansible.builtin.template', 'odoo.conf.j2') }}"
"""

RETURN = r"""
actions:
  description: What the module changed, in order.
  returned: always
  type: list
  elements: str
"""

import os
import shutil
import stat

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.saasodoo.platform.plugins.module_utils.files import holds, write_atomically

DIR_MODE = 0o750
CONFIG_MODE = 0o600


def converge(module: AnsibleModule) -> list[str]:
    p, actions = module.params, []
    tenant_dir = p["tenant_dir"]
    if p["state"] == "absent":
        if os.path.lexists(tenant_dir):
            actions.append(f"removed {tenant_dir}")
            if not module.check_mode:
                shutil.rmtree(tenant_dir)
        return actions
    try:
        st = os.lstat(tenant_dir)
    except FileNotFoundError:
        st = None
    if st is not None and not stat.S_ISDIR(st.st_mode):
        module.fail_json(msg=f"{tenant_dir} is not a directory: move it away and run again")
    if st is None or (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) != (0, 0, DIR_MODE):
        actions.append(f"made {tenant_dir}" if st is None else f"set owner and mode of {tenant_dir}")
        if not module.check_mode:
            os.makedirs(tenant_dir, DIR_MODE, exist_ok=True)
            os.chown(tenant_dir, 0, 0)
            os.chmod(tenant_dir, DIR_MODE)
    path, content = os.path.join(tenant_dir, "odoo.conf"), p["config"].encode()
    if not holds(path, content, 0, 0, CONFIG_MODE):
        actions.append("wrote odoo.conf")
        if not module.check_mode:
            write_atomically(path, content, 0, 0, CONFIG_MODE)
    return actions


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type="str", choices=["present", "absent"], default="present"),
            tenant_dir=dict(type="path", required=True),
            config=dict(type="str", no_log=True),
        ),
        required_if=[("state", "present", ["config"])],
        supports_check_mode=True,
    )
    try:
        actions = converge(module)
    except OSError as error:
        module.fail_json(msg=f"tenant config in {module.params['tenant_dir']}: {error}")
    module.exit_json(changed=bool(actions), actions=actions)


if __name__ == "__main__":
    main()
