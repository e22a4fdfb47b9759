"""A loopback TCP proxy that delays every answer: a slow or hanging PostgREST in front of the
real test server (tests/servers/postgres/postgrest_server.py).

    with SlowProxy(("127.0.0.1", postgrest.port)) as proxy:   # SUPABASE_URL = proxy.url
        proxy.response_delay = 12   # each chunk from the server is forwarded 12 s late
        proxy.response_delay = 0    # fast again

Requests reach the server at once (what it writes to the database is written); only the
answers wait, as when PostgREST or the database behind it hangs. Built on tests/servers/proxies/tcp_proxy.py:
its per-chunk hook for the server's bytes (_Link._hold) is where the delay happens.
"""
from __future__ import annotations

from tests.servers.proxies.tcp_proxy import TcpProxy, _Link


class _SlowLink(_Link):
    def _hold(self, data: bytes) -> bool:
        delay = self.proxy.response_delay
        if delay > 0:
            self.closed.wait(delay)  # close() ends the wait: stopping the proxy stays quick
        return super()._hold(data)


class SlowProxy(TcpProxy):
    link_class = _SlowLink

    def __init__(self, upstream: tuple[str, int], host: str = "127.0.0.1") -> None:
        super().__init__(upstream, host)
        self.response_delay = 0.0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"
