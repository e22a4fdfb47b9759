"""An httpx client whose every request is bounded as a whole, not per socket read.

httpx's timeouts bound each wait on the socket: a server that answers a byte every few seconds,
or a connect, a write and a read that each take almost the timeout, keep one request going far
longer than any of them. A tenant blocked in one request sends no heartbeat, so the state
store's requests need a bound on the whole request: this client gives each one a deadline, and
its network backend cuts every connect, TLS handshake, write and read to the time left (a wait
that would begin after the deadline fails at once). Timeout errors stay httpx's own
(ConnectTimeout, ReadTimeout, WriteTimeout), so callers see the same failure as before, only
sooner.

The deadline covers Client.send() whole, body included, for the non-streaming requests
supabase-py makes; a streamed response's body is read after send() returns, without it.
"""
from __future__ import annotations

import ssl
import time
from typing import Any, Iterable

import httpcore
import httpx


class _Deadline:
    """The current request's deadline (monotonic), shared by the client and its streams."""

    def __init__(self) -> None:
        self.at: float | None = None

    def clip(self, timeout: float | None, error: type[Exception]) -> float | None:
        if self.at is None:
            return timeout
        left = self.at - time.monotonic()
        if left <= 0:
            raise error("request deadline passed")
        return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, stream: httpcore.NetworkStream, deadline: _Deadline) -> None:
        self._stream = stream
        self._deadline = deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, self._deadline.clip(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, self._deadline.clip(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        timeout = self._deadline.clip(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._stream.start_tls(ssl_context, server_hostname, timeout),
                               self._deadline)

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    def __init__(self, deadline: _Deadline) -> None:
        self._backend = httpcore.SyncBackend()
        self._deadline = deadline

    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        timeout = self._deadline.clip(timeout, httpcore.ConnectTimeout)
        stream = self._backend.connect_tcp(host, port, timeout, local_address, socket_options)
        return _DeadlineStream(stream, self._deadline)

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        timeout = self._deadline.clip(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._backend.connect_unix_socket(path, timeout, socket_options),
                               self._deadline)

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


class DeadlineClient(httpx.Client):
    """httpx.Client(timeout=...) whose requests each end within total seconds.

    total also caps the per-phase timeouts; connect (default: a quarter of total, at most 5 s)
    is separate so a dead host is given up on well before the whole budget is spent.
    """

    def __init__(self, total: float, connect: float | None = None, **kwargs: Any) -> None:
        self.total = total
        self._deadline = _Deadline()
        connect = min(5.0, total / 4) if connect is None else min(connect, total)
        # httpx offers no way to give its transport a network backend: its pool is the one
        # attribute replaced here, built as httpx builds it (same TLS context, from the
        # environment: SSL_CERT_FILE or certifi; httpx's default limits) plus our backend.
        tls = httpx.create_ssl_context(trust_env=True)
        transport = httpx.HTTPTransport(verify=tls)
        limits = httpx.Limits(max_connections=100, max_keepalive_connections=20)
        transport._pool = httpcore.ConnectionPool(
            ssl_context=tls,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_DeadlineBackend(self._deadline),
        )
        super().__init__(timeout=httpx.Timeout(total, connect=connect), transport=transport, **kwargs)

    def send(self, request: httpx.Request, **kwargs: Any) -> httpx.Response:
        self._deadline.at = time.monotonic() + self.total
        try:
            return super().send(request, **kwargs)
        finally:
            self._deadline.at = None
