"""Upstream MQTT sink: its config and a publisher that reports each message's PUBACK.

The publisher speaks MQTT v5 through paho on the asyncio loop, so every PUBACK carries a
reason code: a failure code (e.g. 0x87 not authorized, 0x97 quota exceeded) is a refusal,
not a delivery. aiomqtt 2.5 resolves ``publish`` on any PUBACK, so it is not used here.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Sequence
from typing import Any, Literal

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import Field

from gateway.config.mqtt import MqttBroker, tls_context
from gateway.config.types import Duration, StrictModel
from gateway.errors import SinkError
from gateway.mqttio import PahoDriver
from gateway.sinks.forwarder import Outcome
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
    max_inflight: int = Field(100, ge=1, le=65535)
    drain_rate: float | None = Field(
        None, gt=0, description="messages per second at most (a backlog drains no faster)"
    )


class _Round:
    """The outcomes of one published batch; ``done`` resolves when none is left open (or
    at the ack timeout, the open ones unconfirmed)."""

    __slots__ = ("done", "left", "outcomes", "timer")

    def __init__(self, n: int, done: asyncio.Future[list[Outcome]]) -> None:
        self.outcomes: list[Outcome | None] = [None] * n
        self.left = n
        self.done = done
        self.timer: asyncio.TimerHandle | None = None

    def settle(self, index: int, outcome: Outcome) -> None:
        if self.outcomes[index] is None:
            self.outcomes[index] = outcome
            self.left -= 1
            if not self.left:
                self.finish()

    def finish(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if not self.done.done():
            self.done.set_result([o or Outcome.UNCONFIRMED for o in self.outcomes])


class MqttPublisher:
    """One MQTT v5 connection to the upstream broker; publishes a batch, reports outcomes."""

    def __init__(self, config: MqttSinkConfig, client_id: str) -> None:
        self._config = config
        self._client_id = client_id
        self._driver: PahoDriver | None = None
        self._pending: dict[int, tuple[_Round, int]] = {}  # mid -> its round and place
        self._unwritten: list[tuple[_Round, int, mqtt.MQTTMessageInfo]] = []  # QoS 0
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
        client.max_inflight_messages_set(cfg.max_inflight)
        connack: asyncio.Future[ReasonCode] = asyncio.get_running_loop().create_future()

        def on_connect(c: mqtt.Client, _u: Any, _f: Any, rc: ReasonCode, props: Any) -> None:
            self.broker_max_packet = getattr(props, "MaximumPacketSize", None)
            # paho ignores the broker's Receive Maximum (exceeding it is a protocol error) and
            # refuses a new limit once connected; nothing is in flight yet on a new client
            if receive := getattr(props, "ReceiveMaximum", None):
                c._max_inflight_messages = min(cfg.max_inflight, receive)
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
        driver = PahoDriver(client, after_write=self._written)
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

    def _on_publish(
        self, _c: mqtt.Client, _u: Any, mid: int, rc: ReasonCode, _p: Any = None
    ) -> None:
        entry = self._pending.pop(mid, None)
        if entry is not None:
            entry[0].settle(entry[1], Outcome.REFUSED if rc.is_failure else Outcome.ACKED)

    def _written(self) -> None:
        """QoS 0 messages are acknowledged once written to the socket."""
        if self._unwritten:
            left = []
            for round_, index, info in self._unwritten:
                if info.is_published():
                    round_.settle(index, Outcome.ACKED)
                else:
                    left.append((round_, index, info))
            self._unwritten = left

    def _on_disconnect(self, *_: Any) -> None:
        self._fail_pending()

    def _fail_pending(self) -> None:
        pending, self._pending = self._pending, {}
        unwritten, self._unwritten = self._unwritten, []
        for round_, index in pending.values():
            round_.settle(index, Outcome.UNCONFIRMED)
        for round_, index, _ in unwritten:
            round_.settle(index, Outcome.UNCONFIRMED)

    async def close(self) -> None:
        driver, self._driver = self._driver, None
        if driver is not None:
            driver.close()
        self._fail_pending()

    @property
    def connected(self) -> bool:
        return self._driver is not None and not self._driver.lost.done()

    def send(self, rows: Sequence[OutboxRow]) -> asyncio.Future[list[Outcome]]:
        """Publish in order, after every earlier round; the future gives one outcome per row
        (those without a PUBACK within ``ack_timeout`` are unconfirmed)."""
        driver = self._driver
        if driver is None or driver.lost.done():
            raise SinkError("not connected")
        loop = asyncio.get_running_loop()
        client, retain = driver.client, self._config.retain
        round_ = _Round(len(rows), loop.create_future())
        publish = client.publish
        queued = (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN)
        for index, r in enumerate(rows):
            info = publish(r.topic, r.payload, qos=r.qos, retain=retain)
            if r.qos and info.rc in queued:  # paho keeps QoS 1 messages to resend
                self._pending[info.mid] = (round_, index)
            elif not r.qos and info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                self._unwritten.append((round_, index, info))
            else:
                round_.settle(index, Outcome.UNCONFIRMED)
            if driver.lost.done():
                self._fail_pending()
        if not driver.lost.done():
            # Write now rather than on the next writable event: QoS 0 messages are done once
            # written, so a round of them completes without waiting for the loop to come back.
            driver.write()
        if round_.left:
            round_.timer = loop.call_later(self._config.ack_timeout, self._expire, round_)
        return round_.done

    def _expire(self, round_: _Round) -> None:
        """No PUBACK in time (or not written): what is still open stays unconfirmed."""
        round_.timer = None
        for mid in [m for m, (r, _) in self._pending.items() if r is round_]:
            del self._pending[mid]
        self._unwritten = [u for u in self._unwritten if u[0] is not round_]
        round_.finish()


def _no_delay(sock: Any) -> None:
    """Send each write at once (no Nagle): the last PUBLISH of a burst must not wait for the
    broker's delayed ACK, up to 40 ms on Linux."""
    if sock is None:
        return
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
