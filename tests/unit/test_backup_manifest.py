"""The backup manifest's parts and how a changed backup is told apart (no database needed)."""

from __future__ import annotations

import hashlib

from ansible_collections.saasodoo.platform.plugins.modules.backup_manifest import MANIFEST, mismatches, parts_of


def make_backup(root):
    (root / "database").mkdir()
    (root / "database/toc.dat").write_bytes(b"toc")
    (root / "database/3456.dat.gz").write_bytes(b"rows")
    (root / "filestore.tar.gz").write_bytes(b"files")
    (root / MANIFEST).write_text("{}")
    return root


def test_every_part_but_the_manifest_is_listed_with_its_size_and_sha256(tmp_path):
    parts = parts_of(str(make_backup(tmp_path)))
    assert list(parts) == ["database/3456.dat.gz", "database/toc.dat", "filestore.tar.gz"]
    assert parts["filestore.tar.gz"] == {"bytes": 5, "sha256": hashlib.sha256(b"files").hexdigest()}


def test_an_intact_backup_has_no_mismatch(tmp_path):
    root = str(make_backup(tmp_path))
    assert mismatches(parts_of(root), parts_of(root)) == []


def test_changed_missing_and_extra_parts_are_each_named(tmp_path):
    root = make_backup(tmp_path)
    expected = parts_of(str(root))
    (root / "filestore.tar.gz").write_bytes(b"tampered")
    (root / "database/toc.dat").unlink()
    (root / "database/9999.dat.gz").write_bytes(b"stray")
    problems = mismatches(expected, parts_of(str(root)))
    assert "database/toc.dat: missing" in problems
    assert "database/9999.dat.gz: not in the manifest" in problems
    assert any(p.startswith("filestore.tar.gz: sha256") for p in problems)
    assert len(problems) == 3
