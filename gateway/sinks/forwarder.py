"""The drain loop of one sink: outbox batch -> breaker -> publish -> ack or keep and back off.

The SQLite outbox is the source of truth: a row leaves it only after the broker acknowledged
it, so an outage or a crash loses nothing; resent rows keep their message id.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Protocol

from gateway.counters import Counters
from gateway.errors import SinkError
from gateway.sinks.resilience import Backoff, BreakerState, CircuitBreaker
from gateway.store.store import OutboxRow, Store

log = logging.getLogger("gateway.sinks.forwarder")


class Publisher(Protocol):
    """A connection to one upstream."""

    @property
    def connected(self) -> bool: ...

    async def connect(self) -> None: ...

    async def close(self) -> None: ...

    async def publish(self, rows: Sequence[OutboxRow]) -> list[bool]: ...


class Forwarder:
    """Moves one sink's outbox rows upstream, in order, at least once."""

    def __init__(
        self,
        sink_id: str,
        store: Store,
        publisher: Publisher,
        counters: Counters,
        *,
        batch: int,
        backoff: Backoff,
        breaker_failures: int,
        breaker_cooldown: float,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.sink_id = sink_id
        self._store = store
        self._publisher = publisher
        self._counters = counters
        self._batch = batch
        self._backoff = backoff
        kwargs = {"clock": clock} if clock is not None else {}
        self.breaker = CircuitBreaker(
            breaker_failures, breaker_cooldown, on_change=self._breaker_changed, **kwargs
        )
        self.idle = asyncio.Event()

    def _breaker_changed(self, old: BreakerState, new: BreakerState) -> None:
        self._counters.inc(self.sink_id, f"breaker_{new.value}")
        log.warning("sink %s: circuit breaker %s -> %s", self.sink_id, old.value, new.value)

    async def _next_batch(self) -> list[OutboxRow]:
        """Wait until the outbox has rows for this sink and return the oldest."""
        ready = self._store.outbox_signal(self.sink_id)
        while True:
            ready.clear()
            rows = await self._store.outbox_take(self.sink_id, self._batch)
            if rows:
                self.idle.clear()
                return rows
            self.idle.set()
            await ready.wait()

    async def _deliver(self, rows: list[OutboxRow]) -> None:
        if not self._publisher.connected:
            await self._publisher.connect()
            log.info("sink %s: connected", self.sink_id)
        oks = await self._publisher.publish(rows)
        acked = [r.id for r, ok in zip(rows, oks, strict=True) if ok]
        failed = [r.id for r, ok in zip(rows, oks, strict=True) if not ok]
        if acked:
            await self._store.outbox_ack(acked)
            self._counters.inc(self.sink_id, "acked", len(acked))
        if failed:
            await self._store.outbox_failed(failed)
            raise SinkError(f"{len(failed)} of {len(rows)} messages not acknowledged")

    async def run(self) -> None:
        """Forward until cancelled; never raises for upstream trouble."""
        while True:
            rows = await self._next_batch()
            if not self.breaker.allow():
                await asyncio.sleep(max(self.breaker.retry_in(), 0.05))
                continue
            try:
                await self._deliver(rows)
            except SinkError as exc:
                self.breaker.record_failure()
                self._counters.inc(self.sink_id, "failures")
                await self._publisher.close()
                delay = self._backoff.next_delay()
                log.warning(
                    "sink %s: %s; %d queued; retrying in %.1fs",
                    self.sink_id,
                    exc,
                    await self._store.outbox_depth(self.sink_id),
                    delay,
                )
                await asyncio.sleep(delay)
            else:
                self.breaker.record_success()
                self._backoff.reset()

    async def drain(self, max_wait: float) -> bool:
        """Wait (at most ``max_wait`` seconds) until this sink's outbox is empty; True if it is."""

        async def empty() -> None:
            while True:
                self.idle.clear()
                self._store.outbox_signal(self.sink_id).set()
                await self.idle.wait()
                if await self._store.outbox_depth(self.sink_id) == 0:
                    return

        try:
            await asyncio.wait_for(empty(), max_wait)
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        await self._publisher.close()
