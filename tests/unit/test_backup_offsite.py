"""The offsite copy's pieces that need no S3 store: what a fetched copy may hold, how openssl gets its passphrase,
and the client's settings on an older botocore (the store itself: tests/integration/test_tenant_lifecycle.py)."""

from __future__ import annotations

import os

import botocore.config

from ansible_collections.saasodoo.platform.plugins.modules import backup_offsite


def test_a_fetched_copy_may_hold_only_files_and_directories(tmp_path):
    (tmp_path / "database").mkdir()
    (tmp_path / "database/toc.dat").write_bytes(b"toc")
    assert backup_offsite.only_files_and_directories(str(tmp_path)) == []
    (tmp_path / "database/link").symlink_to("/etc/shadow")
    os.mkfifo(tmp_path / "fifo")
    assert sorted(backup_offsite.only_files_and_directories(str(tmp_path))) == ["database/link", "fifo"]


def test_openssl_reads_the_passphrase_from_its_environment_not_its_arguments():
    for decrypt in (False, True):
        argv = backup_offsite.openssl(decrypt)
        assert argv[argv.index("-pass") + 1] == f"env:{backup_offsite.PASSPHRASE_VARIABLE}"
        assert ("-d" in argv) == decrypt


def test_the_client_works_with_a_botocore_that_knows_no_checksum_settings(monkeypatch):
    class OldConfig(botocore.config.Config):  # as Debian 12's botocore 1.29: no request_checksum_calculation
        def __init__(self, *args, **kwargs):
            if "request_checksum_calculation" in kwargs:
                raise TypeError("Got unexpected keyword argument 'request_checksum_calculation'")
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(botocore.config, "Config", OldConfig)
    store = {"endpoint": "localhost", "port": 19443, "bucket": "b", "access_key": "A"}
    s3 = backup_offsite.client(store, "secret")
    assert s3.meta.endpoint_url == "https://localhost:19443"
    assert s3.meta.config.s3 == {"addressing_style": "path"}
