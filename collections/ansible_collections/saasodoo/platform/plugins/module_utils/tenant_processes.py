"""What runs as a process tenant's OS user, and ending all of it when the tenant stops.

The tenant runs code of its own as its user (server actions, a module's code): it can start a daemon that leaves its
Odoo's process group (setsid), which supervisord's stop does not reach, and keep forking. Killed as the tenant's
own uid with kill(-1, SIGKILL), every process that uid may signal is signalled in one pass of the kernel's task list,
which a fork cannot outrun; a process forked before that pass is in it. No other user's process is reachable that
way. The killer is a child forked by root that takes the tenant's uid as its effective one only (KILLER_UID) and
calls kill at once, without exec'ing a program: the tenant can neither signal nor trace it; root kills a killer that
does not end and tries again.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
import subprocess
import time

KILL_SECONDS = 10.0  # how long the kills are repeated before the stop fails
KILLER_SECONDS = 1.0  # how long one killer may take before root kills it and starts another
# The killer's real and saved uid: one no process runs as (the highest a uid can be but -1, "no change"), so the
# tenant, whose processes' uid is neither, may not signal or trace it, while its effective uid, the tenant's, lets it
# kill every process of the tenant's. Never 0 (every root process would be in reach) nor a user's (theirs would).
KILLER_UID = 2**32 - 2
IPCRM = "/usr/bin/ipcrm"  # util-linux's, where Debian puts it
# System V objects as /proc/sysvipc/<kind> lists them: ipcrm's flag, the id's column and the owner's and creator's
# uid columns (a tenant may give its object to another uid; its creator stays).
SYSTEM_V_OBJECTS = (("shm", "-m", 1, (7, 9)), ("msg", "-q", 1, (7, 9)), ("sem", "-s", 1, (4, 6)))


def _alive(pid: str) -> bool:
    """Whether any thread of process `pid` runs: a process whose first thread exited shows as a zombie in its
    status while its other threads run on."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:  # gone meanwhile
        return False
    for task in tasks:
        # Bytes: the name in parentheses is the process's own choosing (prctl), any bytes but NUL.
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/stat", "rb") as stat_file:
            if stat_file.read().rsplit(b")", 1)[1].split()[0] != b"Z":  # after "pid (comm)": the state
                return True
    return False


def processes_of(uid: int) -> list[int]:
    """The processes whose real uid is `uid` and that still run (a zombie, dead, is its parent's to reap)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status", encoding="ascii", errors="replace") as status:
                uid_line = next((line for line in status if line.startswith("Uid:")), "Uid: -1")
        except OSError:  # gone meanwhile
            continue
        if int(uid_line.split()[1]) == uid and _alive(entry):
            pids.append(int(entry))
    return pids


def _kill_as(uid: int, gid: int) -> None:
    """One kill(-1, SIGKILL) with `uid` as the effective uid, from a forked child; a child that does not end in
    KILLER_SECONDS is killed by root."""
    child = os.fork()
    if child == 0:  # the child: no Python code between the drop and the kill but the calls themselves
        try:
            os.setgroups([])
            os.setresgid(gid, gid, gid)
            os.setresuid(KILLER_UID, uid, KILLER_UID)
            os.kill(-1, signal.SIGKILL)
        finally:
            os._exit(0)
    deadline = time.monotonic() + KILLER_SECONDS
    while os.waitpid(child, os.WNOHANG) == (0, 0):
        if time.monotonic() > deadline:
            os.kill(child, signal.SIGKILL)
            os.waitpid(child, 0)
            return
        time.sleep(0.005)


def kill_all_of(uid: int, gid: int) -> int:
    """Every process of `uid` killed (see above); how many there were. Raises OSError if some outlive
    KILL_SECONDS of kills, or for uid 0, which is nobody's to end this way."""
    if uid == 0:
        raise OSError("refusing to kill every process of root")
    found = processes_of(uid)
    deadline = time.monotonic() + KILL_SECONDS
    while left := processes_of(uid):
        _kill_as(uid, gid)
        if time.monotonic() > deadline:
            raise OSError(f"processes {left[:10]} of uid {uid} still run after {KILL_SECONDS:.0f} s of SIGKILL")
        time.sleep(0.02)
    return len(found)


# The directories every user may write to, where a tenant's code leaves files no tenant tree holds (an OS user's uid
# may be handed to the next tenant made once this one's is gone).
SHARED_DIRECTORIES = ("/tmp", "/var/tmp", "/dev/shm", "/dev/mqueue", "/run/lock")  # noqa: S108 - emptied, not written


def remove_files_of(uid: int, roots: tuple[str, ...] = SHARED_DIRECTORIES, check_mode: bool = False) -> list[str]:
    """What `uid` left at the top of `roots` (files, and directories with all they hold) removed, and its System V
    objects; what was removed. Reached through each root's descriptor and removed without following a link
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
                with contextlib.suppress(FileNotFoundError):  # gone meanwhile
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
    for kind, flag, id_column, uid_columns in SYSTEM_V_OBJECTS:
        with contextlib.suppress(FileNotFoundError), open(f"/proc/sysvipc/{kind}", encoding="ascii") as objects:
            for fields in (line.split() for line in list(objects)[1:]):
                if uid in (int(fields[column]) for column in uid_columns):
                    if not check_mode:
                        subprocess.run([IPCRM, flag, fields[id_column]], capture_output=True, check=False)
                    removed.append(f"System V {kind} {fields[id_column]}")
    return removed
