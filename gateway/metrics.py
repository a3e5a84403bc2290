"""Prometheus metrics and health endpoints over HTTP: ``/metrics``, ``/healthz``, ``/readyz``.

Nothing is added to the hot path: metrics are derived at scrape time from the ``Counters``
the gateway already keeps, the last health verdict and two small store queries. The server
binds to 127.0.0.1 by default; ``port: 0`` picks a free port (logged).

The server is a few lines over ``asyncio.start_server``: three GET endpoints, one request
per connection (``Connection: close``), a bounded request head and a read timeout. A web
framework (aiohttp) would cost about 10 MB of resident memory for these three answers; it
is imported only by the web UI, when that is enabled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector
from pydantic import Field

from gateway.config.types import StrictModel
from gateway.counters import Counters, Durations
from gateway.health import Monitor, StoreView
from gateway.pipeline.metering import Meters
from gateway.sinks.resilience import BreakerState

log = logging.getLogger("gateway.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
STORE_COUNTERS = (
    "readings_written",
    "duplicates",
    "dead_letters",
    "rejected",
    "retention_deleted",
    "write_errors",
    "lost_on_close",
)
SINK_COUNTERS = ("published", "acked", "refused", "retries", "failures")
STEP_EVENTS = ("error", "late", "duplicate", "future_ts", "evicted")
HEAD_LIMIT = 8192
"""Bytes of request line and headers accepted; beyond, the connection is closed."""
READ_TIMEOUT = 10.0
"""Seconds a client has to send its request head."""
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}
REASONS |= {500: "Internal Server Error", 503: "Service Unavailable"}

Answer = tuple[int, str, bytes]
"""Status, content type and body of one response."""


class HttpConfig(StrictModel):
    """Where ``/metrics``, ``/healthz`` and ``/readyz`` are served."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(9108, ge=0, le=65535, description="0: any free port (logged)")
    ready_max_outbox: int = Field(
        10_000, ge=1, description="a sink that is not connected is still ready below this"
    )


@dataclass(slots=True)
class _Scrape:
    """Values read asynchronously just before a scrape."""

    alerts: dict[tuple[str, str], int] = field(default_factory=dict)


class GatewayCollector(Collector):
    """Turns counters, the health verdict and store facts into metric families."""

    def __init__(
        self,
        counters: Counters,
        monitor: Monitor,
        meters: Meters,
        sources: list[str],
        store_path: str,
        step_keys: Callable[[], list[tuple[str, str, int]]] = list,
    ) -> None:
        self._counters = counters
        self._step_keys = step_keys
        self._meters = meters
        self._monitor = monitor
        self.sources = sources
        self._store_path = store_path
        self.scrape = _Scrape()

    def collect(self) -> Iterator[Metric]:
        counts = self._counters.snapshot()
        received = CounterMetricFamily(
            "edge_gateway_source_received", "messages or lines received", labels=["source"]
        )
        decoded = CounterMetricFamily(
            "edge_gateway_source_decoded_readings", "readings decoded", labels=["source"]
        )
        malformed = CounterMetricFamily(
            "edge_gateway_source_rejected",
            "inputs rejected, by reason",
            labels=["source", "reason"],
        )
        steps = CounterMetricFamily(
            "edge_gateway_step_events",
            "per pipeline step: records in and out, and why some were dropped",
            labels=["pipeline", "step", "event"],
        )
        late = CounterMetricFamily(
            "edge_gateway_late_readings", "readings after their window closed", labels=["pipeline"]
        )
        store = CounterMetricFamily("edge_gateway_store_rows", "store events", labels=["event"])
        sink = CounterMetricFamily(
            "edge_gateway_sink_messages", "sink deliveries", labels=["sink", "event"]
        )
        late_per_pipeline: dict[str, int] = {}
        for (component, name), n in counts.items():
            if component in self.sources:
                if name == "messages":
                    received.add_metric([component], n)
                elif name == "readings":
                    decoded.add_metric([component], n)
                elif name.startswith("rejected_"):
                    malformed.add_metric([component, name.removeprefix("rejected_")], n)
            elif component == "store" and name in STORE_COUNTERS:
                store.add_metric([name], n)
            elif "/" in component and name in STEP_EVENTS:
                pipeline, step = component.split("/", 1)
                steps.add_metric([pipeline, step, name], n)
                if name == "late":
                    late_per_pipeline[pipeline] = late_per_pipeline.get(pipeline, 0) + n
            elif name in SINK_COUNTERS:
                sink.add_metric([component, name], n)
        for pipeline, n in late_per_pipeline.items():
            late.add_metric([pipeline], n)
        yield from (received, decoded, malformed, steps, late, store, sink)

        records = CounterMetricFamily(
            "edge_gateway_step_records",
            "records into (in) and out of (out) each pipeline step",
            labels=["pipeline", "step", "direction"],
        )
        step_time = SummaryMetricFamily(
            "edge_gateway_step_processing_seconds",
            "time each pipeline step itself spent on the records pushed into it",
            labels=["pipeline", "step"],
        )
        for (pipeline, step), c in list(self._meters.steps.items()):
            into = self._meters.received(pipeline, step)
            records.add_metric([pipeline, step, "in"], into)
            records.add_metric([pipeline, step, "out"], c.emitted)
            step_time.add_metric([pipeline, step], into, self._meters.step_seconds(pipeline, step))
        yield records
        yield step_time
        keys = GaugeMetricFamily(
            "edge_gateway_step_keys",
            "device+metric keys a stateful step holds state for (a processing-time window:"
            " its open windows)",
            labels=["pipeline", "step"],
        )
        for pipeline, step, size in self._step_keys():
            keys.add_metric([pipeline, step], size)
        yield keys
        processing = SummaryMetricFamily(
            "edge_gateway_pipeline_processing_seconds",
            "time spent pushing readings through each pipeline",
            labels=["pipeline"],
        )
        for pipeline, t in list(self._meters.pipelines.items()):
            processing.add_metric([pipeline], t.count, t.seconds)
        yield processing

        commits = self._counters.durations().get(("store", "commit_seconds")) or Durations()
        yield HistogramMetricFamily(
            "edge_gateway_store_commit_seconds",
            "time to commit one batch of the store (queued on its writer thread, then one"
            " transaction)",
            buckets=commits.buckets(),
            sum_value=commits.total,
        )

        alerts = CounterMetricFamily(
            "edge_gateway_alerts_raised", "alerts raised", labels=["pipeline", "severity"]
        )
        for (pipeline, severity), n in self.scrape.alerts.items():
            alerts.add_metric([pipeline, severity], n)
        yield alerts

        v = self._monitor.last
        yield GaugeMetricFamily(
            "edge_gateway_store_open", "1 when the store answered the last check", v.store_open
        )
        yield GaugeMetricFamily(
            "edge_gateway_store_pending", "items queued and not yet committed", v.store_pending
        )
        yield GaugeMetricFamily(
            "edge_gateway_store_probe_seconds",
            "how long the store's writer thread took to answer the last check",
            v.store_probe_seconds,
        )
        yield GaugeMetricFamily(
            "edge_gateway_store_bytes",
            "size of the database file with its WAL",
            _file_bytes(self._store_path),
        )
        yield GaugeMetricFamily(
            "edge_gateway_event_loop_lag_seconds",
            "how late the last periodic check woke up",
            v.loop_lag,
        )
        yield GaugeMetricFamily(
            "edge_gateway_stalled", "1 when some part made no progress", 0 if v.alive else 1
        )
        depth = GaugeMetricFamily("edge_gateway_outbox_depth", "rows waiting", labels=["sink"])
        age = GaugeMetricFamily(
            "edge_gateway_outbox_oldest_age_seconds", "age of the oldest row", labels=["sink"]
        )
        breaker = GaugeMetricFamily(
            "edge_gateway_sink_breaker_state",
            "1 for the current circuit breaker state",
            labels=["sink", "state"],
        )
        for sink_id, s in v.sinks.items():
            depth.add_metric([sink_id], s.depth)
            age.add_metric([sink_id], s.oldest_age)
            for state in BreakerState:
                breaker.add_metric([sink_id, state.value], 1 if s.breaker is state else 0)
        yield from (depth, age, breaker)


def _file_bytes(path: str) -> float:
    total = 0
    for suffix in ("", "-wal"):
        with contextlib.suppress(OSError):
            total += os.stat(path + suffix).st_size
    return float(total)


class MetricsServer:
    """The HTTP endpoint; ``start`` binds, ``stop`` closes."""

    def __init__(
        self,
        config: HttpConfig,
        counters: Counters,
        monitor: Monitor,
        store: StoreView,
        meters: Meters,
        sources: list[str],
        store_path: str,
        step_keys: Callable[[], list[tuple[str, str, int]]] = list,
    ) -> None:
        self.config = config
        self._monitor = monitor
        self._store = store
        self.collector = GatewayCollector(counters, monitor, meters, sources, store_path, step_keys)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.collector)
        ProcessCollector(namespace="edge_gateway", registry=self.registry)
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.StreamWriter] = set()
        self.routes: dict[str, Callable[[], Awaitable[Answer]]] = {
            "/metrics": self._metrics,
            "/healthz": self._healthz,
            "/readyz": self._readyz,
        }
        self.port: int | None = None

    async def start(self) -> None:
        try:
            server = await asyncio.start_server(
                self._serve, self.config.host, self.config.port, limit=HEAD_LIMIT
            )
        except OSError as exc:
            log.error(
                "metrics: cannot listen on %s:%d (%s); running without /metrics",
                self.config.host,
                self.config.port,
                exc,
            )
            return
        self._server = server
        address = server.sockets[0].getsockname()
        self.port = int(address[1])
        log.info("metrics: http://%s:%d/metrics, /healthz, /readyz", address[0], self.port)

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for writer in list(self._clients):
            writer.close()
        await server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One request, one response, then close (the connection's own task)."""
        self._clients.add(writer)
        try:
            try:
                async with asyncio.timeout(READ_TIMEOUT):
                    head = await reader.readuntil(b"\r\n\r\n")
            except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                return  # too slow, cut short or too long: nothing worth an answer
            request = head.split(b"\r\n", 1)[0].split(b" ")
            method, target, version = request if len(request) == 3 else (b"", b"", b"")
            route = self.routes.get(target.split(b"?", 1)[0].decode("latin-1"))
            extra = ""
            if not version.startswith(b"HTTP/1."):
                answer: Answer = (400, "text/plain", b"bad request\n")
            elif route is None:
                answer = (404, "text/plain", b"not found\n")
            elif method not in (b"GET", b"HEAD"):
                answer, extra = (405, "text/plain", b"method not allowed\n"), "Allow: GET, HEAD\r\n"
            else:
                answer = await route()
            status, content_type, body = answer
            writer.write(
                f"HTTP/1.1 {status} {REASONS[status]}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n".encode()
            )
            if method != b"HEAD":
                writer.write(body)
            await writer.drain()
        except ConnectionError:
            pass  # the client went away: nothing to answer
        finally:
            self._clients.discard(writer)
            writer.close()

    async def _metrics(self) -> Answer:
        try:
            rows = await self._store.query(
                "SELECT pipeline, severity, count(*) AS n FROM alerts"
                " WHERE state = 'raised' GROUP BY pipeline, severity"
            )
            self.collector.scrape.alerts = {
                (str(r["pipeline"]), str(r["severity"])): int(str(r["n"])) for r in rows
            }
        except Exception as exc:  # a scrape must answer even when the store does not
            log.warning("metrics: alert counts unavailable: %r", exc)
        return 200, CONTENT_TYPE, generate_latest(self.registry)

    async def _healthz(self) -> Answer:
        v = self._monitor.last
        return _json(
            200 if v.alive else 503,
            {"alive": v.alive, "stalled": v.stalled, "loop_lag_s": round(v.loop_lag, 4)},
        )

    async def _readyz(self) -> Answer:
        ok, body = self._monitor.ready(self.config.ready_max_outbox)
        return _json(200 if ok else 503, body)


def _json(status: int, body: dict[str, Any]) -> Answer:
    return status, "application/json", orjson.dumps(body)
