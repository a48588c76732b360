"""The runner's Kill Bill client sends its credentials to Kill Bill's URL and nowhere else."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from webhook_runner.config import KillBillSettings
from webhook_runner.killbill import KillBill, KillBillError


@contextmanager
def http_server(respond) -> Iterator[tuple[str, list[dict]]]:
    """A loopback HTTP server answering GETs with respond(handler); yields its URL and the headers of each request."""
    seen: list[dict] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append({name.lower(): value for name, value in self.headers.items()})
            respond(self)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def answer_json(handler) -> None:
    body = b'{"accountId": "a-1"}'
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def settings(url: str) -> KillBillSettings:
    return KillBillSettings(url=url, username="admin", password="kb-password", api_key="k", api_secret="kb-secret")


def test_the_client_reads_kill_bill_with_its_credentials():
    with http_server(answer_json) as (url, seen):
        assert KillBill(settings(url)).account("a-1") == {"accountId": "a-1"}
    assert seen[0]["authorization"].startswith("Basic ") and seen[0]["x-killbill-apisecret"] == "kb-secret"


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
def test_a_redirect_is_refused_and_the_credentials_go_nowhere_else(code):
    def redirect_to(target: str):
        def respond(handler) -> None:
            handler.send_response(code)
            handler.send_header("Location", target)
            handler.send_header("Content-Length", "0")
            handler.end_headers()

        return respond

    # The second server is made once the first's URL is known.
    with (
        http_server(answer_json) as (elsewhere, taken),
        http_server(redirect_to(f"{elsewhere}/steal")) as (url, seen),
        pytest.raises(KillBillError, match=f"HTTP {code} .*redirect to {elsewhere}/steal refused"),
    ):
        KillBill(settings(url)).account("a-1")
    assert len(seen) == 1 and taken == []


def test_written_off_tags_are_the_invoices_tagged_with_kill_bills_written_off_definition():
    """GET /accounts/{id}/allTags?objectType=INVOICE (AccountResource.getAllTags): only the control tag's fixed
    definition id counts (ControlTagType.WRITTEN_OFF), whatever name a tag shows."""
    tags = (
        b'[{"tagId":"t-1","objectType":"INVOICE","objectId":"i-2","tagDefinitionId":'
        b'"00000000-0000-0000-0000-000000000004","tagDefinitionName":"WRITTEN_OFF","auditLogs":[]},'
        b'{"tagId":"t-2","objectType":"INVOICE","objectId":"i-3","tagDefinitionId":'
        b'"4a5b6c7d-0000-4000-8000-000000000001","tagDefinitionName":"WRITTEN_OFF","auditLogs":[]}]'
    )

    def respond(handler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(tags)))
        handler.end_headers()
        handler.wfile.write(tags)

    paths = []
    with http_server(lambda handler: paths.append(handler.path) or respond(handler)) as (url, _):
        assert KillBill(settings(url)).written_off_tags("a-1") == {"t-1": "i-2"}
    assert paths == ["/1.0/kb/accounts/a-1/allTags?objectType=INVOICE&includedDeleted=false"]
