#!/usr/bin/python
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Copy a tenant backup to the offsite S3 store, encrypted, fetch it back, or delete copies."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: backup_offsite
short_description: A tenant backup's encrypted copy in the offsite S3 store
description:
  - A tenant backup (a directory with its parts and C(manifest.json), see M(saasodoo.platform.backup_manifest)) is
    kept off site as one object, a tar stream of the directory encrypted by C(openssl enc -aes-256-cbc -pbkdf2)
    with I(passphrase); nothing is staged on disk, in either direction.
  - C(present) uploads the copy unless the object exists (a backup's parts never change). C(fetched) brings the
    backup back into I(path) when I(path) has no manifest, through a hidden directory beside it renamed into place
    once complete, so a fetch cut short leaves nothing a restore would take; the restore then verifies the parts
    against the manifest and the manifest against the registry, which also catches a copy changed off site.
    C(absent) deletes the copies of I(backup_ids); C(purged) every copy of the tenant.
  - A copy is the object C(tenants/<tenant id>/<backup id>.tar.enc).
  - The store is any S3 endpoint, reached over HTTPS with path-style addressing; checksums are sent only where the
    operation requires one (Ceph 16's gateway refuses the newer default).
version_added: 0.2.0
author: SaaSOdoo ops maintainers (@saasodoo)
requirements: [boto3, tar, openssl]
options:
  state:
    description: Upload the copy, fetch it back into I(path), delete copies, or delete all the tenant's.
    type: str
    choices: [present, fetched, absent, purged]
    default: present
  path:
    description: The backup's directory (C(present), C(fetched)).
    type: path
  tenant_id:
    description: The tenant whose backup it is.
    type: str
    required: true
  backup_id:
    description: The backup (C(present), C(fetched)).
    type: str
  backup_ids:
    description: The backups whose copies are deleted (C(absent)).
    type: list
    elements: str
    default: []
  store:
    description:
      - The S3 store, C({endpoint, port, region, bucket, access_key}), and C(ca_file), a CA file its certificate is
        checked against (the system's CAs without it). No secret, those are I(secret_key) and I(passphrase).
    type: dict
    required: true
  secret_key:
    description: The access key's secret.
    type: str
    required: true
  passphrase:
    description: The copies' encryption passphrase (C(present), C(fetched)).
    type: str
extends_documentation_fragment:
  - saasodoo.platform.attributes
"""

EXAMPLES = r"""
- name: Copy the new backup off site
  saasodoo.platform.backup_offsite:
    path: /var/backups/saasodoo/acme/acme-20261121T101500123456Z
    tenant_id: acme
    backup_id: acme-20261121T101500123456Z
    store: "{{ saasodoo_offsite_backups }}"
    secret_key: "{{ saasodoo_offsite_backups_secret_key }}"
    passphrase: "{{ saasodoo_offsite_backups_passphrase }}"

- name: Delete a purged tenant's copies
  saasodoo.platform.backup_offsite:
    state: purged
    tenant_id: acme
    store: "{{ saasodoo_offsite_backups }}"
    secret_key: "{{ saasodoo_offsite_backups_secret_key }}"
"""

RETURN = r"""
deleted:
  description: The object keys deleted (C(absent), C(purged)).
  returned: success
  type: list
  elements: str
"""

import os
import shutil
import stat
import subprocess
import tempfile

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

try:
    import boto3
    import botocore.config
    import botocore.exceptions
except ImportError:
    boto3 = None

MANIFEST = "manifest.json"
# openssl reads the passphrase from its environment, never from its command line (which ps shows).
PASSPHRASE_VARIABLE = "SAASODOO_OFFSITE_PASSPHRASE"  # noqa: S105 (the variable's name)


def tenant_prefix(tenant_id: str) -> str:
    return f"tenants/{tenant_id}/"


def object_key(tenant_id: str, backup_id: str) -> str:
    return f"{tenant_prefix(tenant_id)}{backup_id}.tar.enc"


def client(store: dict, secret_key: str):
    settings = {"s3": {"addressing_style": "path"}, "retries": {"mode": "standard", "max_attempts": 5}}
    # botocore 1.36 and later send checksummed, chunked uploads by default, which Ceph 16's gateway refuses
    # (MissingContentLength): only where the operation requires one. Older ones (Debian 12's) know no such setting.
    checksums = {"request_checksum_calculation": "when_required", "response_checksum_validation": "when_required"}
    try:
        config = botocore.config.Config(**settings, **checksums)
    except TypeError:
        config = botocore.config.Config(**settings)
    return boto3.client(
        "s3",
        endpoint_url=f"https://{store['endpoint']}:{store.get('port', 443)}",
        aws_access_key_id=store["access_key"],
        aws_secret_access_key=secret_key,
        region_name=store.get("region") or "us-east-1",
        verify=store.get("ca_file") or True,
        config=config,
    )


def exists(s3, bucket: str, key: str) -> bool:
    try:
        s3.head_object(Bucket=bucket, Key=key)
    except botocore.exceptions.ClientError as error:
        if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise
    return True


def openssl(decrypt: bool) -> list[str]:
    return [
        "/usr/bin/openssl",
        "enc",
        "-aes-256-cbc",
        "-pbkdf2",
        "-iter",
        "100000",
        *(["-d"] if decrypt else []),
        "-pass",
        f"env:{PASSPHRASE_VARIABLE}",
    ]


def said(errors) -> str:
    """What a finished child wrote to its stderr (a file: a pipe nobody reads while it runs could fill and stall it)."""
    errors.seek(0)
    return errors.read().decode(errors="replace").strip()[-2000:]


def upload(s3, bucket: str, key: str, path: str, passphrase: str) -> None:
    """tar | openssl into the object; a tar or openssl that failed deletes what was uploaded."""
    env = {**os.environ, PASSPHRASE_VARIABLE: passphrase}
    with tempfile.TemporaryFile() as tar_errors, tempfile.TemporaryFile() as encrypt_errors:
        tar = subprocess.Popen(
            ["/usr/bin/tar", "--create", "--file=-", f"--directory={path}", "."],
            stdout=subprocess.PIPE,
            stderr=tar_errors,
        )
        encrypt = subprocess.Popen(openssl(False), stdin=tar.stdout, stdout=subprocess.PIPE, stderr=encrypt_errors,
                                   env=env)  # fmt: skip
        tar.stdout.close()  # openssl holds the pipe now
        try:
            s3.upload_fileobj(encrypt.stdout, bucket, key)
        finally:
            encrypt.stdout.close()
            tar_rc, encrypt_rc = tar.wait(), encrypt.wait()
        if tar_rc or encrypt_rc:
            s3.delete_object(Bucket=bucket, Key=key)
            raise RuntimeError(
                f"tar exited {tar_rc} ({said(tar_errors)}), openssl {encrypt_rc} ({said(encrypt_errors)}):"
                f" the copy of {path} was not kept"
            )


def only_files_and_directories(root: str) -> list[str]:
    """What under root is neither a regular file nor a directory (a backup holds no link, device or fifo)."""
    odd = []
    for directory, directories, files in os.walk(root):
        for name in directories + files:
            mode = os.lstat(os.path.join(directory, name)).st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                odd.append(os.path.relpath(os.path.join(directory, name), root))
    return odd


def download(s3, bucket: str, key: str, path: str, passphrase: str) -> None:
    """The object through openssl -d | tar into a hidden directory beside `path`, renamed into place when whole.
    Extracted as root's, without the archive's owners, modes or special bits; anything but files and directories
    refuses the copy."""
    partial = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.offsite")
    shutil.rmtree(partial, ignore_errors=True)  # what an interrupted fetch left
    os.makedirs(partial, mode=0o700)
    env = {**os.environ, PASSPHRASE_VARIABLE: passphrase}
    try:
        with tempfile.TemporaryFile() as decrypt_errors, tempfile.TemporaryFile() as tar_errors:
            decrypt = subprocess.Popen(openssl(True), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       stderr=decrypt_errors, env=env)  # fmt: skip
            tar = subprocess.Popen(
                ["/usr/bin/tar", "--extract", "--file=-", f"--directory={partial}", "--no-same-owner",
                 "--no-same-permissions"],
                stdin=decrypt.stdout,
                stderr=tar_errors,
            )  # fmt: skip
            decrypt.stdout.close()  # tar holds the pipe now
            try:
                s3.download_fileobj(bucket, key, decrypt.stdin)
            finally:
                decrypt.stdin.close()
                decrypt_rc, tar_rc = decrypt.wait(), tar.wait()
            if decrypt_rc or tar_rc or not os.path.exists(os.path.join(partial, MANIFEST)):
                raise RuntimeError(
                    f"the copy {key} could not be read back: openssl exited {decrypt_rc} ({said(decrypt_errors)}),"
                    f" tar {tar_rc} ({said(tar_errors)})"
                )
        odd = only_files_and_directories(partial)
        if odd:
            raise RuntimeError(f"the copy {key} holds what no backup does (not a file or directory): {odd[:5]}")
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    os.rename(partial, path)


def keys_under(s3, bucket: str, prefix: str) -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type="str", choices=["present", "fetched", "absent", "purged"], default="present"),
            path=dict(type="path"),
            tenant_id=dict(type="str", required=True),
            backup_id=dict(type="str"),
            backup_ids=dict(type="list", elements="str", default=[]),
            store=dict(type="dict", required=True),
            secret_key=dict(type="str", required=True, no_log=True),
            passphrase=dict(type="str", no_log=True),
        ),
        required_if=[
            ("state", "present", ("path", "backup_id", "passphrase")),
            ("state", "fetched", ("path", "backup_id", "passphrase")),
        ],
        supports_check_mode=True,
    )
    if boto3 is None:
        module.fail_json(msg=missing_required_lib("boto3"))
    params = module.params
    state, path, store, tenant_id = params["state"], params["path"], params["store"], params["tenant_id"]
    missing = [name for name in ("endpoint", "bucket", "access_key") if not store.get(name)]
    if missing:
        module.fail_json(msg=f"the offsite store lacks {', '.join(missing)}")
    unknown = sorted(set(store) - {"endpoint", "port", "region", "bucket", "access_key", "ca_file"})
    if unknown:  # a secret there would be in the arguments Ansible shows: refused, so they stay in their own options
        module.fail_json(
            msg=f"the offsite store has unknown keys {unknown}: its secrets are options of their own "
            "(secret_key, passphrase), hidden from logs"
        )
    named = [tenant_id, *([params["backup_id"]] if params["backup_id"] else []), *params["backup_ids"]]
    if any(not name or "/" in name for name in named):  # each names one level of the object keys
        module.fail_json(msg=f"a tenant or backup id is empty or holds a /: {named}")
    key = object_key(tenant_id, params["backup_id"]) if params["backup_id"] else None
    bucket = store["bucket"]
    try:
        s3 = client(store, params["secret_key"])
        if state == "present":
            if module.check_mode and not os.path.exists(path):  # the backup this run would take
                module.exit_json(changed=True, deleted=[])
            if not os.path.exists(os.path.join(path, MANIFEST)):
                module.fail_json(msg=f"{path} has no {MANIFEST}: only a complete backup is copied off site")
            if exists(s3, bucket, key):
                module.exit_json(changed=False, deleted=[])
            if not module.check_mode:
                upload(s3, bucket, key, path, params["passphrase"])
            module.exit_json(changed=True, deleted=[])
        if state == "fetched":
            if os.path.exists(os.path.join(path, MANIFEST)):
                module.exit_json(changed=False, deleted=[])
            if os.path.lexists(path):
                module.fail_json(
                    msg=f"{path} exists without its {MANIFEST}: a partial backup, not overwritten; "
                    "move it aside to fetch the offsite copy"
                )
            if not exists(s3, bucket, key):
                module.fail_json(msg=f"the backup has no offsite copy ({key} is not in bucket {bucket}) to fetch")
            if not module.check_mode:
                download(s3, bucket, key, path, params["passphrase"])
            module.exit_json(changed=True, deleted=[])
        if state == "purged":
            doomed = keys_under(s3, bucket, tenant_prefix(tenant_id))
        else:
            doomed = [k for k in (object_key(tenant_id, b) for b in params["backup_ids"]) if exists(s3, bucket, k)]
        if doomed and not module.check_mode:
            for start in range(0, len(doomed), 1000):  # DeleteObjects takes up to 1000 keys
                batch = [{"Key": k} for k in doomed[start : start + 1000]]
                refused = s3.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True}).get("Errors")
                if refused:
                    raise RuntimeError(f"{len(refused)} copies not deleted, e.g. {refused[0]}")
        module.exit_json(changed=bool(doomed), deleted=doomed)
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, RuntimeError, OSError) as error:
        module.fail_json(msg=f"offsite store {store['endpoint']}, bucket {bucket}: {error}")


if __name__ == "__main__":
    main()
