#!/usr/bin/python
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Read the registry's audit chain: the playbook runs since a time, and whether the chain is intact."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: registry_audit_info
short_description: Read the playbook runs from the registry's audit chain and verify the chain
description:
  - The registry's audit trail (C(registry.audit)) is append-only and hash-chained. Every playbook run, typed by a
    person or started by the webhook runner, is recorded there by the C(saasodoo.platform.audit) callback plugin as
    C(run) rows (one when it starts, one when it ends); every row a module writes during the run names the run.
  - With I(since), returns the runs that started since then, oldest first, each with who ran it, the playbook,
    inventory, limit, check mode, the names of the extra variables (never their values), per-host counts, the
    outcome and the tenants whose audit rows name it.
  - With I(verify), recomputes every row's hash from its content and the hash before it, and returns where the
    chain breaks and its head (last row id and hash). It computes with PostgreSQL's own functions, never the
    registry's (whose owner could replace them), and fails when C(registry.audit) is no longer a plain table without
    row security. I(expect_head) checks that a head recorded earlier is still
    in the chain, and I(hash_of) returns the hash one row has now (the row of a head sealed earlier,
    C(playbooks/registry_audit_verify.yml)).
  - Only reads; never reports a change.
version_added: 0.2.0
author: SaaSOdoo ops maintainers (@saasodoo)
options:
  since:
    description: A timestamp such as C(2026-11-23T10:00Z), or an interval back from now such as C(-1d), C(-6h) or
      C(-30min) (PostgreSQL's interval syntax, with a unit). Runs that started at or after it are returned.
    type: str
  verify:
    description: Verify the whole chain and return its head.
    type: bool
    default: false
  expect_head:
    description: A head hash printed by an earlier verification; I(head.has_expected) says whether it is still in
      the chain.
    type: str
    default: ""
  hash_of:
    description: With I(verify), an audit row's id; I(row_hash) is the hash that row has now (null when there is
      none), read with the rest of the verification.
    type: int
extends_documentation_fragment:
  - saasodoo.platform.attributes
  - saasodoo.platform.registry_login
"""

EXAMPLES = r"""
- name: Read the runs of the last day
  saasodoo.platform.registry_audit_info:
    since: -1d
    login_password: "{{ registry_password }}"
  register: audit

- name: Verify the chain
  saasodoo.platform.registry_audit_info:
    verify: true
    expect_head: "{{ expect_head | default('') }}"
    login_password: "{{ registry_password }}"
  register: audit
"""

RETURN = r"""
runs:
  description: The runs since I(since), oldest first. C(outcome) is C(ok), C(failed) or C(unfinished) (interrupted,
    or the registry was unreachable when it ended).
  returned: when since is given
  type: list
  elements: dict
  sample: [{"run": "3f2a…", "started_at": "2026-11-23T10:00:01+00:00", "actor": "alice", "job": null,
            "playbook": "playbooks/tenant_suspend.yml", "inventory": ["inventories/local"], "limit": null,
            "check_mode": false, "extra_vars": ["tenant_id"], "outcome": "ok", "seconds": 4.2,
            "hosts": {"platform-db": {"ok": 5, "changed": 1, "failed": 0}}, "tenants": ["acme"]}]
breaks:
  description: Each row where the chain breaks, with the problem found.
  returned: when verify is true
  type: list
  elements: dict
head:
  description: The chain's length (C(rows)), its last row (C(head_id), C(head_hash)) and C(has_expected).
  returned: when verify is true
  type: dict
row_hash:
  description: The hash (hex) the row I(hash_of) has now, or null when there is no such row.
  returned: when verify is true and hash_of is given
  type: str
"""

import re

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.saasodoo.platform.plugins.module_utils.audit import (
    AuditTableReplaced,
    runs_since,
    verify_chain,
)
from ansible_collections.saasodoo.platform.plugins.module_utils.registry import (
    REGISTRY_LOGIN_OPTIONS,
    connect_registry,
    run_registry_module,
)

RELATIVE = re.compile(r"^\s*-\s*(.+)$")


class SinceError(ValueError):
    """`since` is neither a timestamp nor an interval with a unit."""


def since_timestamp(conn, since: str) -> str:
    """`since` as a timestamp: '-1d' counts back from now, anything else is read as a timestamp."""
    relative = RELATIVE.match(since)
    if relative and not re.search(r"[A-Za-z]", relative.group(1)):
        raise SinceError("an interval needs a unit")  # '1' alone would be one second
    query = "SELECT now() - %s::interval" if relative else "SELECT %s::timestamptz"
    return conn.execute(query, (relative.group(1) if relative else since,)).fetchone()[0].isoformat()


def run_module(module: AnsibleModule) -> dict:
    import psycopg

    p = module.params
    result: dict = dict(changed=False)
    with connect_registry(p) as conn:
        if p["since"] is not None:
            try:
                since = since_timestamp(conn, p["since"])
            except (psycopg.DataError, SinceError):
                module.fail_json(
                    msg=f"since must be a timestamp or an interval back from now such as -1d, -6h or -30min, "
                    f"not {p['since']!r}"
                )
            result.update(since=since, runs=runs_since(conn, since))
        if p["verify"]:
            checked = verify_chain(conn, p["expect_head"], p["hash_of"])
            result.update(breaks=checked["breaks"], head=checked["head"])
            if p["hash_of"] is not None:
                result.update(row_hash=checked["row_hash"])
    return result


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            since=dict(type="str"),
            verify=dict(type="bool", default=False),
            expect_head=dict(type="str", default="", no_log=False),
            hash_of=dict(type="int"),
            **REGISTRY_LOGIN_OPTIONS,
        ),
        required_one_of=[("since", "verify")],
        supports_check_mode=True,
    )
    run_registry_module(module, run_module, "registry error reading the audit chain", refusals=(AuditTableReplaced,))


if __name__ == "__main__":
    main()
