"""HTTP plumbing of the identity-provider stand-in (tests/servers/oauth/idp.py): a threaded server (TLS
handshakes in the connection's thread), a keep-alive handler that routes `.../token`,
`.../introspect` and the consent pages (idp_consent.py), and the small parsers for
client_secret_basic and a JWT assertion's issuer."""
from __future__ import annotations

import base64
import json
import ssl
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlsplit

if TYPE_CHECKING:
    from tests.servers.oauth.idp import IdentityProvider

MAX_BODY = 64 * 1024  # a token request is a few hundred bytes


class IdpServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True  # up() after down() binds the same port at once

    def __init__(self, address: tuple[str, int], idp: IdentityProvider, tls: ssl.SSLContext | None) -> None:
        self.idp = idp
        self.tls = tls
        super().__init__(address, _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        # TLS handshake here, in the connection's own thread, never in the accept loop.
        conn = request
        try:
            request.settimeout(10)
            if self.tls is not None:
                conn = self.tls.wrap_socket(request, server_side=True)
            self.idp.track_connection(conn)
            self.RequestHandlerClass(conn, client_address, self)
        except (OSError, ssl.SSLError):
            pass  # a client that hung up or failed the handshake; nothing to report
        finally:
            self.idp.untrack_connection(conn)
            if conn is not request:
                conn.close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"     # keep-alive, as the providers
    disable_nagle_algorithm = True    # else every keep-alive answer waits ~40 ms (DESIGN-NOTES 5)
    server: IdpServer

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self._send(413, {"error": "invalid_request", "error_description": "body too large"})
            return
        body = self.rfile.read(length).decode("utf-8", "replace")
        if not self.headers.get("Content-Type", "").startswith("application/x-www-form-urlencoded"):
            self._send(400, {"error": "invalid_request",
                             "error_description": "expected a form-encoded POST body"})
            return
        form = dict(parse_qsl(body, keep_blank_values=True))
        if path.endswith("/token"):
            status, answer, headers = self.server.idp.handle_token(path, form, self.headers.get("Authorization"))
            self._send(status, answer, headers)
        elif path.endswith("/introspect"):
            self._send(200, self.server.idp.handle_introspection(form))
        elif (page := self.server.idp.consent.post(path, form)) is not None:
            self._send_page(page)
        else:
            self._send(404, {"error": "not_found"})

    def do_GET(self) -> None:
        page = self.server.idp.consent.get(self.path)  # the authorize endpoint, the device page
        if page is None:
            self._send(405, {"error": "invalid_request", "error_description": "use POST"})
        else:
            self._send_page(page)

    def _send_page(self, page: Any) -> None:
        """An idp_consent.Page: status, body, content type, headers."""
        self.send_response(page.status)
        self.send_header("Content-Type", page.content_type)
        self.send_header("Content-Length", str(len(page.body)))
        for name, value in page.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(page.body)

    def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: a test shows the counters, not an access log


def basic_credentials(authorization: str | None) -> tuple[str, str] | None:
    """client_secret_basic (RFC 6749 2.3.1): url-encoded id and secret, base64 in Basic."""
    if not authorization or not authorization.lower().startswith("basic "):
        return None
    try:
        user, _, password = base64.b64decode(authorization[6:].strip()).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        return None
    return unquote(user), unquote(password)


def basic_user(authorization: str | None) -> str | None:
    creds = basic_credentials(authorization)
    return creds[0] if creds else None


def basic_password(authorization: str | None) -> str | None:
    creds = basic_credentials(authorization)
    return creds[1] if creds else None


def assertion_issuer(form: dict[str, str]) -> str | None:
    """The unverified iss of a JWT bearer assertion: it names the key to verify it with."""
    try:
        payload = form["assertion"].split(".")[1]
        return str(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["iss"])
    except (KeyError, IndexError, ValueError, TypeError):
        return None
