"""MQTT source: subscribe to topic templates on a local broker and decode what arrives."""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from typing import Literal

import aiomqtt
from pydantic import Field, field_validator

from gateway.config.mqtt import MqttBroker, tls_context
from gateway.config.types import StrictModel
from gateway.sinks.resilience import Backoff
from gateway.sources.base import Decoding, Intake
from gateway.sources.codecs import Format, JsonFormat, build_decoder

log = logging.getLogger("gateway.sources.mqtt")

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
        metric = parts[self.metric_at] if self.metric_at is not None else None
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

    @field_validator("topics")
    @classmethod
    def _patterns(cls, topics: list[str]) -> list[str]:
        for t in topics:
            TopicPattern.parse(t)
        return topics


class MqttSource:
    """Keeps one subscription alive, reconnecting with backoff; decodes every message."""

    def __init__(self, config: MqttSourceConfig, gateway_id: str) -> None:
        self.id = config.id
        self.config = config
        self.patterns = [TopicPattern.parse(t) for t in config.topics]
        self._client_id = config.broker.client_id or f"{gateway_id}-{config.id}"
        self.connected = asyncio.Event()

    def _route(self, decoding: Decoding, intake: Intake, topic: str, payload: bytes) -> None:
        if len(payload) > self.config.max_payload_bytes:
            intake.reject(self.id, "too_large", f"{len(payload)} bytes on {topic}", payload[:1024])
            return
        for pattern in self.patterns:
            matched, device, metric = pattern.extract(topic)
            if matched:
                decoding.feed(payload, device, metric)
                return
        intake.reject(self.id, "unexpected_topic", topic, payload)

    async def run(self, intake: Intake) -> None:
        cfg = self.config
        decoding = Decoding(self.id, build_decoder(cfg.format), intake)
        backoff = Backoff(cfg.broker.reconnect.initial, cfg.broker.reconnect.max)
        while True:
            try:
                async with aiomqtt.Client(
                    cfg.broker.host,
                    cfg.broker.port,
                    identifier=self._client_id,
                    username=cfg.broker.username,
                    password=cfg.broker.password,
                    keepalive=cfg.broker.keepalive,
                    tls_context=tls_context(cfg.broker),
                ) as client:
                    for pattern in self.patterns:
                        await client.subscribe(pattern.filter, qos=cfg.qos)
                    log.info(
                        "source %s: subscribed to %s on %s:%d",
                        self.id,
                        ", ".join(p.filter for p in self.patterns),
                        cfg.broker.host,
                        cfg.broker.port,
                    )
                    backoff.reset()
                    self.connected.set()
                    async for message in client.messages:
                        payload = message.payload
                        if not isinstance(payload, bytes | bytearray):
                            payload = str(payload).encode()
                        self._route(decoding, intake, message.topic.value, bytes(payload))
            except aiomqtt.MqttError as exc:
                self.connected.clear()
                delay = backoff.next_delay()
                log.warning(
                    "source %s: broker %s:%d unavailable (%s); retrying in %.1fs",
                    self.id,
                    cfg.broker.host,
                    cfg.broker.port,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
