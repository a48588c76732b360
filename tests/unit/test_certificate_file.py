"""A certificate given to a module as content reaches libpq as a file that lasts only while connecting."""

from __future__ import annotations

import os

from ansible_collections.saasodoo.platform.plugins.module_utils.files import certificate_file

PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----"


def test_content_becomes_a_private_file_that_is_gone_after_the_block():
    with certificate_file(f"\n{PEM}\n\n", "test-ca-") as path:
        assert path is not None and os.path.basename(path).startswith("test-ca-")
        with open(path) as f:
            assert f.read() == PEM + "\n"
        assert os.stat(path).st_mode & 0o077 == 0  # the tempfile module's 0600: no other user reads it
    assert not os.path.exists(path)


def test_no_content_gives_no_file():
    for nothing in (None, ""):
        with certificate_file(nothing, "test-ca-") as path:
            assert path is None
