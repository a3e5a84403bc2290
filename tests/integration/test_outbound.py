"""The upstream publisher's own PUBLISH frames and PUBACK decoding against a real mosquitto:
order at QoS 0 and 1 beyond the broker's Receive Maximum, refusals by reason code, a
connection lost mid-flight, packet ids wrapping, and frames split across partial writes."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from gateway.errors import SinkError
from gateway.sinks.forwarder import Outcome
from gateway.sinks.mqtt import MqttPublisher, MqttSinkConfig
from gateway.store.store import OutboxRow
from tests.conftest import Broker
from tests.faults.conftest import PersistentBroker

pytestmark = pytest.mark.integration

HANG_GUARD = 60.0
"""Seconds before a wait that should end by an event is called a hang (not a timing check)."""


class Tap:
    """A QoS 1 subscriber on its own paho thread: every message, in arrival order."""

    def __init__(self, port: int, topic: str = "up/#") -> None:
        self.messages: list[tuple[str, bytes]] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self._client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"tap-{id(self)}", protocol=mqtt.MQTTv5
        )
        self._client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self._client.on_subscribe = lambda *_: self._subscribed.set()
        self._client.on_message = self._on_message
        self._client.connect("127.0.0.1", port)
        self._client.loop_start()
        assert self._subscribed.wait(HANG_GUARD), "tap could not subscribe"

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append((msg.topic, bytes(msg.payload)))
            self._cond.notify_all()

    def _wait(self, n: int) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.messages) >= n, HANG_GUARD), (
                f"{len(self.messages)} of {n} messages arrived"
            )

    async def wait_for(self, n: int) -> list[tuple[str, bytes]]:
        await asyncio.to_thread(self._wait, n)
        with self._cond:
            return list(self.messages)

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


def _config(port: int, **extra: object) -> MqttSinkConfig:
    return MqttSinkConfig.model_validate(
        {"type": "mqtt", "id": "up", "broker": {"port": port}, "ack_timeout": "60s", **extra}
    )


def _rows(n: int, qos: int, topic: str = "up/m", start: int = 0, pad: int = 0) -> list[OutboxRow]:
    return [
        OutboxRow(i, f"m{i}", topic, b"%d:" % i + b"x" * pad, qos, 0)
        for i in range(start, start + n)
    ]


@pytest.fixture
async def publisher(broker: Broker) -> AsyncIterator[MqttPublisher]:
    pub = MqttPublisher(_config(broker.port), "outbound-test")
    await pub.connect()
    try:
        yield pub
    finally:
        await pub.close()


async def _outcomes(future: asyncio.Future[list[Outcome]]) -> list[Outcome]:
    async with asyncio.timeout(HANG_GUARD):
        return await future


@pytest.mark.parametrize("qos", [0, 1])
async def test_rounds_arrive_in_order_beyond_the_receive_window(
    broker: Broker, publisher: MqttPublisher, qos: int
) -> None:
    tap = Tap(broker.port)
    try:
        # 10 rounds of 300: three times the broker's Receive Maximum (100) per round
        rounds = [publisher.send(_rows(300, qos, start=300 * k)) for k in range(10)]
        for future in rounds:
            assert await _outcomes(future) == [Outcome.ACKED] * 300
        got = await tap.wait_for(3000)
        assert [p for _, p in got] == [b"%d:" % i for i in range(3000)]
    finally:
        tap.close()


@pytest.fixture
def strict_broker(tmp_path: Path) -> Iterator[PersistentBroker]:
    acl = tmp_path / "acl"
    acl.write_text("topic readwrite #\ntopic deny up/denied/#\n")
    b = PersistentBroker(tmp_path, extra=f"acl_file {acl}\n")
    b.start()
    try:
        yield b
    finally:
        b.stop()


async def test_a_puback_with_a_failure_reason_code_refuses_only_its_row(
    strict_broker: PersistentBroker,
) -> None:
    tap = Tap(strict_broker.port)
    pub = MqttPublisher(_config(strict_broker.port), "outbound-acl")
    await pub.connect()
    try:
        rows = _rows(5, 1) + _rows(1, 1, topic="up/denied/x", start=5) + _rows(5, 1, start=6)
        outcomes = await _outcomes(pub.send(rows))
        assert outcomes == [Outcome.ACKED] * 5 + [Outcome.REFUSED] + [Outcome.ACKED] * 5
        got = await tap.wait_for(10)
        assert [p for _, p in got] == [b"%d:" % i for i in range(11) if i != 5]
    finally:
        await pub.close()
        tap.close()


async def test_a_connection_lost_mid_flight_leaves_every_open_row_unconfirmed(
    broker: Broker, publisher: MqttPublisher
) -> None:
    assert broker.proc is not None
    os.kill(broker.proc.pid, signal.SIGSTOP)  # no PUBACK can come back
    try:
        # QoS 1 rows in flight, QoS 1 rows waiting for the window, QoS 0 rows behind them
        first = publisher.send(_rows(150, 1))
        second = publisher.send(_rows(50, 0, start=150))
        assert not first.done()
        assert not second.done()
    finally:
        os.kill(broker.proc.pid, signal.SIGKILL)
        broker.proc.wait()
    assert await _outcomes(first) == [Outcome.UNCONFIRMED] * 150
    assert await _outcomes(second) == [Outcome.UNCONFIRMED] * 50
    assert not publisher.connected
    with pytest.raises(SinkError):
        publisher.send(_rows(1, 1))


async def test_packet_ids_wrap_around_past_65535(broker: Broker, publisher: MqttPublisher) -> None:
    outbound = publisher._outbound
    assert outbound is not None
    outbound._last_id = 65_500
    tap = Tap(broker.port)
    try:
        futures = [publisher.send(_rows(50, 1, start=50 * k)) for k in range(4)]
        for future in futures:
            assert await _outcomes(future) == [Outcome.ACKED] * 50
        assert 0 < outbound._last_id < 65_500  # wrapped
        got = await tap.wait_for(200)
        assert [p for _, p in got] == [b"%d:" % i for i in range(200)]
    finally:
        tap.close()


async def test_large_frames_survive_partial_writes(
    broker: Broker, publisher: MqttPublisher
) -> None:
    assert broker.proc is not None
    driver = publisher._driver
    assert driver is not None
    tap = Tap(broker.port)
    rows = [
        OutboxRow(i, f"m{i}", "up/big", os.urandom(1000) * (200 + i), i % 2, 0) for i in range(80)
    ]  # 16 MB and more: beyond what the kernel buffers while the broker sleeps
    os.kill(broker.proc.pid, signal.SIGSTOP)
    try:
        future = publisher.send(rows)
        assert driver.client.want_write()  # a frame was cut by a partial write
    finally:
        os.kill(broker.proc.pid, signal.SIGCONT)
    try:
        assert await _outcomes(future) == [Outcome.ACKED] * len(rows)
        got = await tap.wait_for(len(rows))
        assert [hashlib.sha256(p).digest() for _, p in got] == [
            hashlib.sha256(r.payload).digest() for r in rows
        ]
    finally:
        tap.close()


async def test_a_frame_above_the_brokers_maximum_packet_size_is_refused_unsent(
    tmp_path: Path,
) -> None:
    b = PersistentBroker(tmp_path, extra="max_packet_size 2000\n")
    b.start()
    tap = Tap(b.port)
    pub = MqttPublisher(_config(b.port), "outbound-max-packet")
    try:
        await pub.connect()
        assert pub.broker_max_packet == 2000
        rows = [
            OutboxRow(0, "a", "up/x", b"0:", 1, 0),
            OutboxRow(1, "b", "up/x", b"x" * 2000, 1, 0),
            OutboxRow(2, "c", "up/x", b"2:", 0, 0),
        ]
        assert await _outcomes(pub.send(rows)) == [
            Outcome.ACKED,
            Outcome.REFUSED,
            Outcome.ACKED,
        ]
        assert pub.connected  # the broker never saw the big one
        got = await tap.wait_for(2)
        assert [p for _, p in got] == [b"0:", b"2:"]
    finally:
        await pub.close()
        tap.close()
        b.stop()
