"""The gateway's retained online/offline status on an upstream broker, with a last will.

A small connection of its own per sink (client id ``<sink client id>-status``), apart from
the forwarder's, so it needs nothing from the delivery path: on connect it sets a retained
last-will ``offline`` message and publishes a retained ``online``; on a clean stop it
publishes a retained ``offline`` itself. If the process dies or its event loop hangs, the
broker publishes the will after 1.5 keepalives. Subscribers see the latest state at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import aiomqtt
import orjson

from gateway import __version__
from gateway.config.mqtt import MqttBroker, tls_context
from gateway.sinks.resilience import Backoff
from gateway.sinks.topics import render

log = logging.getLogger("gateway.presence")


def status_payload(gateway: str, state: str, reason: str, ts: float) -> bytes:
    """``{"gateway": "plant-7", "state": "online", "reason": "...", "ts": ..., "version": ...}``."""
    return orjson.dumps(
        {"gateway": gateway, "state": state, "reason": reason, "ts": ts, "version": __version__}
    )


class Presence:
    """Keeps the retained status of one gateway on one broker; ``run`` until cancelled."""

    def __init__(
        self,
        gateway: str,
        sink: str,
        broker: MqttBroker,
        client_id: str,
        template: str,
    ) -> None:
        self.gateway = gateway
        self.sink = sink
        self.broker = broker
        self.client_id = client_id
        self.topic = render(template, {"gateway": gateway})
        self.online = asyncio.Event()
        self._failing = False

    async def run(self) -> None:
        b = self.broker
        backoff = Backoff(b.reconnect.initial, b.reconnect.max)
        while True:
            will = aiomqtt.Will(
                self.topic,
                status_payload(self.gateway, "offline", "connection lost", time.time()),
                qos=1,
                retain=True,
            )
            client = aiomqtt.Client(
                b.host,
                b.port,
                identifier=self.client_id,
                username=b.username,
                password=b.password,
                keepalive=b.keepalive,
                tls_context=tls_context(b),
                will=will,
            )
            try:
                async with client:
                    await client.publish(
                        self.topic,
                        status_payload(self.gateway, "online", "started", time.time()),
                        qos=1,
                        retain=True,
                    )
                    backoff.reset()
                    self._failing = False
                    self.online.set()
                    log.info(
                        "status %s: %s online (retained, with last will)", self.sink, self.topic
                    )
                    try:
                        # Nothing is subscribed: this only returns by raising MqttError when
                        # the connection drops, and holds the connection until cancelled.
                        async for _ in client.messages:
                            pass
                    except asyncio.CancelledError:
                        await self._goodbye(client)
                        raise
            except aiomqtt.MqttError as exc:
                self.online.clear()
                if not self._failing:
                    log.warning("status %s: %s", self.sink, exc)
                self._failing = True
                delay = backoff.next_delay()
                log.debug("status %s: %s; retrying in %.1fs", self.sink, exc, delay)
                await asyncio.sleep(delay)

    async def _goodbye(self, client: aiomqtt.Client) -> None:
        payload = status_payload(self.gateway, "offline", "stopped", time.time())
        with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
            await asyncio.wait_for(
                client.publish(self.topic, payload, qos=1, retain=True), timeout=2.0
            )
