"""module_utils/files.py's walks by descriptor: open_beneath follows no link in a tree a tenant owns, and neither walk
leaves a descriptor open, whether it reaches its directory or not."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from ansible_collections.saasodoo.platform.plugins.module_utils.files import open_beneath, open_directory


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def tree(tmp_path: Path) -> int:
    (tmp_path / "filestore" / "db").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (tmp_path / "filestore" / "link").symlink_to(tmp_path / "outside")
    (tmp_path / "filestore" / "file").write_text("")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    yield fd
    os.close(fd)


def test_open_beneath_reaches_a_directory_and_makes_what_is_missing(tree: int) -> None:
    before = open_descriptors()
    fd = open_beneath(tree, "filestore/db/new/deeper", make=(os.getuid(), os.getgid(), 0o750))
    try:
        assert stat.S_IMODE(os.fstat(fd).st_mode) == 0o750
        assert os.path.samestat(os.fstat(fd), os.stat("filestore/db/new/deeper", dir_fd=tree))
    finally:
        os.close(fd)
    assert open_descriptors() == before


@pytest.mark.parametrize(
    ("relative", "code", "said"),
    [
        ("filestore/link", errno.ELOOP, "link is a link, not followed"),
        ("filestore/link/anything", errno.ELOOP, "link is a link, not followed"),
        ("filestore/../outside", errno.EPERM, "climbs out of its directory"),
        ("filestore/file", errno.ENOTDIR, "file is not a directory"),
        ("filestore/missing", errno.ENOENT, "missing"),
    ],
)
def test_open_beneath_refuses_links_climbs_files_and_missing_names(tree: int, relative, code, said) -> None:
    before = open_descriptors()
    with pytest.raises(OSError) as refused:
        open_beneath(tree, relative, make=None)
    assert refused.value.errno == code
    assert said in str(refused.value)
    assert open_descriptors() == before


def test_open_directory_walks_from_the_root_and_closes_what_it_passed(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    before = open_descriptors()
    fd = open_directory(str(tmp_path / "a" / "b"))
    try:
        assert os.path.samestat(os.fstat(fd), os.stat(tmp_path / "a" / "b"))
    finally:
        os.close(fd)
    with pytest.raises(FileNotFoundError):
        open_directory(str(tmp_path / "a" / "missing"))
    assert open_descriptors() == before
