"""The metrics endpoint in-process: real sockets on 127.0.0.1, a real store."""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from gateway.counters import Counters
from gateway.health import Monitor
from gateway.metrics import HttpConfig, MetricsServer
from gateway.pipeline.metering import Meters
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
