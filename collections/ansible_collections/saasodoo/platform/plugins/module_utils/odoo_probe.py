"""What the platform checks of a process tenant's Odoo from outside: its pages over HTTP or HTTPS (no redirect
followed, no proxy), and who owns what listens on its ports."""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
import urllib.parse

MAX_BODY = 65536  # the tenant's Odoo answers: read no more than a login page


class _NamedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to an address, with another name as the TLS server name (SNI) and the name the certificate must bear:
    nginx's listener, as the tenant's host name."""

    def __init__(self, address: str, port: int | None, server_name: str, context: ssl.SSLContext, timeout: float):
        super().__init__(address, port, timeout=timeout, context=context)
        self.server_name = server_name

    def connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.server_name)


def fetch(url: str, host: str | None = None, ca_file: str | None = None) -> tuple[int, str]:
    """The status and body of a GET of an http:// or https:// URL, as the server answered it (http.client neither
    follows redirects nor goes through a proxy the environment may name: loopback addresses and the tenant's own
    name); over https, `host` is the server name its certificate must bear, checked against `ca_file` (by default
    the system's CAs). (0, reason) when nothing answered, or the certificate failed."""
    try:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return 0, f"{url} is not an http:// URL with a host"
        if parts.scheme == "https" and not host:
            return 0, f"{url} is https:// with no server name to check its certificate for"
        if parts.scheme == "https":
            context = ssl.create_default_context(cafile=ca_file)
            connection = _NamedHTTPSConnection(parts.hostname, parts.port, host, context, timeout=5)
        else:
            connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
        with contextlib.closing(connection):
            # One request a connection, as urllib makes it: the answer ends where the server closes it at the latest.
            connection.request(
                "GET", parts.path or "/", headers={"Connection": "close"} | ({"Host": host} if host else {})
            )
            response = connection.getresponse()
            return response.status, response.read(MAX_BODY).decode(errors="replace")
    except (http.client.HTTPException, OSError, ValueError) as error:  # ValueError: a port that is not one
        return 0, str(error)


def login_port(url: str) -> int | None:
    """The port `url` names; None when it names none, or one that is not a port (a record without its http_port)."""
    try:
        return urllib.parse.urlsplit(url).port
    except ValueError:
        return None


def listener_uids(port: int, pid: int | None = None) -> set[int]:
    """The uids of the TCP sockets listening on `port` in this network namespace, or in the one process `pid` is in
    (/proc/net/tcp and tcp6: the local address's port in hex, state 0A is LISTEN, the owner's uid in the eighth
    column)."""
    uids = set()
    proc = f"/proc/{pid}" if pid else "/proc"
    for table in (f"{proc}/net/tcp", f"{proc}/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as rows:
            for fields in (row.split() for row in list(rows)[1:]):
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    uids.add(int(fields[7]))
    return uids
