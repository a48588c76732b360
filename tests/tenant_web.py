"""A tenant's site as its customers reach it on the local platform: https://<tenant>.odoo.localhost:58043/…, served by
the runtime host's nginx, its certificate checked against the platform CA. No resolver here knows *.odoo.localhost:
every connection goes to nginx's address, with the tenant's host name as the TLS server name and the Host header."""

from __future__ import annotations

import http.client
import socket
import ssl
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NGINX_HTTPS = ("127.0.0.1", 58043)
NGINX_HTTP = ("127.0.0.1", 58080)  # plain HTTP: only a redirect to HTTPS
BASE_DOMAIN = "odoo.localhost"
PLATFORM_CA = REPO / ".state/local/secrets/tls/ca.crt"


def host_name(tenant_id: str) -> str:
    return f"{tenant_id.lower().replace('_', '-')}.{BASE_DOMAIN}"


def tenant_url(tenant_id: str, path: str = "/web/login") -> str:
    return f"https://{host_name(tenant_id)}:{NGINX_HTTPS[1]}{path}"


def tls_context() -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(PLATFORM_CA))


class ToNginx(http.client.HTTPSConnection):
    """HTTPS to nginx's address, whatever host the URL names; that host is the TLS server name its certificate
    must bear."""

    def __init__(self, host: str, port: int | None = None, **kwargs):
        kwargs.setdefault("context", tls_context())
        super().__init__(host, port, **kwargs)

    def connect(self) -> None:
        sock = socket.create_connection(NGINX_HTTPS, self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


class _ToNginxHandler(urllib.request.HTTPSHandler):
    def https_open(self, req: urllib.request.Request):
        return self.do_open(ToNginx, req, context=self._context)


def opener(*handlers: urllib.request.BaseHandler) -> urllib.request.OpenerDirector:
    """urllib for tenant URLs (tenant_url, an admin link): to nginx, TLS checked against the platform CA."""
    return urllib.request.build_opener(_ToNginxHandler(context=tls_context()), *handlers)


def get_status(tenant_id: str, path: str, timeout: float = 10) -> int:
    """The status nginx answers a GET of the tenant's `path` with (no redirect followed)."""
    conn = ToNginx(host_name(tenant_id), NGINX_HTTPS[1], timeout=timeout)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    finally:
        conn.close()
