"""MQTT source: subscribe to topic templates on a local broker and decode what arrives.

At least once into the store: QoS 1 subscriptions on a persistent MQTT v5 session (stable
client id, ``clean_start=False``, a session expiry), and manual acknowledgements: a message's
PUBACK goes out only after the store committed what it produced (readings or a dead letter).
A crash before that leaves the message unacknowledged, so the broker delivers it again, and
the store's idempotency key makes the redelivery a no-op.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
from dataclasses import dataclass
from typing import Any, Literal

import paho.mqtt.client as mqtt
from paho.mqtt.client import PUBACK
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions
from pydantic import Field, field_validator

from gateway.config.mqtt import MqttBroker, tls_context
from gateway.config.types import Duration, StrictModel
from gateway.mqttio import PahoDriver
from gateway.sinks.resilience import Backoff
from gateway.sources.base import Decoding, Intake
from gateway.sources.codecs import Format, JsonFormat, build_decoder

log = logging.getLogger("gateway.sources.mqtt")

CONNECT_TIMEOUT = 30.0
TOPIC_CACHE_SIZE = 100_000
"""Topics whose match is remembered (devices x metrics; a flood of new topics just misses)."""
_UNEXPECTED: tuple[str | None, str | None] = ("\0", "\0")

_PLACEHOLDER = re.compile(r"^\{(device|metric)\}$")


@dataclass(frozen=True, slots=True)
class TopicPattern:
    """``sensors/{device}/{metric}``: subscribe ``sensors/+/+``, device at level 1, metric at 2."""

    template: str
    filter: str
    levels: tuple[str, ...]
    device_at: int | None
    metric_at: int | None

    @classmethod
    def parse(cls, template: str) -> TopicPattern:
        levels = tuple(template.split("/"))
        out: list[str] = []
        found: dict[str, int] = {}
        for i, level in enumerate(levels):
            if m := _PLACEHOLDER.match(level):
                if m.group(1) in found:
                    raise ValueError(f"{{{m.group(1)}}} appears twice in {template!r}")
                found[m.group(1)] = i
                out.append("+")
            elif "{" in level or "}" in level:
                raise ValueError(
                    f"level {level!r} of {template!r}: a placeholder must fill a whole level "
                    "and be {device} or {metric}"
                )
            elif level == "#" and i != len(levels) - 1:
                raise ValueError(f"'#' must be the last level in {template!r}")
            elif ("+" in level and level != "+") or ("#" in level and level != "#"):
                raise ValueError(f"wildcards must fill a whole level in {template!r}")
            else:
                out.append(level)
        return cls(template, "/".join(out), levels, found.get("device"), found.get("metric"))

    def extract(self, topic: str) -> tuple[bool, str | None, str | None]:
        """Does ``topic`` match, and which device and metric does it name?"""
        parts = topic.split("/")
        levels = self.levels
        if levels[-1] == "#":
            if len(parts) < len(levels) - 1:
                return False, None, None
        elif len(parts) != len(levels):
            return False, None, None
        for want, got in zip(levels, parts, strict=False):
            if want == "#":
                break
            if want != "+" and want[0] != "{" and want != got:
                return False, None, None
        device = parts[self.device_at] if self.device_at is not None else None
        # a few names, each met on thousands of topics: one string each, not one a topic
        metric = sys.intern(parts[self.metric_at]) if self.metric_at is not None else None
        return True, device, metric


class MqttSourceConfig(StrictModel):
    """Subscribe to a local broker that field devices publish to."""

    type: Literal["mqtt"]
    id: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    broker: MqttBroker = MqttBroker()
    topics: list[str] = Field(min_length=1)
    qos: Literal[0, 1, 2] = 1
    format: Format = JsonFormat(type="json")
    max_payload_bytes: int = Field(65536, ge=16)
    session_expiry: Duration = Field(
        86400.0, ge=0, description="how long the broker keeps our session while we are away"
    )
    silent_after: Duration | None = Field(
        None, gt=0, description="alert when no reading arrived for this long (off if unset)"
    )
    receive_maximum: int = Field(
        2000, ge=1, le=65535, description="unacknowledged messages the broker may send us"
    )

    @field_validator("topics")
    @classmethod
    def _patterns(cls, topics: list[str]) -> list[str]:
        for t in topics:
            TopicPattern.parse(t)
        return topics


class _Connection:
    """One paho client and its socket on the loop; acks each wake-up's messages once the
    store has committed them."""

    def __init__(self, source: MqttSource, intake: Intake, decoding: Decoding) -> None:
        cfg = source.config
        self._source = source
        self._intake = intake
        self._decoding = decoding
        self._unacked: list[tuple[int, int]] = []
        self.connack: asyncio.Future[ReasonCode] = asyncio.get_running_loop().create_future()
        self.error = ""
        """paho's last socket error before CONNACK, e.g. the TLS alert of a refused cert."""
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=source.client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        if cfg.broker.username is not None:
            client.username_pw_set(cfg.broker.username, cfg.broker.password)
        if (context := tls_context(cfg.broker)) is not None:
            client.tls_set_context(context)
        client.on_connect = self._on_connect
        client.on_log = self._on_log  # removed at CONNACK: paho formats every line for it
        client.on_message = self._on_message
        self.client = client
        self.driver = PahoDriver(client, after_read=self._after_read, on_publish=self._on_publish)

    async def open(self) -> None:
        cfg = self._source.config
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = int(cfg.session_expiry)
        props.ReceiveMaximum = cfg.receive_maximum
        await self.driver.connect(
            cfg.broker.host,
            cfg.broker.port,
            cfg.broker.keepalive,
            clean_start=False,
            properties=props,
        )

    def _on_log(self, _c: mqtt.Client, _u: Any, level: int, text: str) -> None:
        if level == mqtt.MQTT_LOG_ERR:
            self.error = text

    def _on_connect(
        self, client: mqtt.Client, _u: Any, flags: Any, rc: ReasonCode, _p: Any = None
    ) -> None:
        client.on_log = None
        if not rc.is_failure:
            subs = [
                (p.filter, SubscribeOptions(qos=self._source.config.qos))
                for p in self._source.patterns
            ]
            client.subscribe(subs)
        if not self.connack.done():
            self.connack.set_result(rc)

    def _on_publish(self, topic: bytes, payload: bytes, qos: int, mid: int) -> None:
        """A QoS 0 or 1 message, decoded by the driver's fast path."""
        self._source.route(self._decoding, self._intake, topic, payload)
        if qos:
            self._unacked.append((mid, qos))

    def _on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        """A message paho decoded (QoS 2)."""
        self._source.route(self._decoding, self._intake, message._topic, bytes(message.payload))
        if message.qos:
            self._unacked.append((message.mid, message.qos))

    def _after_read(self) -> None:
        if self._unacked:
            mids, self._unacked = self._unacked, []
            self._intake.when_committed(lambda: self._ack(mids))

    def _ack(self, mids: list[tuple[int, int]]) -> None:
        if self.driver.lost.done():
            return  # that connection is gone: the broker redelivers, the store ignores repeats
        pubacks = b"".join(b"\x40\x02" + mid.to_bytes(2, "big") for mid, qos in mids if qos == 1)
        if pubacks:  # one write for the batch instead of a packet (and a send) per message
            self.client._packet_queue(PUBACK, pubacks, 0, 0)
        for mid, qos in mids:
            if qos == 2:
                self.client.ack(mid, qos)
        self.driver.write()

    def close(self) -> None:
        self.driver.close()


class MqttSource:
    """Keeps one subscription alive, reconnecting with backoff; decodes every message."""

    def __init__(self, config: MqttSourceConfig, gateway_id: str) -> None:
        self.id = config.id
        self.config = config
        self.patterns = [TopicPattern.parse(t) for t in config.topics]
        self.client_id = config.broker.client_id or f"{gateway_id}-{config.id}"
        self._topics: dict[bytes, tuple[str | None, str | None]] = {}  # topic -> device, metric
        self.connected = asyncio.Event()
        self.settled = asyncio.Event()

    def route(self, decoding: Decoding, intake: Intake, topic: bytes, payload: bytes) -> None:
        """Decode one message (or dead-letter it) by the pattern its topic matches."""
        if len(payload) > self.config.max_payload_bytes:
            name = topic.decode("utf-8", "replace")
            intake.reject(self.id, "too_large", f"{len(payload)} bytes on {name}", payload[:1024])
            return
        where = self._topics.get(topic)
        if where is None:
            where = self._match(topic.decode("utf-8", "replace"))
            if len(self._topics) < TOPIC_CACHE_SIZE:
                self._topics[topic] = where
        if where is _UNEXPECTED:
            intake.reject(self.id, "unexpected_topic", topic.decode("utf-8", "replace"), payload)
        else:
            decoding.feed(payload, where[0], where[1])

    def _match(self, topic: str) -> tuple[str | None, str | None]:
        for pattern in self.patterns:
            matched, device, metric = pattern.extract(topic)
            if matched:
                return device, metric
        return _UNEXPECTED

    async def run(self, intake: Intake) -> None:
        cfg = self.config
        decoding = Decoding(self.id, build_decoder(cfg.format), intake)
        backoff = Backoff(cfg.broker.reconnect.initial, cfg.broker.reconnect.max)
        while True:
            conn = _Connection(self, intake, decoding)
            try:
                problem = await self._session(conn, backoff)
            finally:
                self.connected.clear()
                conn.close()
            self.settled.set()  # the first attempt failed: retrying from now on
            delay = backoff.next_delay()
            log.warning(
                "source %s: broker %s:%d %s; retrying in %.1fs",
                self.id,
                cfg.broker.host,
                cfg.broker.port,
                problem,
                delay,
            )
            await asyncio.sleep(delay)

    async def _session(self, conn: _Connection, backoff: Backoff) -> str:
        """Connect, subscribe and read until the connection is lost; say why it ended."""
        cfg = self.config
        try:
            await conn.open()
        except OSError as exc:
            return f"unavailable ({exc})"
        await asyncio.wait(
            (conn.connack, conn.driver.lost),
            timeout=CONNECT_TIMEOUT,
            return_when=asyncio.FIRST_COMPLETED,
        )
        if not conn.connack.done():
            if conn.driver.lost.done():
                return f"closed the connection before CONNACK ({conn.error or 'no reason'})"
            return "did not answer CONNECT"
        rc = conn.connack.result()
        if rc.is_failure:
            return f"refused the connection ({rc})"
        log.info(
            "source %s: subscribed to %s on %s:%d",
            self.id,
            ", ".join(p.filter for p in self.patterns),
            cfg.broker.host,
            cfg.broker.port,
        )
        backoff.reset()
        self.connected.set()
        self.settled.set()
        await conn.driver.lost
        return "connection lost"
