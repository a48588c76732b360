"""odoo_process's HTTP check (fetch): what the tenant's Odoo and its route answer, read as they answered it."""

from __future__ import annotations

import http.server
import socket
import threading

import pytest

from ansible_collections.saasodoo.platform.plugins.modules.odoo_process import MAX_BODY, fetch


class Answers(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/moved":  # a redirect is an answer, never followed
            self.send_response(303)
            self.send_header("Location", "/web/login")
            self.end_headers()
            self.wfile.write(b"see other")
            return
        body = b"x" * (MAX_BODY * 2) if self.path == "/big" else f"{self.path} for {self.headers['Host']}".encode()
        self.send_response(503 if self.path == "/suspended" else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answers) as httpd:
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
        httpd.shutdown()


def test_the_answer_and_the_host_asked_for(server):
    assert fetch(f"{server}/web/login", "acme.example.test") == (200, "/web/login for acme.example.test")
    assert fetch(f"{server}/suspended")[0] == 503


def test_a_redirect_is_not_followed(server):
    assert fetch(f"{server}/moved") == (303, "see other")


def test_no_more_than_a_login_page_is_read(server):
    status, body = fetch(f"{server}/big")
    assert status == 200 and len(body) == MAX_BODY


def test_nothing_listening_is_status_0_with_the_reason():
    with socket.socket() as probe:  # a port nothing listens on: bound, never listening
        probe.bind(("127.0.0.1", 0))
        status, reason = fetch(f"http://127.0.0.1:{probe.getsockname()[1]}/web/login")
    assert status == 0 and "refused" in reason.lower()


def test_a_url_whose_port_is_not_one_is_status_0():
    assert fetch("http://127.0.0.1:notaport/web/login")[0] == 0


def test_a_url_without_an_http_host_is_status_0():
    for url in ("http://:58100/web/login", "https://127.0.0.1:58100/web/login", "127.0.0.1:58100/web/login"):
        assert fetch(url) == (0, f"{url} is not an http:// URL with a host")
