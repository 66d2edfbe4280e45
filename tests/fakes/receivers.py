"""Local stand-ins for what Cortex delivers to: an HTTP receiver of callbacks and webhooks, an
ntfy-compatible server, and an SMTP server that speaks STARTTLS and AUTH, each on 127.0.0.1.

Each is a real server reached over the network by the real client (httpx, smtplib through
Django's mailer); a test reads what arrived.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import secrets
import ssl
import threading
import time
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class HttpReceiver:
    """Records every request; answers each with the next status of `statuses` (the last one repeats)."""

    def __init__(self, port: int = 0, statuses: tuple[int, ...] = (200,)) -> None:
        self.port = port
        self.statuses = list(statuses)
        self.received: list[Received] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def answer(self, request: Received) -> tuple[int, bytes]:
        with self._lock:
            status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        return status, b'{"ok": true}'

    def start(self) -> HttpReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                request = Received("POST", self.path, {k.lower(): v for k, v in self.headers.items()},
                                   self.rfile.read(length))
                with receiver._lock:
                    receiver.received.append(request)
                status, body = receiver.answer(request)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class NtfyServer(HttpReceiver):
    """Publishing as ntfy.sh does it: `POST /<topic>` with the message as the body and the title,
    click link, priority and tags as headers; a server with a token answers 401 without it."""

    def __init__(self, token: str = "") -> None:
        super().__init__()
        self.token = token

    def answer(self, request: Received) -> tuple[int, bytes]:
        if self.token and request.headers.get("authorization") != f"Bearer {self.token}":
            return 401, b'{"code":40101,"http":401,"error":"unauthorized"}'
        topic = request.path.strip("/")
        return 200, json.dumps({"id": secrets.token_hex(6), "time": int(time.time()), "event": "message",
                                "topic": topic, "message": request.body.decode()}).encode()

    def messages(self, topic: str) -> list[Received]:
        return [r for r in self.received if r.path.strip("/") == topic
                and (not self.token or r.headers.get("authorization") == f"Bearer {self.token}")]


# --- TLS for the SMTP server -------------------------------------------------------------------

@dataclass
class LocalCA:
    """A certificate authority of its own and a server certificate for 127.0.0.1 and localhost."""

    ca_file: Path
    cert_file: Path
    key_file: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context


def local_ca(directory: Path) -> LocalCA:
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Cortex test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    found = LocalCA(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    found.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    found.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    found.key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()))
    return found


@dataclass
class SmtpServer:
    """An SMTP server that takes mail only after STARTTLS and AUTH with the one account it knows."""

    ca: LocalCA
    port: int
    username: str = "cortex"
    password: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    messages: list[EmailMessage] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)
    _controller: Controller | None = None

    def start(self) -> SmtpServer:
        server = self

        class Handler:
            async def handle_DATA(self, smtp: Any, session: Any, envelope: Any) -> str:
                message = message_from_bytes(envelope.original_content or envelope.content, policy=policy.default)
                server.messages.append(message)
                return "250 OK"

        def authenticate(smtp: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
            ok = (isinstance(data, LoginPassword) and data.login.decode() == server.username
                  and data.password.decode() == server.password)
            if ok:
                server.logins.append(data.login.decode())
            return AuthResult(success=ok, handled=False)

        self._controller = Controller(Handler(), hostname="127.0.0.1", port=self.port,
                                      tls_context=self.ca.server_context(), require_starttls=True,
                                      auth_required=True, auth_require_tls=True, authenticator=authenticate)
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    @property
    def url(self) -> str:
        return f"smtp://{self.username}:{self.password}@localhost:{self.port}"
