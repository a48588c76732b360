"""odoo_process's HTTP check (fetch): what the tenant's Odoo and its route answer, read as they answered it."""

from __future__ import annotations

import datetime
import http.server
import socket
import ssl
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ansible_collections.saasodoo.platform.plugins.module_utils.odoo_probe import MAX_BODY, fetch


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
    for url in ("http://:58100/web/login", "ftp://127.0.0.1:58100/web/login", "127.0.0.1:58100/web/login"):
        assert fetch(url) == (0, f"{url} is not an http:// URL with a host")
    assert fetch("https://127.0.0.1:58100/web/login")[0] == 0  # https without the name its certificate must bear


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    """The Answers server over TLS, its certificate for *.odoo.test signed by a CA of its own: (URL, CA file)."""
    now = datetime.datetime.now(datetime.UTC)
    folder = tmp_path_factory.mktemp("tls")

    def certificate(subject: str, key, issuer: str, issuer_key, names: list[str], ca: bool) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = certificate("test CA", ca_key, "test CA", ca_key, [], ca=True)
    served = certificate("tenants", server_key, "test CA", ca_key, ["*.odoo.test"], ca=False)
    pem = serialization.Encoding.PEM
    (folder / "ca.crt").write_bytes(ca.public_bytes(pem))
    (folder / "server.crt").write_bytes(served.public_bytes(pem))
    (folder / "server.key").write_bytes(
        server_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(folder / "server.crt", folder / "server.key")
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answers) as httpd:
        httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        yield f"https://127.0.0.1:{httpd.server_address[1]}", str(folder / "ca.crt")
        httpd.shutdown()


def test_https_asks_as_the_tenants_name_and_checks_the_certificate_for_it(tls_server):
    url, ca_file = tls_server
    assert fetch(f"{url}/web/login", "acme.odoo.test", ca_file) == (200, "/web/login for acme.odoo.test")
    status, reason = fetch(f"{url}/web/login", "acme.other.test", ca_file)  # a name the certificate does not bear
    assert status == 0 and "certificate" in reason.lower(), reason
    status, reason = fetch(f"{url}/web/login", "acme.odoo.test")  # the system's CAs never signed it
    assert status == 0 and "certificate" in reason.lower(), reason
