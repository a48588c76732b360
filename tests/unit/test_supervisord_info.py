"""supervisord_info against a real supervisord: what supervisorctl's pid and status say, in one module call."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import xmlrpc.client
from pathlib import Path

import pytest
from supervisor.xmlrpc import SupervisorTransport

from conftest import run_module

BIN = Path(sys.executable).parent
CONF = """\
[unix_http_server]
file = {dir}/s.sock
[supervisord]
pidfile = {dir}/supervisord.pid
logfile = {dir}/supervisord.log
[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface
[supervisorctl]
serverurl = unix://{dir}/s.sock
[program:web]
command = sleep 600
startsecs = 0
[program:worker]
command = sleep 600
process_name = %(program_name)s-%(process_num)d
numprocs = 2
startsecs = 0
[program:idle]
command = sleep 600
autostart = false
[program:stubborn]
command = sh -c 'trap "" TERM; touch {dir}/stubborn.ready; while :; do sleep 1; done'
autostart = false
startsecs = 0
stopwaitsecs = 120
"""


@pytest.fixture
def supervisord(tmp_path: Path):
    conf = tmp_path / "supervisord.conf"
    conf.write_text(CONF.format(dir=tmp_path))
    daemon = subprocess.Popen([BIN / "supervisord", "-n", "-c", conf], stdout=subprocess.DEVNULL)
    args = {"socket": str(tmp_path / "s.sock"), "names": ["web", "worker:*"]}
    deadline = time.monotonic() + 30
    while run_module("supervisord_info", args, tmp_path)["not_running"]:  # up, and its programs started
        assert daemon.poll() is None and time.monotonic() < deadline, "supervisord did not start its programs"
    yield daemon, conf
    daemon.terminate()
    daemon.wait(timeout=30)


def api(tmp_path: Path):
    return xmlrpc.client.ServerProxy(
        "http://127.0.0.1", transport=SupervisorTransport(None, None, f"unix://{tmp_path}/s.sock")
    ).supervisor


def test_the_states_supervisorctl_shows_in_one_call(supervisord, tmp_path: Path):
    daemon, conf = supervisord
    names = ["web", "worker:*", "idle", "nope", "worker:worker-1"]
    result = run_module("supervisord_info", {"socket": str(tmp_path / "s.sock"), "names": names}, tmp_path)
    assert result["running"] and result["pid"] == daemon.pid and not result["changed"], result
    assert result["processes"] == [
        {"name": "web", "state": "RUNNING"},
        {"name": "worker:worker-0", "state": "RUNNING"},
        {"name": "worker:worker-1", "state": "RUNNING"},
        {"name": "idle", "state": "STOPPED"},
        {"name": "nope", "state": None},
        {"name": "worker:worker-1", "state": "RUNNING"},
    ]
    assert result["not_running"] == ["idle", "nope"]
    # As supervisorctl itself shows them, and its exit status says not all run.
    status = subprocess.run([BIN / "supervisorctl", "-c", conf, "status", "web", "worker:*", "idle"],
                            capture_output=True, text=True, check=False)  # fmt: skip
    shown = [line.split()[:2] for line in status.stdout.splitlines()]
    assert status.returncode == 3 and shown == [[p["name"], p["state"]] for p in result["processes"][:4]], status


def test_a_supervisord_that_does_not_answer_is_not_running(tmp_path: Path):
    stale = tmp_path / "stale.sock"  # a socket file nobody listens on any more
    with socket.socket(socket.AF_UNIX) as unbound:
        unbound.bind(str(stale))
    for path in (stale, tmp_path / "missing.sock"):
        result = run_module("supervisord_info", {"socket": str(path), "names": ["web"]}, tmp_path)
        del result["invocation"]
        assert result == {
            "changed": False, "running": False, "pid": None, "processes": [{"name": "web", "state": None}],
            "not_running": ["web"],
        }  # fmt: skip


def test_a_process_stopping_or_a_supervisord_shutting_down_as_supervisorctl_sees_them(supervisord, tmp_path: Path):
    daemon, conf = supervisord
    args = {"socket": str(tmp_path / "s.sock"), "names": ["stubborn"]}
    api(tmp_path).startProcess("stubborn")
    deadline = time.monotonic() + 30
    while not (tmp_path / "stubborn.ready").exists():  # its trap set: a SIGTERM before it would end it
        assert time.monotonic() < deadline, "the stubborn program did not start"
        time.sleep(0.05)
    pid = api(tmp_path).getProcessInfo("stubborn")["pid"]
    try:
        api(tmp_path).stopProcess("stubborn", False)  # it ignores SIGTERM: STOPPING until stopwaitsecs (or killed)
        result = run_module("supervisord_info", args, tmp_path)
        status = subprocess.run([BIN / "supervisorctl", "-c", conf, "status", "stubborn"], capture_output=True,
                                check=False)  # fmt: skip
        assert result["processes"] == [{"name": "stubborn", "state": "STOPPING"}] and result["not_running"] == []
        assert status.returncode == 0, status  # supervisorctl's status: not stopped either
        api(tmp_path).shutdown()  # supervisord waits for it to go: SHUTDOWN, and every call refused
        result = run_module("supervisord_info", args, tmp_path)
        asked = subprocess.run([BIN / "supervisorctl", "-c", conf, "pid"], capture_output=True, text=True, check=False)
        assert not result["running"] and result["not_running"] == ["stubborn"], result
        assert daemon.poll() is None and asked.returncode != 0, asked  # still there, and supervisorctl pid says no
    finally:
        os.kill(pid, signal.SIGKILL)  # supervisord may go now
