"""Files a module writes: as root into directories others may write to (a tenant's own, PgBouncer's), and the
certificates libpq must read from a file."""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager


def holds(path: str, content: bytes, uid: int, gid: int, mode: int) -> bool:
    """Whether `path` is a regular file with that content, owner and mode. Whoever may write beside it could have
    planted a link, a FIFO or a huge file there: links are not followed, nothing blocks, and no more bytes are read
    than expected."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:  # missing, or a link (ELOOP)
        return False
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        return (
            stat.S_ISREG(st.st_mode)
            and st.st_size == len(content)
            and (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (uid, gid, mode)
            and f.read(len(content) + 1) == content
        )


def write_atomically(path: str, content: bytes, uid: int, gid: int, mode: int) -> None:
    """Write beside `path`, then rename over it: no reader ever sees half a file, and a link planted at `path` is
    replaced, not followed."""
    fd, temporary = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".saasodoo-")
    try:
        os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


@contextmanager
def certificate_file(content: str | None, prefix: str) -> Iterator[str | None]:
    """A certificate given as content (a module runs on a host that may not hold the controller's file) as the
    path libpq's sslrootcert takes, for as long as the block runs (libpq reads it while connecting); None, and no
    file, without content."""
    if not content:
        yield None
        return
    with tempfile.NamedTemporaryFile("w", prefix=prefix, suffix=".crt") as certificate:
        certificate.write(content.strip() + "\n")
        certificate.flush()
        yield certificate.name
