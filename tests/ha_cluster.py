"""A local server under Patroni (roles/postgres_ha) as a test or a benchmark drives it: its members through their
REST APIs, a switchover, a member lost as a host is lost and brought back. The ports are the local inventory's
(group_vars/ha_servers): each member's REST API at the server's port + 1300, + 1400."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LOCAL_STATE = REPO / ".state/local"
SECRET = LOCAL_STATE / "secrets/platform_secret"
API_PORT_OFFSETS = (1300, 1400)


class Cluster:
    """The server `name` listening at `port`, as Patroni sees it through whichever member's REST API answers."""

    def __init__(self, name: str, port: int, restapi_password: str) -> None:
        self.name = name
        self.directory = LOCAL_STATE / "pg" / name
        self.apis = [f"http://127.0.0.1:{port + offset}" for offset in API_PORT_OFFSETS]
        self.auth = "Basic " + base64.b64encode(f"patroni:{restapi_password}".encode()).decode()
        self.frozen: dict[str, list[int]] = {}

    def members(self) -> list[dict]:
        for api in self.apis:
            try:
                with urllib.request.urlopen(f"{api}/cluster", timeout=1) as response:  # a frozen member's hangs
                    return json.load(response)["members"]
            except OSError:
                continue
        return []

    def leader(self) -> str | None:
        return next((m["name"] for m in self.members() if m["role"] == "leader"), None)

    def roles(self) -> dict[str, str]:
        """Each member's role (leader, sync_standby or replica) that the leader's running and each replica running on
        the leader's timeline, its lag known: a replica not rewound yet may show running for a moment."""
        members = self.members()
        leader = next((m for m in members if m["role"] == "leader" and m["state"] == "running"), None)
        if leader is None:
            return {}
        caught_up = [
            m
            for m in members
            if m["state"] == "running" and m.get("timeline") == leader.get("timeline") and isinstance(m.get("lag"), int)
        ]
        return {m["name"]: m["role"] for m in [leader, *caught_up]}

    def member_api(self, member: str) -> str:
        api_url = next(m["api_url"] for m in self.members() if m["name"] == member)
        return api_url.rsplit("/patroni", 1)[0]

    def restart(self, member: str) -> None:
        """Restart the member's PostgreSQL in place (Patroni's POST /restart): no failover."""
        self._call("POST", "/restart", {}, api=self.member_api(member))

    def _call(self, method: str, path: str, body: dict, api: str | None = None) -> None:
        request = urllib.request.Request(
            f"{api or self.apis[0]}{path}",
            data=json.dumps(body).encode(),
            headers={"Authorization": self.auth, "Content-Type": "application/json"},
            method=method,
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            response.read()

    def switchover(self, leader: str, candidate: str) -> None:
        self._call("POST", "/switchover", {"leader": leader, "candidate": candidate})

    def set_synchronous(self, synchronous: bool) -> None:
        self._call("PATCH", "/config", {"synchronous_mode": synchronous})

    def lose(self, member: str) -> None:
        """Freeze the member's Patroni and every PostgreSQL process of it at once, as a host that is lost (or cut off)
        stops them: nothing answers, nothing is closed, and supervisord, which restarts a Patroni that dies, sees
        nothing die."""
        patroni = int(self._supervisorctl("pid", f"patroni-{member}"))
        postmaster = int((self.directory / member / "data/postmaster.pid").read_text().splitlines()[0])
        children = subprocess.run(["ps", "-o", "pid=", "--ppid", str(postmaster)], capture_output=True, text=True)
        self.frozen[member] = [patroni, postmaster, *map(int, children.stdout.split())]
        for pid in self.frozen[member]:
            os.kill(pid, signal.SIGSTOP)

    def revive(self, member: str) -> None:
        """Kill a lost member's frozen processes, as its host restarting does: supervisord starts its Patroni again,
        which rejoins as a replica (rewound first if it was the primary)."""
        for pid in self.frozen.pop(member, []):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def _supervisorctl(self, *args: str) -> str:
        conf = str(self.directory / "supervisord.conf")
        return subprocess.run(["supervisorctl", "-c", conf, *args], capture_output=True, text=True).stdout.strip()
