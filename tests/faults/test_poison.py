"""Poison messages never block the outbox: the forwarder, a real store file and a real broker
that refuses some topics (PUBACK 0x87 under MQTT v5) reconcile every row."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.counters import Counters
from gateway.sinks.forwarder import Forwarder
from gateway.sinks.mqtt import MqttPublisher, MqttSinkConfig
from gateway.sinks.resilience import Backoff
from gateway.store.config import StoreConfig
from gateway.store.store import PRIORITY_ALERT, PRIORITY_READING, Store
from tests.faults.conftest import PersistentBroker
from tests.integration.harness import Collector

pytestmark = pytest.mark.integration


@pytest.fixture
def strict_broker(tmp_path: Path) -> Iterator[PersistentBroker]:
    acl = tmp_path / "acl"
    acl.write_text("topic readwrite #\ntopic deny site/poison/#\n")
    b = PersistentBroker(tmp_path, persistence=True, extra=f"acl_file {acl}\n")
    b.start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    """A store with its flusher running, as in the daemon (delivered rows leave the outbox
    with its commits)."""
    async with Store(StoreConfig(path=tmp_path / "gw.db"), Counters()) as s:
        flusher = asyncio.create_task(s.run())
        yield s
        flusher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await flusher


async def test_refused_and_oversized_messages_are_dead_lettered_and_the_rest_flows(
    strict_broker: PersistentBroker, store: Store
) -> None:
    collector = Collector(strict_broker.host, strict_broker.port, "site/#")
    counters = Counters()
    config = MqttSinkConfig.model_validate(
        {
            "type": "mqtt",
            "id": "up",
            "broker": {"port": strict_broker.port},
            "ack_timeout": "3s",
            "max_message_bytes": 4096,
            "max_attempts": 3,
        }
    )
    forwarder = Forwarder(
        "up",
        store,
        MqttPublisher(config, "poison-test"),
        counters,
        batch=50,
        backoff=Backoff(0.01, 0.05),
        breaker_failures=100,
        breaker_cooldown=0.1,
        max_message_bytes=config.max_message_bytes,
        max_attempts=config.max_attempts,
    )
    for i in range(100):
        if i == 10:
            store.add_outbox("up", "denied", "site/poison/x", b'{"id": "denied"}', 1)
        if i == 20:
            store.add_outbox("up", "huge", "site/ok/huge", b"x" * 5000, 1)
        store.add_outbox("up", f"m{i}", "site/ok/m", b'{"id": "m%d"}' % i, 1)
    await store.flush()
    task = asyncio.create_task(forwarder.run())
    try:
        async with asyncio.timeout(30):
            while await store.outbox_depth("up"):
                forwarder.idle.clear()
                await forwarder.idle.wait()
    finally:
        task.cancel()
        await forwarder.close()
    try:
        collector.wait_for(lambda c: len(c.messages) >= 100, 10, "100 messages upstream")
        assert sorted(collector.messages) == sorted(f"m{i}" for i in range(100))
        dead = await store.query("SELECT source, reason, detail FROM dead_letters ORDER BY id")
        assert [(d["source"], d["reason"]) for d in dead] == [
            ("up", "too_large"),
            ("up", "undeliverable"),
        ]
        assert dead[1]["detail"].startswith("denied on site/poison/x after 2 attempts")
        assert counters.get("up", "refused") == 3
        # Sent: the 100 good rows once, the denied one three times (two retries); the
        # oversized one never.
        assert (counters.get("up", "published"), counters.get("up", "retries")) == (103, 2)
        assert counters.get("up", "acked") == 100
    finally:
        collector.close()


async def test_a_paced_backlog_lets_a_new_alert_go_first(
    strict_broker: PersistentBroker, store: Store
) -> None:
    collector = Collector(strict_broker.host, strict_broker.port, "site/#")
    order: list[str] = []
    first = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_message(_c: object, _u: object, msg: Any) -> None:  # paho's thread
        order.append(msg.topic)
        loop.call_soon_threadsafe(first.set)

    collector._client.on_message = on_message
    config = MqttSinkConfig.model_validate(
        {"type": "mqtt", "id": "up", "broker": {"port": strict_broker.port}, "drain_rate": 100}
    )
    forwarder = Forwarder(
        "up",
        store,
        MqttPublisher(config, "pacing-test"),
        Counters(),
        batch=500,
        backoff=Backoff(0.01, 0.05),
        breaker_failures=5,
        breaker_cooldown=0.1,
        drain_rate=config.drain_rate,
    )
    for i in range(300):  # a backlog of readings, oldest first
        store.add_outbox("up", f"r{i}", "site/ok/reading", b"{}", 1, PRIORITY_READING)
    await store.flush()
    task = asyncio.create_task(forwarder.run())
    try:
        async with asyncio.timeout(20):
            await first.wait()
            store.add_outbox("up", "alert", "site/ok/alert", b"{}", 1, PRIORITY_ALERT)
            await store.flush()
            while await store.outbox_depth("up"):
                forwarder.idle.clear()
                await forwarder.idle.wait()
    finally:
        task.cancel()
        await forwarder.close()
        collector.close()
    # 100/s in batches of 100: the alert, queued after the first delivery, goes out after at
    # most one more batch, long before the 300-row backlog has drained.
    assert len(order) == 301
    assert order.index("site/ok/alert") <= 200
