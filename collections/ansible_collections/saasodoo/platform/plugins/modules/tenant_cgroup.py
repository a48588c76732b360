#!/usr/bin/python
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A process-runtime tenant's control group with its plan's CPU and memory ceiling (module_utils/tenant_limits.py)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: tenant_cgroup
short_description: Keep a tenant's control group with its plan's CPU and memory ceiling
description:
  - The implementation of C(roles/odoo_runtime)'s C(odoo_runtime_limits=cgroup), for a host whose control groups
    no systemd owns. Root starts the tenant's programs in the group (C(cgexec)); every process they fork stays in it.
    Its directories are root's and C(0700), so the tenant's user can neither move a process out, nor make a group of its
    own, nor read another tenant's.
  - cgroup v1 (a C(cpu) and a C(memory) hierarchy, as on a hybrid host) or v2 (the unified hierarchy at
    C(/sys/fs/cgroup)), found on the host. A host without the CPU quota or the memory ceiling fails the module.
  - I(state=present) makes the group and sets its CPU quota (I(cpu) cores of each 100 ms period), its CPU weight
    (in proportion to I(cpu), so a busy host shares its CPU by plan) and its memory ceiling (I(memory_mb), and no swap
    where the kernel counts it), only where they differ. New values apply at once to the processes in it.
  - I(state=absent) kills what is left in the group, then removes it.
version_added: 0.2.0
author: SaaSOdoo ops maintainers (@saasodoo)
options:
  name:
    description:
      - The group's path under each hierarchy's root (the C(cgroup) of the C(saasodoo.platform.tenant_limits_names)
        filter, from the tenant's HTTP port).
    type: str
    required: true
  cpu:
    description: The cores the tenant may use (its plan's C(cpu)); required when present.
    type: float
  memory_mb:
    description: The memory its processes may hold, in MiB (its plan's C(memory_mb)); required when present.
    type: int
  lower_memory:
    description:
      - With I(state=present), lower a memory ceiling above I(memory_mb). Off, a higher ceiling is kept, since before
        a restart the running Odoo (with the old plan's workers) may hold more than the new plan allows.
    type: bool
    default: true
  empty:
    description:
      - With I(state=present), kill every process left in the group. The tenant's programs are stopped, and what it
        started on its own (a daemon, detached from them) must not run on.
    type: bool
    default: false
  state:
    description: Whether the group exists.
    type: str
    choices: [present, absent]
    default: present
extends_documentation_fragment:
  - saasodoo.platform.attributes
"""

EXAMPLES = r"""
- name: Ensure the tenant's control group has its plan's ceiling
  saasodoo.platform.tenant_cgroup:
    name: saasodoo/1f2e3d4c-20069
    cpu: 1
    memory_mb: 1024
"""

RETURN = r"""
actions:
  description: What was done.
  returned: always
  type: list
  elements: str
"""

import re

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.saasodoo.platform.plugins.module_utils.tenant_limits import (
    CgroupError,
    empty_group,
    ensure_group,
    remove_group,
)

# What limits_names makes: no '..', no absolute path, nothing a tenant names.
NAME = re.compile(r"[a-z0-9_-]+(/[a-z0-9_-]+)*")


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            name=dict(type="str", required=True),
            cpu=dict(type="float"),
            memory_mb=dict(type="int"),
            lower_memory=dict(type="bool", default=True),
            empty=dict(type="bool", default=False),
            state=dict(type="str", choices=["present", "absent"], default="present"),
        ),
        required_if=[("state", "present", ("cpu", "memory_mb"))],
        supports_check_mode=True,
    )
    p = module.params
    if not NAME.fullmatch(p["name"]):
        module.fail_json(msg=f"{p['name']!r} is not a control group's relative path")
    if p["state"] == "present" and (p["cpu"] <= 0 or p["memory_mb"] <= 0):
        module.fail_json(msg=f"a tenant's ceiling must be above zero: cpu {p['cpu']}, memory_mb {p['memory_mb']}")
    try:
        if p["state"] == "present":
            actions = ensure_group(p["name"], p["cpu"], p["memory_mb"], p["lower_memory"], module.check_mode)
            if p["empty"]:
                actions += empty_group(p["name"], module.check_mode)
        else:
            actions = remove_group(p["name"], module.check_mode)
    except (CgroupError, OSError) as error:
        module.fail_json(msg=f"control group {p['name']}: {error}")
    module.exit_json(changed=bool(actions), actions=actions)


if __name__ == "__main__":
    main()
