"""Files a module writes: as root into directories others may write to (a tenant's own, PgBouncer's), and the
certificates libpq must read from a file."""

from __future__ import annotations

import errno
import os
import secrets
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress


def holds(path: str, content: bytes, uid: int, gid: int, mode: int, dir_fd: int | None = None) -> bool:
    """Whether `path` is a regular file with that content, owner and mode. Whoever may write beside it could have
    planted a link, a FIFO or a huge file there: links are not followed, nothing blocks, and no more bytes are read
    than expected. With `dir_fd`, `path` is a name in that directory."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
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


def write_atomically(path: str, content: bytes, uid: int, gid: int, mode: int, dir_fd: int | None = None) -> None:
    """Write beside `path`, then rename over it: no reader ever sees half a file, and a link planted at `path` is
    replaced, not followed. With `dir_fd`, `path` is a name in that directory."""
    if dir_fd is None:
        fd, temporary = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".saasodoo-")
    else:
        temporary = f".saasodoo-{secrets.token_hex(8)}"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=dir_fd)
    try:
        os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(temporary, dir_fd=dir_fd)
        raise


def open_directory(path: str, make: bool = False) -> int:
    """A descriptor of the directory at absolute `path`, reached one name at a time from /. A link is followed only
    where no one but root and this user could have put it (in a directory one of them owns and no one else may write
    to): under a directory another user owns (the postgres user's cluster directory, PgBouncer's), a link planted in
    place of a directory cannot send root's writes elsewhere. With `make`, missing directories are made, mode 0755
    whatever the umask (the services' users pass through them). OSError when a name is missing (without `make`), a
    link not followed, or not a directory."""
    names = [part for part in os.path.normpath(path).split("/") if part]
    return _walk(os.open("/", os.O_RDONLY | os.O_DIRECTORY), names, lambda fd, name: _open_child(fd, name, make))


def _walk(fd: int, names: list[str], step) -> int:
    """From the directory open at `fd` (this takes the descriptor over), one name at a time: `step(fd, name)` opens
    the next; each parent is closed once its child is open, every descriptor on an error. The last one."""
    try:
        for name in names:
            child = step(fd, name)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_child(fd: int, name: str, make: bool) -> int:
    st = os.fstat(fd)
    trusted = st.st_uid in (0, os.geteuid()) and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    child = _open_subdirectory(fd, name, follow=trusted, not_followed=" where another user may write")
    if child is not None:
        return child
    if not make:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), name)
    os.mkdir(name, 0o700, dir_fd=fd)
    child = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
    os.fchmod(child, 0o755)
    return child


def open_beneath(fd: int, relative: str, make: tuple[int, int, int] | None = None) -> int:
    """A descriptor of the directory `relative` below the one open at `fd`, reached one name at a time and following
    no link at all: for the trees a tenant owns (it may swap any of its directories for a link, whoever owns the tree
    on paper). With `make` as (uid, gid, mode), a missing directory is made with that owner and mode. OSError when a
    name is missing (without `make`), a link, or not a directory."""

    def step(fd: int, name: str) -> int:
        if name == "..":
            raise OSError(errno.EPERM, f"{relative} climbs out of its directory")
        try:
            child = _open_subdirectory(fd, name, follow=False)
        except OSError as error:
            if error.errno == errno.ELOOP:
                raise
            raise OSError(error.errno, f"{name} is not a directory") from None
        if child is None:
            if make is None:
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), name)
            child = make_directory(fd, name, *make)
        return child

    return _walk(os.dup(fd), [part for part in relative.split("/") if part], step)


def _open_subdirectory(fd: int, name: str, follow: bool, not_followed: str = "") -> int | None:
    """The directory `name` in the one open at `fd`, opened (following a link there only with `follow`); None when
    it is missing. OSError for anything else: ELOOP, saying so, for a link not followed."""
    try:
        return os.open(name, os.O_RDONLY | os.O_DIRECTORY | (0 if follow else os.O_NOFOLLOW), dir_fd=fd)
    except FileNotFoundError:
        return None
    except OSError:  # ENOTDIR or ELOOP: say which
        if stat.S_ISLNK(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode):
            raise OSError(errno.ELOOP, f"{name} is a link{not_followed}, not followed") from None
        raise


def make_directory(fd: int, name: str, uid: int, gid: int, mode: int) -> int:
    """Make the directory `name` in the one open at `fd` with that owner and mode, and return its descriptor."""
    os.mkdir(name, 0o700, dir_fd=fd)
    child = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
    os.fchown(child, uid, gid)
    os.fchmod(child, mode)
    return child


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


def ensure_directory(path: str, ids: tuple[int, int] | None, mode: int, check_mode: bool = False) -> list[str]:
    """A directory at `path` with owner and group `ids` (None: whatever they are, in check mode before they exist)
    and `mode`; what was done. Where another user could have put a link or a file instead, that is removed, and the
    directory is changed through a descriptor opened without following links, so root never chmods or chowns where a
    link points. Its parents are root's, or a directory checked the same way."""
    actions = []
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except FileNotFoundError:
        fd = None
    except OSError:  # ELOOP (a link) or ENOTDIR (anything else): not ours to keep
        actions.append(f"removed what stood at {path}")
        if check_mode:
            return actions
        os.unlink(path)
        fd = None
    if fd is None:
        actions.append(f"made {path}")
        if check_mode:
            return actions
        os.makedirs(path, mode)
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        st = os.fstat(fd)
        if ids is None or (st.st_uid, st.st_gid, st.st_mode & 0o7777) != (*ids, mode):
            if actions[-1:] != [f"made {path}"]:
                actions.append(f"set owner and mode of {path}")
            if not check_mode:
                os.fchown(fd, *ids)
                os.fchmod(fd, mode)
    finally:
        os.close(fd)
    return actions


@contextmanager
def _directory_of(path: str):
    """The directory `path` is in, opened without following links (another user may own it and have made it a link
    to someone else's), and the name in it; None when it is gone or not a directory."""
    directory, name = os.path.split(path)
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        yield None
        return
    try:
        yield fd, name
    finally:
        os.close(fd)


def socket_at(path: str) -> bool:
    """Whether a Unix socket is at `path` (a link to one is not)."""
    with _directory_of(path) as found, suppress(FileNotFoundError):
        return found is not None and stat.S_ISSOCK(os.lstat(found[1], dir_fd=found[0]).st_mode)
    return False


def remove_unless_directory(path: str) -> None:
    """Whatever is at `path` removed, unless a directory: a socket its server left when killed (it would look like
    one listening), or anything another user put there."""
    with _directory_of(path) as found, suppress(FileNotFoundError):
        if found is not None and not stat.S_ISDIR(os.lstat(found[1], dir_fd=found[0]).st_mode):
            os.unlink(found[1], dir_fd=found[0])
