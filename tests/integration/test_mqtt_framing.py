"""The MQTT source's own frame reader against a real mosquitto: every message arrives once,
in order, whatever its QoS, size, v5 properties or how TCP split it, and is acknowledged."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.model import Reading
from gateway.sources.mqtt import MqttSource, MqttSourceConfig
from tests.conftest import Broker

pytestmark = pytest.mark.integration


class Recorder:
    """An intake that keeps what it is given and commits at once."""

    def __init__(self) -> None:
        self.readings: list[Reading] = []
        self.rejected: list[str] = []
        self.changed = asyncio.Event()

    def accept(self, readings: list[Reading]) -> None:
        self.readings += readings
        self.changed.set()

    def reject(self, source: str, reason: str, detail: str, raw: bytes) -> None:
        self.rejected.append(reason)
        self.changed.set()

    def when_committed(self, callback: Callable[[], None]) -> None:
        callback()

    async def wait_for(self, n: int) -> None:
        async with asyncio.timeout(60):
            while len(self.readings) + len(self.rejected) < n:
                self.changed.clear()
                await self.changed.wait()


def _payload(seq: int, padding: int) -> bytes:
    doc = {"value": float(seq), "ts": 1.7e9 + seq, "seq": seq, "pad": "x" * padding}
    return json.dumps(doc).encode()


def _publish_all(
    port: int, messages: list[tuple[str, bytes, int, bool]], inflight: int = 1
) -> None:
    """Publish in order from a paho client of our own, and wait until the broker has all
    (one message in flight at a time keeps the order across QoS levels)."""
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id="framing-pub", protocol=mqtt.MQTTv5
    )
    client.max_inflight_messages_set(inflight)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        infos = []
        for topic, payload, qos, with_props in messages:
            props = None
            if with_props:
                props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
                props.UserProperty = [("k", "v" * 200)]  # > 127 bytes: a two-byte length
                props.ContentType = "application/json"
            infos.append(client.publish(topic, payload, qos=qos, properties=props))
            if inflight == 1:
                infos[-1].wait_for_publish(10)
        for info in infos:
            info.wait_for_publish(60)
    finally:
        client.loop_stop()
        client.disconnect()


@contextlib.asynccontextmanager
async def _source(broker: Broker, recorder: Recorder, qos: int = 2) -> AsyncIterator[None]:
    """The MQTT source running in this loop, subscribed."""
    config = MqttSourceConfig.model_validate(
        {
            "type": "mqtt",
            "id": "fleet",
            "broker": {"host": broker.host, "port": broker.port},
            "topics": ["sensors/{device}/{metric}"],
            "qos": qos,
            "max_payload_bytes": 1_000_000,
        }
    )
    source = MqttSource(config, "framing")
    task = asyncio.create_task(source.run(recorder))
    try:
        async with asyncio.timeout(20):
            await source.connected.wait()
        await asyncio.sleep(0.3)  # the SUBACK
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_every_message_arrives_once_decoded_and_acknowledged(broker: Broker) -> None:
    # sizes around the one-, two- and three-byte remaining lengths, and bigger than one read
    sizes = [0, 50, 110, 126, 127, 128, 300, 16_383, 16_384, 70_000, 200_000]
    messages = []
    for seq in range(1, 301):
        padding = sizes[seq % len(sizes)]
        messages.append(("sensors/p1/temp", _payload(seq, padding), seq % 3, seq % 4 == 0))
    recorder = Recorder()
    async with _source(broker, recorder):
        await asyncio.to_thread(_publish_all, broker.port, messages)
        await recorder.wait_for(len(messages))
    assert recorder.rejected == []
    assert sorted(r.seq or 0 for r in recorder.readings) == list(range(1, 301))
    # QoS 0 and 1 keep their order (a QoS 2 message is delivered at its PUBREL)
    fast = [r.seq for r in recorder.readings if (r.seq or 0) % 3 != 2]
    assert fast == [seq for seq in range(1, 301) if seq % 3 != 2]
    assert {(r.device, r.metric) for r in recorder.readings} == {("p1", "temp")}
    # every QoS 1 and 2 message was acknowledged: the session redelivers nothing
    again = Recorder()
    async with _source(broker, again):
        await asyncio.sleep(1.0)
    assert again.readings == []


async def test_a_flood_of_small_messages_is_split_across_reads_without_loss(
    broker: Broker,
) -> None:
    n = 20_000
    messages = [(f"sensors/d{seq % 7}/temp", _payload(seq, 0), 1, False) for seq in range(n)]
    recorder = Recorder()
    async with _source(broker, recorder, qos=1):
        await asyncio.to_thread(_publish_all, broker.port, messages, 100)
        await recorder.wait_for(n)
    assert [r.seq for r in recorder.readings] == list(range(n))
    assert recorder.readings[5].device == "d5"


async def test_the_driver_switches_nagle_off_so_small_packets_are_not_held_back(
    broker: Broker,
) -> None:
    """A PUBLISH written while an earlier one waits for its TCP ACK goes out at once, instead
    of waiting up to the peer's delayed-ACK timeout (40 ms): paho leaves Nagle on."""
    import socket

    from gateway.mqttio import PahoDriver

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="nodelay")
    connected = asyncio.get_running_loop().create_future()
    client.on_connect = lambda *_: connected.done() or connected.set_result(None)
    driver = PahoDriver(client)
    await driver.connect(broker.host, broker.port, 60)
    try:
        async with asyncio.timeout(10):
            await connected
        sock = client.socket()
        assert isinstance(sock, socket.socket)
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    finally:
        driver.close()
