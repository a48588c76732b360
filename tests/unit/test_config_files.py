"""saasodoo.platform.config_files: a server's TLS files in one module call, as copy wrote them one by one."""

from __future__ import annotations

import grp
import os
import pwd
from pathlib import Path

from conftest import run_module

ME = {"owner": pwd.getpwuid(os.getuid()).pw_name, "group": grp.getgrgid(os.getgid()).gr_name}


def files(directory: Path) -> list[dict]:
    return [
        {"path": str(directory / "server.crt"), "content": "CERTIFICATE\n", "mode": "0644"},
        {"path": str(directory / "server.key"), "content": "PRIVATE KEY\n", "mode": "0600"},
    ]


def test_it_writes_what_differs_once_and_then_nothing(tmp_path: Path):
    (tmp_path / "server.crt").write_text("CERTIFICATE\n")
    (tmp_path / "server.crt").chmod(0o600)  # the right content, the wrong mode
    first = run_module("config_files", {"files": files(tmp_path), **ME}, tmp_path)
    assert first["changed"] and first["written"] == [str(tmp_path / "server.crt"), str(tmp_path / "server.key")]
    assert (tmp_path / "server.key").read_text() == "PRIVATE KEY\n"
    modes = [(tmp_path / name).stat().st_mode & 0o7777 for name in ("server.crt", "server.key")]
    assert modes == [0o644, 0o600]
    second = run_module("config_files", {"files": files(tmp_path), **ME}, tmp_path)
    assert not second["changed"] and second["written"] == []


def test_the_contents_stay_out_of_its_result(tmp_path: Path):
    result = run_module("config_files", {"files": files(tmp_path), **ME}, tmp_path)
    assert "PRIVATE KEY" not in str(result)


def test_a_link_where_a_file_goes_is_replaced_not_followed(tmp_path: Path):
    target = tmp_path / "elsewhere"
    target.write_text("not mine\n")
    (tmp_path / "server.key").symlink_to(target)
    run_module("config_files", {"files": files(tmp_path), **ME}, tmp_path)
    assert target.read_text() == "not mine\n"
    assert not (tmp_path / "server.key").is_symlink() and (tmp_path / "server.key").read_text() == "PRIVATE KEY\n"


def test_check_mode_says_what_it_would_write_and_writes_nothing(tmp_path: Path):
    result = run_module("config_files", {"files": files(tmp_path), **ME}, tmp_path, check_mode=True)
    assert result["changed"] and len(result["written"]) == 2
    assert not (tmp_path / "server.crt").exists()


def test_a_missing_directory_or_a_mode_that_is_not_octal_is_refused(tmp_path: Path):
    missing = run_module("config_files", {"files": files(tmp_path / "nowhere"), **ME}, tmp_path)
    assert missing["failed"] and missing["msg"] == f"{tmp_path / 'nowhere' / 'server.crt'}: its directory is not there"
    bad_mode = [{"path": str(tmp_path / "server.crt"), "content": "x", "mode": "rw-r--r--"}]
    result = run_module("config_files", {"files": bad_mode, **ME}, tmp_path)
    assert result["failed"] and result["msg"] == f"{tmp_path / 'server.crt'}: mode 'rw-r--r--' is not octal"
