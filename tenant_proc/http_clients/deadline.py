"""httpx clients whose every request is bounded as a whole, and reads at most so much of an answer.

httpx's timeouts bound each wait on the socket: a server that answers a byte every half second,
or a DNS lookup, a connect, a write and a read that each take almost the timeout, keep one
request going far longer than any of them. A company process blocked in one request sends no
heartbeat, so every request it makes (the state store's, supabase_insert's, the webhook's, the
token endpoint's) needs a bound on the whole request:

- Deadline: a request's timeout (the client's, or the `timeout=` of that one call) bounds it as a
  whole: DNS lookup (tenant_proc/dns.py), connect, TLS handshake, every write and read, the
  answer's body included, also a streamed one read after send() returns (the deadline stays
  until the next request starts). A wait that would begin after the deadline fails at once.
  Timeout errors stay httpx's own (ConnectTimeout, ReadTimeout, WriteTimeout), only sooner.
- Answer size (max_answer_bytes): the bytes received for one request, status line and headers
  included, are counted on the socket; the next read beyond them raises httpx.ReadError caused
  by AnswerTooLarge (answer_too_large() tells). A hostile server's 64 MB answer costs its reader
  the allowance, not 64 MB.

bound_requests() fits both onto any httpx.Client (authlib's OAuth2Client is one); DeadlineClient
is an httpx.Client made so. Both replace the network backend of the client's connection pools
(httpx offers no public way to give one), so what httpx builds from its arguments (TLS context,
proxies from the environment, limits) stays as it builds it.
"""
from __future__ import annotations

import socket
import ssl
import time
from typing import Any, Iterable

import httpcore
import httpx

from tenant_proc.dns import resolve


class AnswerTooLarge(httpcore.ReadError):
    """The answer went on past the client's max_answer_bytes (raised as httpx.ReadError)."""


def answer_too_large(exc: BaseException) -> bool:
    """Did this httpx error come from the max_answer_bytes allowance?"""
    return isinstance(exc.__cause__, AnswerTooLarge) or isinstance(exc, AnswerTooLarge)


class _RequestLimits:
    """The current request's deadline (monotonic) and byte allowance, shared by a client's streams."""

    def __init__(self, total: float, max_answer_bytes: int | None) -> None:
        self.total = total
        self.max_answer_bytes = max_answer_bytes
        self.at: float | None = None
        self.bytes_left: int | None = None

    def start(self, request: httpx.Request) -> None:
        """httpx "request" event hook: each request gets a fresh deadline and allowance."""
        asked = (request.extensions.get("timeout") or {}).get("read")
        total = self.total if asked is None else min(self.total, asked)
        self.at = time.monotonic() + total
        self.bytes_left = self.max_answer_bytes

    def clip(self, timeout: float | None, error: type[Exception]) -> float | None:
        if self.at is None:
            return timeout
        left = self.at - time.monotonic()
        if left <= 0:
            raise error("request deadline passed")
        return left if timeout is None else min(timeout, left)

    def allowance(self, max_bytes: int) -> int:
        if self.bytes_left is None:
            return max_bytes
        if self.bytes_left <= 0:
            raise AnswerTooLarge(f"the answer is larger than {self.max_answer_bytes} bytes")
        return min(max_bytes, self.bytes_left)

    def received(self, count: int) -> None:
        if self.bytes_left is not None:
            self.bytes_left -= count


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, stream: httpcore.NetworkStream, limits: _RequestLimits) -> None:
        self._stream = stream
        self._limits = limits

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        max_bytes = self._limits.allowance(max_bytes)
        data = self._stream.read(max_bytes, self._limits.clip(timeout, httpcore.ReadTimeout))
        self._limits.received(len(data))
        return data

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, self._limits.clip(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        timeout = self._limits.clip(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._stream.start_tls(ssl_context, server_hostname, timeout),
                               self._limits)

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    def __init__(self, limits: _RequestLimits) -> None:
        self._backend = httpcore.SyncBackend()
        self._limits = limits

    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        clip = self._limits.clip
        lookup = clip(timeout, httpcore.ConnectTimeout)
        try:  # the backend's own lookup (in socket.create_connection) would have no deadline
            addresses = resolve(host, port, lookup if lookup is not None else 60.0)
        except socket.timeout as exc:
            raise httpcore.ConnectTimeout(str(exc)) from None
        except OSError as exc:
            raise httpcore.ConnectError(str(exc)) from None
        error: Exception = httpcore.ConnectError(f"no address for {host}")
        for address in addresses:
            try:
                stream = self._backend.connect_tcp(address[4][0], port, clip(timeout, httpcore.ConnectTimeout),
                                                   local_address, socket_options)
            except httpcore.ConnectError as exc:  # refused on this address: the next one
                error = exc
                continue
            return _DeadlineStream(stream, self._limits)
        raise error

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        timeout = self._limits.clip(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._backend.connect_unix_socket(path, timeout, socket_options),
                               self._limits)

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


def bound_requests(client: httpx.Client, total: float,
                   max_answer_bytes: int | None = None) -> httpx.Client:
    """Make each of client's requests end within total seconds as a whole (or its own smaller
    timeout) and read at most max_answer_bytes of each answer; call before its first request."""
    limits = _RequestLimits(total, max_answer_bytes)
    backend = _DeadlineBackend(limits)
    for transport in (client._transport, *client._mounts.values()):
        if transport is None:  # a NO_PROXY pattern: requests go through client._transport
            continue
        pool = getattr(transport, "_pool", None)
        if not hasattr(pool, "_network_backend"):  # an httpx or httpcore this was not made for
            raise TypeError(f"cannot bound the requests of {type(transport).__name__}")
        pool._network_backend = backend  # type: ignore[union-attr]
    client.event_hooks["request"].append(limits.start)
    return client


class DeadlineClient(httpx.Client):
    """httpx.Client(timeout=...) whose requests each end within total seconds.

    total also caps the per-phase timeouts; connect (default: a quarter of total, at most 5 s)
    is separate so a dead host is given up on well before the whole budget is spent.
    max_answer_bytes: read at most this much of any answer (None: no limit).
    """

    def __init__(self, total: float, connect: float | None = None,
                 max_answer_bytes: int | None = None, **kwargs: Any) -> None:
        self.total = total
        connect = min(5.0, total / 4) if connect is None else min(connect, total)
        super().__init__(timeout=httpx.Timeout(total, connect=connect), **kwargs)
        bound_requests(self, total, max_answer_bytes)


def read_at_most(response: httpx.Response, limit: int) -> bytes:
    """Up to limit bytes of a streamed answer's body, as sent (never decoded: a compressed body
    cannot grow in memory); the rest is not read. Close the response afterwards: a connection
    whose answer was not read to the end is dropped, never reused."""
    kept = bytearray()
    try:
        for chunk in response.iter_raw():
            kept += chunk[: limit - len(kept)]
            if len(kept) >= limit:
                break
    except httpx.ReadError as exc:
        if not answer_too_large(exc):
            raise
    return bytes(kept)
