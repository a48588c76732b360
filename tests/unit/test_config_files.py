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
        {"path": str(directory / "server.crt"), "content": "CERTIFICATE", "mode": "0644"},  # the line break is added
        {"path": str(directory / "server.key"), "content": "PRIVATE KEY\n", "mode": "0600"},
    ]


def test_it_writes_what_differs_once_and_then_nothing(tmp_path: Path):
    (tmp_path / "server.crt").write_text("CERTIFICATE\n")
    (tmp_path / "server.crt").chmod(0o600)  # the right content, the wrong mode
    first = run_module("config_files", {"files": files(tmp_path), **ME}, tmp_path)
    assert first["changed"] and first["written"] == [str(tmp_path / "server.crt"), str(tmp_path / "server.key")]
    written = [tmp_path / "server.crt", tmp_path / "server.key"]
    assert [path.read_text() for path in written] == ["CERTIFICATE\n", "PRIVATE KEY\n"]
    assert [path.stat().st_mode & 0o7777 for path in written] == [0o644, 0o600]
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
    # A host not converged yet: no directory, no owner. Check mode says what the run would write.
    fresh = {"files": files(tmp_path / "nowhere"), "owner": "no_such_user_here", "group": "no_such_group_here"}
    result = run_module("config_files", fresh, tmp_path, check_mode=True)
    assert not result.get("failed") and result["written"] == [entry["path"] for entry in fresh["files"]], result


def test_a_missing_directory_or_a_file_mode_out_of_range_is_refused_before_anything_is_written(tmp_path: Path):
    missing = run_module("config_files", {"files": files(tmp_path / "nowhere"), **ME}, tmp_path)
    assert missing["failed"] and missing["msg"] == f"{tmp_path / 'nowhere' / 'server.crt'}: its directory is not there"
    for mode in ("rw-r--r--", "-1", "100644", "+644"):
        entries = files(tmp_path)
        entries[1]["mode"] = mode
        result = run_module("config_files", {"files": entries, **ME}, tmp_path)
        assert result["failed"] and result["msg"].endswith(f"mode {mode!r} is not an octal mode (0644)"), result
        assert not (tmp_path / "server.crt").exists()  # the first entry was fine, and is not written either


def test_a_directory_where_a_file_goes_fails_with_its_path(tmp_path: Path):
    (tmp_path / "server.key").mkdir()
    result = run_module("config_files", {"files": files(tmp_path), **ME}, tmp_path)
    assert result["failed"] and result["msg"].startswith(f"{tmp_path / 'server.key'}: "), result


def test_directories_come_first_with_their_modes_and_their_missing_parents_as_mkdir_makes_them(tmp_path: Path):
    archive, conf = tmp_path / "backups" / "wal", tmp_path / "conf.d"
    conf.mkdir(mode=0o755)  # there already, the wrong mode
    arguments = {
        "directories": [{"path": str(archive), "mode": "0700"}, {"path": str(conf), "mode": "0750"}],
        "files": [{"path": str(conf / "10-site.conf"), "content": "port = 5432", "mode": "0640"}],
        **ME,
    }
    umask = os.umask(0o077)  # a hardened host's: the module inherits it
    try:
        first = run_module("config_files", arguments, tmp_path)
    finally:
        os.umask(umask)
    assert first["changed"] and first["made"] == [str(archive), str(conf)], first
    assert first["written"] == [str(conf / "10-site.conf")]
    assert [path.stat().st_mode & 0o7777 for path in (archive, conf)] == [0o700, 0o750]
    assert (archive.parent.stat().st_mode & 0o7777) == 0o755  # the umask's 077 below, yet others may pass
    second = run_module("config_files", arguments, tmp_path)
    assert not second["changed"] and second["made"] == [] and second["written"] == []


def test_check_mode_names_the_directories_it_would_make_and_the_files_in_them(tmp_path: Path):
    arguments = {
        "directories": [{"path": str(tmp_path / "new"), "mode": "0700"}],
        "files": files(tmp_path / "new"),
        **ME,
    }
    result = run_module("config_files", arguments, tmp_path, check_mode=True)
    assert not result.get("failed") and result["made"] == [str(tmp_path / "new")] and len(result["written"]) == 2
    assert not (tmp_path / "new").exists()


def test_a_link_or_a_file_where_a_directory_goes_is_refused_and_nothing_is_followed(tmp_path: Path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o755)
    (tmp_path / "linked").symlink_to(elsewhere)
    (tmp_path / "plain").write_text("")
    for name, what in (("linked", "a link"), ("plain", "a file")):
        arguments = {"directories": [{"path": str(tmp_path / name), "mode": "0700"}], **ME}
        result = run_module("config_files", arguments, tmp_path)
        assert result["failed"] and result["msg"] == f"{tmp_path / name}: not a directory ({what} is there)", result
    assert elsewhere.stat().st_mode & 0o7777 == 0o755


def test_a_link_is_followed_only_where_no_one_but_root_could_have_put_it(tmp_path: Path):
    # tmp_path is root's, 0700: a link there is root's own. In a directory the postgres user (here: nobody) owns,
    # a link planted in place of the cluster's data directory must not take root's writes elsewhere.
    (tmp_path / "real").mkdir()
    (tmp_path / "linked").symlink_to(tmp_path / "real")
    cluster, elsewhere = tmp_path / "cluster", tmp_path / "elsewhere"
    cluster.mkdir()
    elsewhere.mkdir()
    (cluster / "data").symlink_to(elsewhere)
    os.chown(cluster, 65534, 65534)
    followed = run_module("config_files", {"files": files(tmp_path / "linked"), **ME}, tmp_path)
    assert followed["changed"] and (tmp_path / "real" / "server.key").read_text() == "PRIVATE KEY\n", followed
    for arguments in (
        {"files": files(cluster / "data")},
        {"directories": [{"path": str(cluster / "data" / "conf.d"), "mode": "0750"}]},
    ):
        refused = run_module("config_files", arguments | ME, tmp_path)
        assert refused["failed"] and "data is a link where another user may write, not followed" in refused["msg"]
    assert list(elsewhere.iterdir()) == []


def test_a_relative_path_is_refused(tmp_path: Path):
    result = run_module("config_files", {"files": [{"path": "server.key", "content": "x", "mode": "0600"}]}, tmp_path)
    assert result["failed"] and result["msg"] == "server.key: not an absolute path", result
