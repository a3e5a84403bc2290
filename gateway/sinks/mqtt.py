"""Upstream MQTT sink: its config and a publisher that reports per-message acknowledgement."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Literal

import aiomqtt
from pydantic import Field

from gateway.config.mqtt import MqttBroker, tls_context
from gateway.config.types import Duration, StrictModel
from gateway.errors import SinkError
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


class MqttPublisher:
    """One connection to the upstream broker (aiomqtt); publishes a batch, reports acks."""

    def __init__(self, config: MqttSinkConfig, client_id: str) -> None:
        self._config = config
        self._client_id = client_id
        self._stack: contextlib.AsyncExitStack | None = None
        self._client: aiomqtt.Client | None = None

    async def connect(self) -> None:
        b = self._config.broker
        client = aiomqtt.Client(
            b.host,
            b.port,
            identifier=self._client_id,
            username=b.username,
            password=b.password,
            keepalive=b.keepalive,
            tls_context=tls_context(b),
            timeout=self._config.ack_timeout,
            max_inflight_messages=100,
        )
        client.pending_calls_threshold = 100_000  # a batch in flight is normal here, not a leak
        stack = contextlib.AsyncExitStack()
        try:
            await stack.enter_async_context(client)
        except aiomqtt.MqttError as exc:
            raise SinkError(f"cannot connect to {b.host}:{b.port}: {exc}") from exc
        self._stack, self._client = stack, client

    async def close(self) -> None:
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            with contextlib.suppress(aiomqtt.MqttError, OSError, asyncio.TimeoutError):
                await asyncio.wait_for(stack.aclose(), 2.0)

    @property
    def connected(self) -> bool:
        return self._client is not None

    async def publish(self, rows: Sequence[OutboxRow]) -> list[bool]:
        """Publish in order; ``True`` for each row the broker acknowledged."""
        client = self._client
        if client is None:
            raise SinkError("not connected")
        retain = self._config.retain
        results = await asyncio.gather(
            *(client.publish(r.topic, r.payload, qos=r.qos, retain=retain) for r in rows),
            return_exceptions=True,
        )
        return [not isinstance(res, BaseException) for res in results]
