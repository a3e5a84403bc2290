"""Upstream MQTT sink: its config and a publisher that reports each message's PUBACK.

The publisher speaks MQTT v5 on the asyncio loop (paho for the session, our own frames for
PUBLISH and PUBACK), so every PUBACK carries a reason code: a failure code (e.g. 0x87 not
authorized, 0x97 quota exceeded) is a refusal, not a delivery. aiomqtt 2.5 resolves
``publish`` on any PUBACK, so it is not used here.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Sequence
from typing import Any, Literal

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import Field

from gateway.config.mqtt import MqttBroker, tls_context
from gateway.config.types import Duration, StrictModel
from gateway.errors import SinkError
from gateway.mqttio import PahoDriver
from gateway.sinks.forwarder import Outcome
from gateway.sinks.outbound import Outbound, Round
from gateway.sinks.topics import TopicTemplate
from gateway.store.store import OutboxRow


class TopicTemplates(StrictModel):
    """Where each kind of record is published; placeholders are sanitized values."""

    reading: TopicTemplate = "site/{gateway}/{device}/{metric}/reading"
    aggregate: TopicTemplate = "site/{gateway}/{device}/{metric}/agg"
    alert: TopicTemplate = "site/{gateway}/{device}/{metric}/alert"


class BreakerConfig(StrictModel):
    """Open after ``failures`` consecutive failures; probe again after ``cooldown``."""

    failures: int = Field(5, ge=1)
    cooldown: Duration = 30.0


class MqttSinkConfig(StrictModel):
    """An upstream MQTT broker that receives aggregates, alerts and forwarded readings."""

    type: Literal["mqtt"]
    id: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    broker: MqttBroker = MqttBroker()
    qos: Literal[0, 1, 2] = 1
    retain: bool = False
    topics: TopicTemplates = TopicTemplates()
    batch: int = Field(200, ge=1, le=10_000)
    ack_timeout: Duration = 10.0
    breaker: BreakerConfig = BreakerConfig()
    drain_timeout: Duration = Field(
        5.0, description="at shutdown, how long to try to empty the outbox"
    )
    max_message_bytes: int = Field(
        256 * 1024,
        ge=64,
        description="topic + payload above this go to dead_letters without being sent",
    )
    max_attempts: int = Field(
        10, ge=1, description="refused or unconfirmed sends of one message before it is dead"
    )
    max_inflight: int = Field(
        1000,
        ge=1,
        le=65535,
        description="QoS 1/2 messages sent and not acknowledged yet, at most (lowered to the"
        " broker's Receive Maximum)",
    )
    drain_rate: float | None = Field(
        None, gt=0, description="messages per second at most (a backlog drains no faster)"
    )
    outbox: Literal["sqlite", "memory"] = Field(
        "sqlite",
        description="sqlite: every message is committed before it is sent (survives a crash);"
        " memory: kept in memory until acknowledged (faster; a crash loses what is unsent)",
    )
    memory_max_rows: int = Field(
        100_000, ge=1, description="outbox: memory holds at most this many messages"
    )


class MqttPublisher:
    """One MQTT v5 connection to the upstream broker; publishes a batch, reports outcomes.

    paho connects, keeps alive and disconnects; PUBLISH frames and PUBACKs are ours
    (``gateway.sinks.outbound``)."""

    def __init__(self, config: MqttSinkConfig, client_id: str) -> None:
        self._config = config
        self._client_id = client_id
        self._driver: PahoDriver | None = None
        self._outbound: Outbound | None = None
        self.broker_max_packet: int | None = None
        """The broker's Maximum Packet Size from CONNACK, if it sent one."""

    async def connect(self) -> None:
        cfg, b = self._config, self._config.broker
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=self._client_id, protocol=mqtt.MQTTv5
        )
        if b.username is not None:
            client.username_pw_set(b.username, b.password)
        if (context := tls_context(b)) is not None:
            client.tls_set_context(context)
        client.max_inflight_messages_set(0)  # no paho queue: the outbound window is the bound
        connack: asyncio.Future[ReasonCode] = asyncio.get_running_loop().create_future()
        receive_maximum = [cfg.max_inflight]

        def on_connect(c: mqtt.Client, _u: Any, _f: Any, rc: ReasonCode, props: Any) -> None:
            self.broker_max_packet = getattr(props, "MaximumPacketSize", None)
            # exceeding the broker's Receive Maximum is a protocol error
            if receive := getattr(props, "ReceiveMaximum", None):
                receive_maximum[0] = min(cfg.max_inflight, receive)
            if not connack.done():
                connack.set_result(rc)

        errors: list[str] = []  # why the socket failed, e.g. the TLS alert of a refused cert

        def on_log(_c: mqtt.Client, _u: Any, level: int, text: str) -> None:
            if level == mqtt.MQTT_LOG_ERR:
                errors[:] = [text]

        client.on_connect = on_connect
        client.on_log = on_log
        client.on_publish = self._on_publish
        client.on_disconnect = self._on_disconnect
        driver = PahoDriver(
            client, after_read=self._after_read, after_write=self._written, on_puback=self._puback
        )
        self._driver = driver
        try:
            await driver.connect(b.host, b.port, b.keepalive, clean_start=True)
            _no_delay(client.socket())
            await asyncio.wait(
                (connack, driver.lost), timeout=cfg.ack_timeout, return_when=asyncio.FIRST_COMPLETED
            )
        except OSError as exc:
            await self.close()
            raise SinkError(f"cannot connect to {b.host}:{b.port}: {exc}") from exc
        if not connack.done() or connack.result().is_failure:
            why = connack.result() if connack.done() else "no CONNACK"
            if errors and not connack.done():
                why = f"{why} ({errors[-1]})"
            await self.close()
            raise SinkError(f"{b.host}:{b.port} refused the connection: {why}")
        client.on_log = None  # paho formats every packet's debug line while one is set
        self._outbound = outbound = Outbound(
            client,
            driver.write,
            retain=cfg.retain,
            receive_maximum=receive_maximum[0],
            max_packet=self.broker_max_packet,
        )
        # paho reports a lost connection through on_disconnect; this also covers a socket
        # closed any other way
        driver.lost.add_done_callback(lambda _: outbound.fail_all())

    def _puback(self, mid: int, reason: int) -> None:
        if self._outbound is not None:
            self._outbound.puback(mid, reason)

    def _after_read(self) -> None:
        if self._outbound is not None:
            self._outbound.after_read()

    def _written(self) -> None:
        if self._outbound is not None:
            self._outbound.written()

    def _on_publish(
        self, _c: mqtt.Client, _u: Any, mid: int, rc: ReasonCode, _p: Any = None
    ) -> None:
        """paho's word on a QoS 2 message (the others never reach paho)."""
        if self._outbound is not None:
            self._outbound.completed(mid, rc.is_failure)

    def _on_disconnect(self, *_: Any) -> None:
        if self._outbound is not None:
            self._outbound.fail_all()

    async def close(self) -> None:
        driver, self._driver = self._driver, None
        if driver is not None:
            driver.close()
        if self._outbound is not None:
            self._outbound.fail_all()

    @property
    def connected(self) -> bool:
        return self._driver is not None and not self._driver.lost.done()

    def send(self, rows: Sequence[OutboxRow]) -> asyncio.Future[list[Outcome]]:
        """Publish in order, after every earlier round; the future gives one outcome per row
        (those without a PUBACK within ``ack_timeout`` are unconfirmed)."""
        driver, outbound = self._driver, self._outbound
        if driver is None or outbound is None or driver.lost.done() or outbound.closed:
            raise SinkError("not connected")
        loop = asyncio.get_running_loop()
        round_ = Round(len(rows), loop.create_future())
        outbound.send(round_, rows)
        if round_.left:
            round_.timer = loop.call_later(self._config.ack_timeout, self._expire, round_)
        return round_.done

    def _expire(self, round_: Round) -> None:
        """No PUBACK in time (or not written): what is still open stays unconfirmed."""
        round_.timer = None
        if self._outbound is not None:
            self._outbound.forget(round_)
        round_.finish()


def _no_delay(sock: Any) -> None:
    """Send each write at once (no Nagle): the last PUBLISH of a burst must not wait for the
    broker's delayed ACK, up to 40 ms on Linux."""
    if sock is None:
        return
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
