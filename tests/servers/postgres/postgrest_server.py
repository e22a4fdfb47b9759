"""A PostgREST-compatible HTTP server over a real PostgreSQL, for tests only (never shipped).

PostgREST's binary cannot be installed on our machines, so the real supabase-py client talks to
this instead: `/rest/v1/<table>` and `/rest/v1/rpc/<fn>` are translated to SQL (postgrest_sql.py)
and run in one transaction per request under the role the API key maps to (`SET LOCAL ROLE`,
as PostgREST does after checking the JWT), so grants and Row Level Security are exercised.

Status codes and `{code, message, details, hint}` bodies follow PostgREST's documentation.
Tests can make it go "down" (the port is closed: connection refused) and come back on the same
port, or answer every request with an error (`fail_with(503)`).
"""
from __future__ import annotations

import json
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import psycopg
from psycopg import sql

from tests.servers.ports import reserve_port
from tests.servers.postgres.postgrest_sql import (
    RESERVED_PARAMS,
    ApiError,
    delete_query,
    insert_query,
    load_table,
    primary_key,
    rpc_query,
    select_query,
    update_query,
)

JSON_TYPE = "application/json; charset=utf-8"

# Random per session, so a test that finds a key in a log line or a message found a real leak.
TEST_SERVICE_KEY = "sb_secret_test_" + secrets.token_urlsafe(24)
TEST_ANON_KEY = "sb_publishable_test_" + secrets.token_urlsafe(24)


def status_for_sqlstate(code: str, authenticated: bool) -> int:
    """PostgREST's SQLSTATE -> HTTP status table (docs: references/errors)."""
    exact = {"23503": 409, "23505": 409, "25006": 405, "53400": 500, "P0001": 400,
             "42883": 404, "42P01": 404, "42P17": 500}
    if code in exact:
        return exact[code]
    if code == "42501":
        return 403 if authenticated else 401
    if code.startswith("PT") and code[2:].isdigit():
        return int(code[2:])
    prefixes = {"08": 503, "09": 500, "0L": 403, "0P": 403, "25": 500, "28": 403, "2D": 500,
                "38": 500, "39": 500, "3B": 500, "40": 500, "53": 503, "54": 500, "55": 500,
                "57": 500, "58": 500, "F0": 500, "HV": 500, "P0": 500, "XX": 500}
    return prefixes.get(code[:2], 400)


class PostgrestServer:
    """Start with start(); `url` is what create_client() takes (it appends /rest/v1 itself)."""

    def __init__(self, dsn: str, service_key: str, anon_key: str | None = None,
                 schema: str = "public", port: int = 0, max_rows: int | None = None) -> None:
        self.dsn = dsn
        self.max_rows = max_rows  # PostgREST's db-max-rows (Supabase: 1000): caps every GET
        self.schema = schema
        # API key -> database role. service_role is the supervisor's; anon is a browser's.
        self.roles = {service_key: "service_role"}
        if anon_key:
            self.roles[anon_key] = "anon"
        # A port of its own for this server's life, below the ephemeral range and locked
        # (tests/servers/ports.py): a restart binds it again, and nobody can take it meanwhile.
        self._reservation = reserve_port() if port == 0 else None
        self.port = self._reservation.port if self._reservation is not None else port
        self.requests: list[tuple[str, str]] = []  # (method, path?query), for assertions
        self._failure: tuple[int, bytes, str] | None = None
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "PostgrestServer":
        with self._lock:
            if self._httpd is not None:
                return self
            handler = type("BoundHandler", (_Handler,), {"api": self})
            httpd = ThreadingHTTPServer(("127.0.0.1", self.port), handler)
            httpd.daemon_threads = True
            self._httpd = httpd
            self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                            name=f"postgrest-test:{self.port}", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the port: new connections are refused."""
        with self._lock:
            httpd, thread = self._httpd, self._thread
            self._httpd = self._thread = None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        if thread is not None:
            thread.join(timeout=5)

    # "down" is a stopped server; "up" starts it again on the same port.
    go_down = stop
    come_up = start

    def fail_with(self, status: int | None, body: Any = None, content_type: str = JSON_TYPE) -> None:
        """Answer every request with `status` (None: back to normal). Body: dict -> JSON, str raw."""
        if status is None:
            self._failure = None
            return
        if body is None:
            code = "PGRST001" if status == 503 else "XX000"
            body = {"code": code, "details": None, "hint": None,
                    "message": "Database client error. Retrying the connection."
                    if status == 503 else "simulated internal error"}
        raw = json.dumps(body).encode() if isinstance(body, (dict, list)) else str(body).encode()
        self._failure = (status, raw, content_type)

    def __enter__(self) -> "PostgrestServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:  # never the keys
        return f"PostgrestServer(url={self.url!r}, up={self._httpd is not None})"


class _Handler(BaseHTTPRequestHandler):
    api: PostgrestServer
    protocol_version = "HTTP/1.1"  # keep-alive, like httpx expects
    disable_nagle_algorithm = True  # else every keep-alive request waits ~40 ms (Nagle + delayed ACK)

    def log_message(self, format: str, *args: Any) -> None:  # quiet: pytest shows failures anyway
        pass

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    # --- plumbing ---------------------------------------------------------------------------

    def _send(self, status: int, body: bytes | None, content_type: str = JSON_TYPE,
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        if body is not None or status not in (204,):
            self.send_header("Content-Type", content_type)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        payload = body or b""
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD" and payload:
            self.wfile.write(payload)

    def _send_error(self, status: int, body: dict[str, Any]) -> None:
        self._send(status, json.dumps(body).encode())

    def _read_body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise ApiError(400, "PGRST102", "Empty or invalid json", str(exc)) from None

    def _role(self) -> str | None:
        """The role for this request: Authorization: Bearer wins, else the apikey header."""
        auth = self.headers.get("Authorization", "")
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else None
        token = token or self.headers.get("apikey")
        return self.api.roles.get(token) if token else None

    def _prefer(self) -> dict[str, str]:
        prefs: dict[str, str] = {}
        for header in self.headers.get_all("Prefer") or []:
            for item in header.split(","):
                key, _, value = item.strip().partition("=")
                if key:
                    prefs[key] = value
        return prefs

    def _dispatch(self, method: str) -> None:
        parts = urlsplit(self.path)
        self.api.requests.append((method, self.path))
        failure = self.api._failure
        if failure is not None:
            # Drain the body so the keep-alive connection stays in sync.
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self._send(failure[0], failure[1], failure[2])
            return
        try:
            # Always consume the body (supabase-py sends "{}" with DELETE): leftover bytes would
            # be read as the next request on this keep-alive connection.
            body = self._read_body()
            if method not in ("POST", "PATCH"):
                body = None
            role = self._role()
            if role is None:
                raise ApiError(401, "PGRST301", "Invalid API key",
                               hint="Double check your apikey and Authorization: Bearer headers.")
            path = unquote(parts.path)
            if not path.startswith("/rest/v1/"):
                raise ApiError(404, "PGRST125", f"Invalid path specified in request URL: {path}")
            target = path[len("/rest/v1/"):].strip("/")
            pairs = parse_qsl(parts.query, keep_blank_values=True)
            status, payload, headers = self._execute(method, target, pairs, body, role)
            self._send(status, payload, headers=headers)
        except ApiError as exc:
            self._send_error(exc.status, exc.body)
        except psycopg.OperationalError as exc:
            # Database unreachable: PostgREST answers 503 PGRST000/001.
            self._send_error(503, {"code": "PGRST001", "details": str(exc).strip(), "hint": None,
                                   "message": "Database client error. Retrying the connection."})

    def _execute(self, method: str, target: str, pairs: list[tuple[str, str]], body: Any,
                 role: str) -> tuple[int, bytes | None, dict[str, str]]:
        query = {k: v for k, v in pairs if k in RESERVED_PARAMS}
        filters = [(k, v) for k, v in pairs if k not in RESERVED_PARAMS]
        prefer = self._prefer()
        returning = prefer.get("return") == "representation"
        with psycopg.connect(self.api.dsn, autocommit=False, connect_timeout=5) as conn:
            try:
                with conn.transaction():
                    conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(role)))
                    return self._run(conn, method, target, query, filters, body, prefer, returning)
            except psycopg.errors.Error as exc:
                if isinstance(exc, psycopg.OperationalError) and exc.sqlstate is None:
                    raise
                code = exc.sqlstate or "XX000"
                diag = exc.diag
                status = status_for_sqlstate(code, authenticated=role != "anon")
                body_out = {"code": code, "details": diag.message_detail, "hint": diag.message_hint,
                            "message": diag.message_primary or str(exc)}
                return status, json.dumps(body_out).encode(), {}

    def _run(self, conn: psycopg.Connection, method: str, target: str, query: dict[str, str],
             filters: list[tuple[str, str]], body: Any, prefer: dict[str, str],
             returning: bool) -> tuple[int, bytes | None, dict[str, str]]:
        schema = self.api.schema
        if target.startswith("rpc/"):
            if method not in ("GET", "POST"):
                raise ApiError(405, "PGRST101", "Only GET and POST verbs are allowed for functions")
            args = body if method == "POST" else dict(filters)
            stmt, params = rpc_query(conn, schema, target[4:], args or {})
            return 200, conn.execute(stmt, params).fetchone()[0].encode(), {}
        if not target or "/" in target:
            raise ApiError(404, "PGRST125", f"Invalid path specified in request URL: /{target}")
        table = load_table(conn, schema, target)
        if method in ("GET", "HEAD"):
            if self.api.max_rows is not None:
                query["limit"] = str(min(int(query.get("limit") or self.api.max_rows), self.api.max_rows))
            stmt, params = select_query(table, query, filters)
            data = conn.execute(stmt, params).fetchone()[0]
            count = len(json.loads(data))
            offset = int(query.get("offset") or 0)
            rng = f"{offset}-{offset + count - 1}/*" if count else "*/*"
            return 200, data.encode(), {"Content-Range": rng}
        if method == "POST":
            resolution = prefer.get("resolution")
            if resolution not in (None, "merge-duplicates", "ignore-duplicates"):
                resolution = None  # PostgREST ignores unknown preferences (lenient handling)
            pk = primary_key(conn, table) if resolution and not query.get("on_conflict") else []
            stmt, params = insert_query(table, query, body, resolution, pk, returning)
            data = conn.execute(stmt, params).fetchone()[0]
            return (201, data.encode(), {}) if returning else (201, None, {})
        if method == "PATCH":
            stmt, params = update_query(table, query, body, filters, returning)
            data = conn.execute(stmt, params).fetchone()[0]
            return (200, data.encode(), {}) if returning else (204, None, {})
        if method == "DELETE":
            stmt, params = delete_query(table, query, filters, returning)
            data = conn.execute(stmt, params).fetchone()[0]
            return (200, data.encode(), {}) if returning else (204, None, {})
        raise ApiError(405, "PGRST117", f"Unsupported HTTP method: {method}")
