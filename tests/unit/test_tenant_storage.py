"""saasodoo.platform.tenant_storage on the local backend: the usage it reports, and its warning over the quota."""

from __future__ import annotations

from pathlib import Path

from conftest import run_module


def test_a_tenant_over_its_quota_is_reported_with_a_warning_and_one_under_it_without(tmp_path: Path):
    arguments = {"tenant_id": "acme", "db_name": "acme_db", "root": str(tmp_path / "storage"), "quota_bytes": 1 << 30}
    first = run_module("tenant_storage", arguments, tmp_path)
    assert first["changed"] and not first.get("warnings"), first
    filestore = Path(first["storage"]["path"]) / "filestore"
    (filestore / "attachment").write_bytes(b"x" * 8192)
    over = run_module("tenant_storage", arguments | {"quota_bytes": 4096}, tmp_path)
    assert over["storage"]["used_bytes"] > 4096 and not over["changed"], over
    assert [warning["event"]["msg"] for warning in over["warnings"]] == [
        f"tenant acme uses {over['storage']['used_bytes']} bytes in {first['storage']['path']}, over its quota of "
        "4096 bytes (not enforced on the local backend)"
    ]
