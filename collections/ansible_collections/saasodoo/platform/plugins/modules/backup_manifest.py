#!/usr/bin/python
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Write or verify the manifest of a tenant backup: the sha256 of every part."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: backup_manifest
short_description: Write or verify a tenant backup's manifest (sha256 of every part)
description:
  - A backup is a directory holding its parts (a directory-format dump under C(database/), the filestore
    archive) and C(manifest.json), which lists every part with its size and sha256.
  - C(present) writes the manifest from the parts found in I(path), once; a backup that already has one is left
    as it is (its parts are immutable). C(verified) recomputes every part's sha256 and fails, naming each
    part that is missing, extra or changed, unless all match; with I(manifest_sha256) it first checks the
    manifest itself against the digest recorded in the registry.
  - Returns the manifest's own sha256, recorded in the registry so a swapped manifest is caught too.
version_added: 0.1.0
author: SaaSOdoo ops maintainers (@saasodoo)
options:
  path:
    description: The backup's directory.
    type: path
    required: true
  state:
    description: Write the manifest, or verify the parts against it.
    type: str
    choices: [present, verified]
    default: present
  meta:
    description: Facts stored in the manifest beside the parts (backup id, tenant, database, plan, ...).
    type: dict
    default: {}
  manifest_sha256:
    description: The digest of C(manifest.json) the registry recorded; C(verified) checks it first.
    type: str
extends_documentation_fragment:
  - saasodoo.platform.attributes
"""

EXAMPLES = r"""
- name: Write the manifest of the new backup
  saasodoo.platform.backup_manifest:
    path: /var/backups/saasodoo/acme/acme-20261121T101500123456Z
    meta: {backup_id: acme-20261121T101500123456Z, tenant_id: acme, db_name: t_acme}
  register: manifest

- name: Verify a backup before restoring it
  saasodoo.platform.backup_manifest:
    path: /var/backups/saasodoo/acme/acme-20261121T101500123456Z
    state: verified
    manifest_sha256: "{{ backup.manifest_sha256 }}"
"""

RETURN = r"""
manifest:
  description: The manifest's content.
  returned: success
  type: dict
  sample: {"meta": {"tenant_id": "acme"}, "parts": {"filestore.tar.gz": {"bytes": 1024, "sha256": "…"}}}
manifest_sha256:
  description: sha256 of manifest.json.
  returned: success
  type: str
bytes:
  description: Total size of the parts.
  returned: success
  type: int
"""

import hashlib
import json
import os

from ansible.module_utils.basic import AnsibleModule

MANIFEST = "manifest.json"


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def parts_of(root: str) -> dict[str, dict]:
    """Every file under root but the manifest, by path relative to root, with its size and sha256."""
    parts = {}
    for directory, _directories, files in os.walk(root):
        for name in files:
            full = os.path.join(directory, name)
            relative = os.path.relpath(full, root)
            if relative != MANIFEST:
                parts[relative] = {"bytes": os.path.getsize(full), "sha256": sha256_of(full)}
    return dict(sorted(parts.items()))


def mismatches(expected: dict, found: dict) -> list[str]:
    problems = [f"{p}: missing" for p in expected if p not in found]
    problems += [f"{p}: not in the manifest" for p in found if p not in expected]
    problems += [
        f"{p}: sha256 {found[p]['sha256'][:12]}… but the manifest says {expected[p]['sha256'][:12]}…"
        for p in expected
        if p in found and found[p]["sha256"] != expected[p]["sha256"]
    ]
    return problems


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            state=dict(type="str", choices=["present", "verified"], default="present"),
            meta=dict(type="dict", default={}),
            manifest_sha256=dict(type="str"),
        ),
        supports_check_mode=True,
    )
    root, state = module.params["path"], module.params["state"]
    manifest_path = os.path.join(root, MANIFEST)
    if not os.path.isdir(root):
        module.fail_json(msg=f"backup directory {root} does not exist")

    if state == "present" and not os.path.exists(manifest_path):
        manifest = {"meta": module.params["meta"], "parts": parts_of(root)}
        text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
        if not module.check_mode:
            temporary = manifest_path + ".tmp"
            with open(temporary, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temporary, manifest_path)
        module.exit_json(
            changed=True,
            manifest=manifest,
            manifest_sha256=hashlib.sha256(text.encode()).hexdigest(),
            bytes=sum(p["bytes"] for p in manifest["parts"].values()),
        )

    if not os.path.exists(manifest_path):
        module.fail_json(msg=f"backup {root} has no {MANIFEST}: it is incomplete and cannot be restored")
    digest = sha256_of(manifest_path)
    expected_digest = module.params["manifest_sha256"]
    if state == "verified" and expected_digest and digest != expected_digest:
        module.fail_json(msg=f"{manifest_path} is not the manifest the registry recorded (sha256 {digest})")
    with open(manifest_path) as f:
        manifest = json.load(f)
    if state == "verified":
        problems = mismatches(manifest["parts"], parts_of(root))
        if problems:
            module.fail_json(msg=f"backup {root} does not match its manifest: " + "; ".join(problems))
    module.exit_json(
        changed=False,
        manifest=manifest,
        manifest_sha256=digest,
        bytes=sum(p["bytes"] for p in manifest["parts"].values()),
    )


if __name__ == "__main__":
    main()
