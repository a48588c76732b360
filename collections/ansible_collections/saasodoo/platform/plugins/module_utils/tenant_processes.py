"""What runs as a process tenant's OS user, and ending all of it when the tenant stops.

The tenant runs code of its own as its user (server actions, a module's code): it can start a daemon that leaves its
Odoo's process group (setsid), which supervisord's stop does not reach, and keep forking. Killed as the tenant's
own uid with kill(-1, SIGKILL), every process that uid may signal (its own, and a set-user-ID program one of them
started) is signalled in one pass of the kernel's task list, which a fork cannot outrun; a process forked before
that pass is in it. No other user's process is reachable that way, whatever the tenant did with its pids.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
import time

KILL_SECONDS = 10.0  # how long the kills are repeated before the stop fails
SETPRIV, KILL, IPCRM = "/usr/bin/setpriv", "/usr/bin/kill", "/usr/bin/ipcrm"  # util-linux's and procps's


def processes_of(uid: int) -> list[int]:
    """The live processes whose real uid is `uid` (a zombie, already dead, is its parent's to reap)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status", encoding="ascii", errors="replace") as status:
                fields = dict(line.split(":", 1) for line in status if ":" in line)
        except OSError:  # gone meanwhile
            continue
        if int(fields.get("Uid", "-1").split()[0]) == uid and not fields.get("State", "").strip().startswith("Z"):
            pids.append(int(entry))
    return pids


def kill_all_of(uid: int, gid: int) -> int:
    """Every process of `uid` killed (see above); how many there were. Raises OSError if some outlive
    KILL_SECONDS of kills, or for uid 0, which is nobody's to end this way."""
    if uid == 0:
        raise OSError("refusing to kill every process of root")
    found = processes_of(uid)
    deadline = time.monotonic() + KILL_SECONDS
    while left := processes_of(uid):
        # setpriv then kill: the kill runs as the tenant's uid, with its group and no other (the kernel checks the
        # sender's uid only); procps' kill sends to -1 as given, and the kernel spares the sender itself.
        subprocess.run(
            [
                "/usr/bin/setpriv",
                f"--reuid={uid}",
                f"--regid={gid}",
                "--clear-groups",
                "/usr/bin/kill",
                "-KILL",
                "--",
                "-1",
            ],
            capture_output=True,
            check=False,
        )
        if time.monotonic() > deadline:
            raise OSError(f"processes {left[:10]} of uid {uid} still run after {KILL_SECONDS:.0f} s of SIGKILL")
        time.sleep(0.02)
    return len(found)


# The directories every user may write to, where a tenant's code leaves files no tenant tree holds (an OS user's uid
# may be handed to the next tenant made once this one's is gone).
SHARED_DIRECTORIES = ("/tmp", "/var/tmp", "/dev/shm", "/dev/mqueue")  # noqa: S108 - emptied of a uid's, not written


def remove_files_of(uid: int, roots: tuple[str, ...] = SHARED_DIRECTORIES, check_mode: bool = False) -> list[str]:
    """What `uid` left at the top of `roots` (files, and directories with all they hold) removed, and its System V
    shared memory; what was removed. Reached through each root's descriptor and removed without following a link
    (shutil.rmtree by descriptor), so no link of anyone's leads root elsewhere."""
    if uid == 0:
        raise OSError("refusing to remove every file of root")
    removed = []
    for root in roots:
        try:
            fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            for entry in os.scandir(fd):
                with contextlib.suppress(FileNotFoundError):
                    st = entry.stat(follow_symlinks=False)
                    if st.st_uid != uid:
                        continue
                    if not check_mode and stat.S_ISDIR(st.st_mode):
                        shutil.rmtree(entry.name, dir_fd=fd)
                    elif not check_mode:
                        os.unlink(entry.name, dir_fd=fd)
                    removed.append(os.path.join(root, entry.name))
        finally:
            os.close(fd)
    with contextlib.suppress(FileNotFoundError), open("/proc/sysvipc/shm", encoding="ascii") as segments:
        for fields in (line.split() for line in list(segments)[1:]):
            if int(fields[7]) == uid:  # key shmid perms size cpid lpid nattch uid ...
                if not check_mode:
                    subprocess.run([IPCRM, "-m", fields[1]], capture_output=True, check=False)
                removed.append(f"shared memory {fields[1]}")
    return removed
