"""Optional Prometheus endpoint (`[metrics] listen = "127.0.0.1:9464"`), served by the parent.

No thread: the parent forks, and a thread holding a lock at fork time leaves that lock held
forever in the child. The listening socket and each scrape connection are waited on by the
arbiter's one loop like everything else, and the loop never waits on a scraper
(supervisor/service/exchanges.py: non-blocking, each connection bounded in time, their number
capped). Serving them blocking once let 20 connections that sent nothing hold the loop for
20 s: no child message read, no signal handled, busy tenants then killed as hung. Values are
read from the tenant records at scrape time (heartbeats already carry them), so an idle
supervisor spends nothing on metrics.
"""
from __future__ import annotations

import bisect
import logging
import selectors
import socket
from typing import Any, Callable, Iterable, Iterator

from supervisor.children.records import SKIPPED_COUNTERS, TenantRecord
from supervisor.service.exchanges import Exchanges, Limits
from tenant_proc.deps import MissingDependency, require

log = logging.getLogger("supervisor.metrics")

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
MAX_REQUEST_BYTES = 8192
CONNECTION_DEADLINE = 5.0  # a scrape's whole exchange; Prometheus's own default timeout is 10 s
MAX_CONNECTIONS = 16  # beyond this the oldest silent connection is dropped (exchanges.py)
LISTEN_BACKLOG = 64


class MetricsError(Exception):
    pass


class LatencyHistogram:
    """Seconds from "the tenant noticed the mail" to "the handler returned", all tenants."""

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.total = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.total += seconds
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        running, buckets = 0, []
        for bound, count in zip((*LATENCY_BUCKETS, float("inf")), self.counts):
            running += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), running))
        return buckets


class MetricsServer:
    def __init__(self, listen: str, records: Callable[[], Iterable[TenantRecord]],
                 histogram: LatencyHistogram, selector: selectors.BaseSelector) -> None:
        host, _, port = listen.rpartition(":")
        if not host or not port.isdigit():
            raise MetricsError(f"[metrics] listen must be HOST:PORT, got {listen!r}")
        try:
            prometheus = require("prometheus_client", "[metrics]", "pip install 'idle-supervisor[metrics]'")
        except MissingDependency as exc:
            raise MetricsError(str(exc)) from None
        self._generate = prometheus.generate_latest
        self.registry = prometheus.CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(records, histogram))
        try:
            self.sock = socket.create_server((host.strip("[]"), int(port)), backlog=LISTEN_BACKLOG)
        except OSError as exc:
            raise MetricsError(f"[metrics] cannot listen on {listen}: {exc.strerror or exc}") from None
        self.address = self.sock.getsockname()[:2]
        limits = Limits(max_request=MAX_REQUEST_BYTES, deadline=CONNECTION_DEADLINE,
                        max_connections=MAX_CONNECTIONS,
                        too_large=_response(431, b"request header too large\n"),
                        busy=_response(503, b"busy: too many metrics connections\n"))
        self.exchanges = Exchanges("metrics", self.sock, selector, self._respond, limits, log)
        log.info("metrics on http://%s:%d/metrics", *self.address)

    def serve(self, ready: set[Any]) -> None:
        """Accept, read, answer and write what is ready; drop scrapers past their deadline."""
        self.exchanges.serve(ready)

    def next_deadline(self) -> float:
        return self.exchanges.next_deadline()

    def _respond(self, request: bytes) -> bytes | None:
        if b"\r\n\r\n" not in request:
            return None
        line = request.split(b"\r\n", 1)[0].split()
        if len(line) < 2 or line[0] not in (b"GET", b"HEAD"):
            return _response(405, b"method not allowed\n")
        if line[1].split(b"?")[0] not in (b"/metrics", b"/"):
            return _response(404, b"not found: try /metrics\n")
        body = self._generate(self.registry)
        return _response(200, body if line[0] == b"GET" else b"",
                         "text/plain; version=0.0.4; charset=utf-8", len(body))

    def close(self) -> None:
        self.exchanges.close()
        self.sock.close()


def _response(code: int, body: bytes, ctype: str = "text/plain", length: int | None = None) -> bytes:
    reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed",
              431: "Request Header Fields Too Large", 503: "Service Unavailable"}[code]
    head = (f"HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body) if length is None else length}\r\nConnection: close\r\n\r\n")
    return head.encode() + body


class _Collector:
    def __init__(self, records: Callable[[], Iterable[TenantRecord]], histogram: LatencyHistogram) -> None:
        self.records = records
        self.histogram = histogram

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        records = list(self.records())
        by_state = GaugeMetricFamily("idle_supervisor_tenants", "Tenants by state", labels=["state"])
        counts: dict[str, int] = {}
        for r in records:
            counts[r.display_state()] = counts.get(r.display_state(), 0) + 1
        for state in ("starting", "connecting", "idle", "polling", "processing", "backoff",
                      "failed", "stopped"):
            by_state.add_metric([state], counts.pop(state, 0))
        for state, n in counts.items():
            by_state.add_metric([state], n)
        yield by_state

        labels = ["tenant", "name"]
        families = {
            "processed": CounterMetricFamily("idle_supervisor_emails_processed",
                                             "Emails handled successfully", labels=labels),
            "failed": CounterMetricFamily("idle_supervisor_emails_failed",
                                          "Emails recorded as failed after max_attempts", labels=labels),
            "reconnects": CounterMetricFamily("idle_supervisor_reconnects",
                                              "In-process IMAP reconnects", labels=labels),
        }
        restarts = CounterMetricFamily("idle_supervisor_restarts", "Process restarts", labels=labels)
        silence = GaugeMetricFamily("idle_supervisor_server_idle_seconds",
                                    "Seconds since the last byte from the IMAP server", labels=labels)
        for r in records:
            key = [r.id, r.name]
            for name, family in families.items():
                family.add_metric(key, r.counters[name])
            restarts.add_metric(key, r.restarts)
            if r.server_idle_age is not None and r.is_alive():
                silence.add_metric(key, r.server_idle_age)
        yield from families.values()
        yield restarts
        yield silence
        yield from _handler_families(records, labels)
        yield HistogramMetricFamily(
            "idle_supervisor_handling_latency_seconds",
            "From the tenant noticing new mail to the handler returning",
            buckets=self.histogram.cumulative(), sum_value=self.histogram.total,
        )


def _handler_families(records: list[TenantRecord], labels: list[str]) -> Iterator[Any]:
    """Handler latency, webhook outcomes and the failed emails waiting in each ledger."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    calls = CounterMetricFamily("idle_supervisor_handler_calls", "Handler calls", labels=labels)
    seconds = CounterMetricFamily("idle_supervisor_handler_seconds",
                                  "Time spent in handler calls", labels=labels)
    attempts = CounterMetricFamily("idle_supervisor_webhook_attempts",
                                   "Webhook POSTs sent (retries included)", labels=labels)
    retries = CounterMetricFamily("idle_supervisor_webhook_retries",
                                  "Webhook POSTs that were a retry", labels=labels)
    responses = CounterMetricFamily("idle_supervisor_webhook_responses",
                                    "Webhook outcomes by HTTP status class (error: no answer)",
                                    labels=[*labels, "class"])
    in_failed = GaugeMetricFamily("idle_supervisor_emails_in_failed",
                                  "Emails in the ledger as failed (replay: idle-supervisor retry)",
                                  labels=labels)
    skipped = CounterMetricFamily("idle_supervisor_emails_skipped",
                                  "Emails [imap] skip kept from the handler, by class",
                                  labels=[*labels, "class"])
    for r in records:
        key = [r.id, r.name]
        calls.add_metric(key, r.counters["handler_calls"])
        seconds.add_metric(key, r.counters["handler_ms"] / 1000)
        attempts.add_metric(key, r.counters["webhook_attempts"])
        retries.add_metric(key, r.counters["webhook_retries"])
        for cls in ("2xx", "3xx", "4xx", "5xx", "errors"):
            responses.add_metric([*key, cls.rstrip("s")], r.counters[f"webhook_{cls}"])
        if "failed_in_ledger" in r.gauges:
            in_failed.add_metric(key, r.gauges["failed_in_ledger"])
        for name in SKIPPED_COUNTERS:
            skipped.add_metric([*key, name[len("skipped_"):]], r.counters[name])
    yield from (calls, seconds, attempts, retries, responses, in_failed, skipped)
