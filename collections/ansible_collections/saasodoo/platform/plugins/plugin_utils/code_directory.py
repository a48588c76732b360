"""A directory of compiled Python code kept between runs, the controller user's alone: the code caches' one store.

The directory is made 0700 and refused unless it is this user's and no one else may write to it; it is reached
through a descriptor opened once, so a directory renamed or replaced afterwards, even by someone who may write to the
ones above it, is never read. Entries are marshal data written whole (a temporary name, then a rename): a read that
fails, or an entry a crash cut short, is a miss, and the caller compiles as before.
"""

from __future__ import annotations

import contextlib
import marshal
import os

from ansible.utils.display import Display

display = Display()


def open_private(directory: str, purpose: str) -> int | None:
    """A descriptor of `directory` (made 0700 with its parents when missing), or None, with the reason shown at
    -vvv, when it is not this user's alone."""
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        directory_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as e:
        display.vvv(f"{purpose} off: {e}")
        return None
    status = os.fstat(directory_fd)
    if status.st_uid != os.geteuid() or status.st_mode & 0o077:
        os.close(directory_fd)
        display.vvv(f"{purpose} off: {directory} is not this user's alone")
        return None
    return directory_fd


def load(directory_fd: int, key: str) -> object | None:
    """The entry `key`, unmarshalled; None when it is missing or cannot be read (the caller checks its shape)."""
    try:
        descriptor = os.open(key, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=directory_fd)
        with os.fdopen(descriptor, "rb") as file:
            return marshal.load(file)  # noqa: S302 - this user's own 0700 directory (open_private)
    except (OSError, EOFError, ValueError, TypeError):
        return None


def keep(directory_fd: int, key: str, value: object) -> None:
    """Write `value` as the entry `key`, whole or not at all."""
    partial = f"{key}.{os.getpid()}.{os.urandom(4).hex()}"
    try:
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=directory_fd)
        with os.fdopen(descriptor, "wb") as file:
            marshal.dump(value, file)
        os.replace(partial, key, src_dir_fd=directory_fd, dst_dir_fd=directory_fd)
    except (OSError, ValueError):
        with contextlib.suppress(OSError):
            os.unlink(partial, dir_fd=directory_fd)
