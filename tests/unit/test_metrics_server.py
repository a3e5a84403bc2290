"""The metrics endpoint in-process: real sockets on 127.0.0.1, a real store."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from gateway.counters import Counters
from gateway.health import Monitor
from gateway.metrics import HttpConfig, MetricsServer
from gateway.model import Reading
from gateway.pipeline.metering import Meters
from gateway.sinks.resilience import BreakerState
from gateway.store.config import StoreConfig
from gateway.store.store import Store


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with Store(StoreConfig(path=tmp_path / "gw.db"), Counters()) as s:
        yield s


def server(store: Store, port: int, counters: Counters, monitor: Monitor) -> MetricsServer:
    config = HttpConfig(port=port)
    return MetricsServer(
        config, counters, monitor, store, Meters(), ["fleet"], str(store.config.path)
    )


async def test_scrape_and_health_answers(store: Store) -> None:
    counters = Counters()
    counters.inc("fleet", "readings", 7)
    counters.inc("fleet", "rejected_too_many_devices", 2)
    clock = [0.0]
    monitor = Monitor(store, dict, counters, stall_after=10, clock=lambda: clock[0])
    await monitor.check()
    s = server(store, 0, counters, monitor)
    await s.start()
    try:
        base = f"http://127.0.0.1:{s.port}"
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/metrics") as r:
                text = await r.text()
                assert r.status == 200
            assert 'edge_gateway_source_decoded_readings_total{source="fleet"} 7.0' in text
            assert (
                'edge_gateway_source_rejected_total{reason="too_many_devices",source="fleet"} 2.0'
                in text
            )
            async with http.get(f"{base}/healthz") as r:
                assert (r.status, (await r.json())["alive"]) == (200, True)
            # The writer stops committing: after stall_after, /healthz and /readyz say so.
            store.add_dead_letter("fleet", "x", "", b"", 0.0)
            await monitor.check()
            clock[0] = 11.0
            await monitor.check()
            async with http.get(f"{base}/healthz") as r:
                assert r.status == 503
                assert (await r.json())["stalled"] == ["store"]
            async with http.get(f"{base}/readyz") as r:
                assert r.status == 503
    finally:
        await s.stop()


async def test_a_taken_port_is_logged_and_the_gateway_goes_on(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        counters = Counters()
        s = server(store, port, counters, Monitor(store, dict, counters, stall_after=10))
        with caplog.at_level(logging.ERROR):
            await s.start()
        assert s.port is None
        assert f"cannot listen on 127.0.0.1:{port}" in caplog.text
        await s.stop()


def samples(text: str, name: str) -> dict[str, float]:
    """``{labels: value}`` of every sample of ``name`` in a scrape."""
    out = {}
    for line in text.splitlines():
        metric, _, value = line.rpartition(" ")
        if metric == name or metric.startswith(name + "{"):
            out[metric.removeprefix(name)] = float(value)
    return out


async def test_every_store_commit_is_one_latency_observation(tmp_path: Path) -> None:
    counters = Counters()
    async with Store(StoreConfig(path=tmp_path / "gw.db"), counters) as store:
        s = server(store, 0, counters, Monitor(store, dict, counters, stall_after=10))
        await s.start()
        try:
            async with aiohttp.ClientSession() as http:
                url = f"http://127.0.0.1:{s.port}/metrics"
                async with http.get(url) as r:
                    before = samples(await r.text(), "edge_gateway_store_commit_seconds_count")
                for batch in range(3):  # three batches of 100 rows: three commits
                    store.add_readings(
                        Reading("fleet", "p1", "t", 1.0, 1_700_000_000.0 + n, n)
                        for n in range(batch * 100, batch * 100 + 100)
                    )
                    await store.flush()
                async with http.get(url) as r:
                    text = await r.text()
        finally:
            await s.stop()
    assert before == {"": 0.0}
    assert samples(text, "edge_gateway_store_commit_seconds_count") == {"": 3.0}
    assert 0 < samples(text, "edge_gateway_store_commit_seconds_sum")[""] < 30
    buckets = list(samples(text, "edge_gateway_store_commit_seconds_bucket").items())
    assert buckets[-1] == ('{le="+Inf"}', 3.0)
    assert [n for _, n in buckets] == sorted(n for _, n in buckets)  # cumulative
    assert samples(text, "edge_gateway_store_rows_total")['{event="readings_written"}'] == 300


async def test_sink_counters_and_breaker_state_are_exported(store: Store) -> None:
    counters = Counters()
    for event, n in {
        "published": 12,
        "acked": 9,
        "refused": 1,
        "retries": 2,
        "failures": 1,
    }.items():
        counters.inc("upstream", event, n)
    monitor = Monitor(store, lambda: {"upstream": (BreakerState.OPEN, 3)}, counters, stall_after=10)
    await monitor.check()
    s = server(store, 0, counters, monitor)
    await s.start()
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{s.port}/metrics") as r,
        ):
            text = await r.text()
    finally:
        await s.stop()
    assert samples(text, "edge_gateway_sink_messages_total") == {
        f'{{event="{event}",sink="upstream"}}': n
        for event, n in {
            "published": 12, "acked": 9, "refused": 1, "retries": 2, "failures": 1
        }.items()
    }  # fmt: skip
    assert samples(text, "edge_gateway_sink_breaker_state") == {
        '{sink="upstream",state="closed"}': 0.0,
        '{sink="upstream",state="open"}': 1.0,
        '{sink="upstream",state="half_open"}': 0.0,
    }


async def exchange(port: int, request: bytes) -> bytes:
    """Send raw bytes, read the whole answer (the server closes after one response)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    try:
        answer = await reader.read()
    except ConnectionResetError:  # closed with our request unread
        answer = b""
    writer.close()
    return answer


async def test_the_endpoint_speaks_plain_http_to_any_client(store: Store) -> None:
    counters = Counters()
    s = server(store, 0, counters, Monitor(store, dict, counters, stall_after=10))
    await s.start()
    assert s.port is not None
    try:
        ok = await exchange(s.port, b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n")
        head, _, body = ok.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert f"Content-Length: {len(body)}".encode() in head
        assert b"edge_gateway_store_bytes" in body
        head_only = await exchange(s.port, b"HEAD /healthz HTTP/1.0\r\n\r\n")
        assert head_only.startswith(b"HTTP/1.1 200 OK\r\n")
        assert head_only.endswith(b"\r\n\r\n")
        missing = await exchange(s.port, b"GET /nope HTTP/1.1\r\n\r\n")
        assert missing.startswith(b"HTTP/1.1 404 ")
        post = await exchange(s.port, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
        assert post.startswith(b"HTTP/1.1 405 ")
        assert b"Allow: GET, HEAD" in post
        garbage = await exchange(s.port, b"hello\r\n\r\n")
        assert garbage.startswith(b"HTTP/1.1 400 ")
        # A head beyond the limit gets no answer, only a closed connection.
        assert await exchange(s.port, b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 9000) == b""
    finally:
        await s.stop()


async def test_detector_evictions_are_a_step_event(store: Store) -> None:
    counters = Counters()
    counters.inc("detect/default-anomaly", "evicted", 3)
    s = server(store, 0, counters, Monitor(store, dict, counters, stall_after=10))
    await s.start()
    assert s.port is not None
    try:
        answer = await exchange(s.port, b"GET /metrics HTTP/1.1\r\n\r\n")
    finally:
        await s.stop()
    text = answer.partition(b"\r\n\r\n")[2].decode()
    assert samples(text, "edge_gateway_step_events_total") == {
        '{event="evicted",pipeline="detect",step="default-anomaly"}': 3.0
    }
