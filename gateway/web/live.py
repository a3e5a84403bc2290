"""The live feed: a tap on the hot path that keeps only the latest value, and a publisher.

``LiveFeed.tap`` runs once per reading on the event loop: one dict assignment, nothing
else. ``LiveFeed.publish`` runs a few times per second: it swaps the dict out and fans the
coalesced values to every connected page, so a page sees at most ``updates_per_second``
updates per device+metric however fast the devices are, and no page can slow the intake.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.model import Alert, Reading, Record

CLIENT_QUEUE = 32
"""Events a page may fall behind by before it is disconnected (it reconnects and reloads)."""


@dataclass(eq=False)
class Client:
    """One connected page: its queue of encoded SSE events."""

    queue: asyncio.Queue[bytes | None] = field(
        default_factory=lambda: asyncio.Queue(maxsize=CLIENT_QUEUE)
    )
    dropped: bool = False


def sse_event(event: str, data: Any) -> bytes:
    """One Server-Sent Event frame (``data`` as JSON on one line)."""
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class LiveFeed:
    """Latest values and new alerts, published to pages in coalesced batches."""

    def __init__(self) -> None:
        self._latest: dict[tuple[str, str], Reading] = {}
        self._alerts: list[Alert] = []
        self.clients: set[Client] = set()
        self.slow_clients = 0

    def tap(self, reading: Reading) -> None:
        """Remember the newest reading of its device+metric (the per-reading hot path)."""
        self._latest[(reading.device, reading.metric)] = reading

    def observe(self, terminal: Callable[[Record], None]) -> Callable[[Record], None]:
        """Wrap a pipeline's terminal observer so its alerts also reach the pages."""

        def tee(record: Record) -> None:
            terminal(record)
            if record.__class__ is Alert:
                self._alerts.append(record)

        return tee

    def connect(self) -> Client:
        client = Client()
        self.clients.add(client)
        return client

    def disconnect(self, client: Client) -> None:
        self.clients.discard(client)

    def publish(self, health: dict[str, Any] | None = None) -> int:
        """Send what changed since the last call to every page; returns the events sent."""
        latest, self._latest = self._latest, {}
        alerts, self._alerts = self._alerts, []
        if not self.clients:
            return 0
        events: list[bytes] = []
        if latest:
            events.append(
                sse_event(
                    "readings",
                    [
                        {"device": r.device, "metric": r.metric, "ts": r.ts, "value": r.value}
                        for r in latest.values()
                    ],
                )
            )
        if alerts:
            events.append(sse_event("alerts", [alert_json(a) for a in alerts]))
        if health is not None:
            events.append(sse_event("health", health))
        for event in events:
            self.broadcast(event)
        return len(events)

    def broadcast(self, event: bytes) -> None:
        """Queue ``event`` for every page; a page that fell too far behind is dropped."""
        for client in list(self.clients):
            try:
                client.queue.put_nowait(event)
            except asyncio.QueueFull:
                self.slow_clients += 1
                self._drop(client)

    def close(self) -> None:
        """Tell every page's stream to end (at shutdown)."""
        for client in list(self.clients):
            self._drop(client)

    def _drop(self, client: Client) -> None:
        client.dropped = True
        self.clients.discard(client)
        while not client.queue.empty():
            client.queue.get_nowait()
        client.queue.put_nowait(None)


def alert_json(a: Alert) -> dict[str, Any]:
    """An alert as the API and the live feed show it (the ``alerts`` table's columns)."""
    return {
        "pipeline": a.pipeline,
        "step": a.step,
        "device": a.device,
        "metric": a.metric,
        "kind": a.kind,
        "state": a.state,
        "severity": a.severity,
        "ts": a.ts,
        "value": a.value,
        "threshold": a.threshold,
        "message": a.message,
    }
