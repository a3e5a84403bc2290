"""The drain loop of one sink: outbox batch -> breaker -> publish -> ack or keep and back off.

The SQLite outbox is the source of truth: a row leaves it only after the broker acknowledged
it with a success reason code, so an outage or a crash loses nothing; resent rows keep their
message id. Poison messages cannot block it: a row larger than ``max_message_bytes`` (or the
broker's announced Maximum Packet Size) is dead-lettered unsent, and a row that was refused,
or was the oldest unconfirmed one when the connection dropped, ``max_attempts`` times is
dead-lettered too. A row with a failed attempt is retried alone, so the culprit is isolated.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable, Sequence
from enum import Enum
from typing import Protocol

from gateway.counters import Counters
from gateway.errors import SinkError
from gateway.sinks.resilience import Backoff, BreakerState, CircuitBreaker
from gateway.store.store import OutboxRow, Store


class Outcome(Enum):
    """What became of one published message."""

    ACKED = "acked"
    """PUBACK with a success reason code (QoS 0: written to the socket)."""
    REFUSED = "refused"
    """PUBACK with a failure reason code: the broker will not take this message."""
    UNCONFIRMED = "unconfirmed"
    """No PUBACK (connection lost or ack timeout): it may or may not have arrived."""


log = logging.getLogger("gateway.sinks.forwarder")

UNCONFIRMED_REMEMBERED = 100_000
"""Sent-but-unacknowledged ids kept for counting retries (a bound, not a limit on sends)."""


class Publisher(Protocol):
    """A connection to one upstream."""

    @property
    def connected(self) -> bool: ...

    async def connect(self) -> None: ...

    async def close(self) -> None: ...

    @property
    def broker_max_packet(self) -> int | None: ...

    async def publish(self, rows: Sequence[OutboxRow]) -> list[Outcome]: ...


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
        max_message_bytes: int = 256 * 1024,
        max_attempts: int = 10,
        drain_rate: float | None = None,
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
        self._max_bytes = max_message_bytes
        self._max_attempts = max_attempts
        self._drain_rate = drain_rate
        if drain_rate is not None:  # about a second per batch, so a new alert waits <= ~1 s
            self._batch = max(1, min(batch, int(drain_rate)))
        self.idle = asyncio.Event()
        self._unconfirmed: set[int] = set()
        """Outbox ids sent and not acknowledged yet: a new send of one is a retry."""

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

    def _too_large(self, row: OutboxRow) -> bool:
        limit = self._max_bytes
        broker = self._publisher.broker_max_packet
        if broker is not None:
            limit = min(limit, broker - 64)  # room for the fixed and variable headers
        return len(row.payload) + len(row.topic) > limit

    async def _deliver(self, rows: list[OutboxRow]) -> None:
        if not self._publisher.connected:
            await self._publisher.connect()
            log.info("sink %s: connected", self.sink_id)
        if big := [r for r in rows if self._too_large(r)]:
            await self._bury(big, "too_large")
            rows = [r for r in rows if not self._too_large(r)]
        if not rows:
            return
        if rows[0].attempts:
            rows = rows[:1]  # a suspect goes alone, so its outcome is its own
        outcomes = await self._publisher.publish(rows)
        acked = [r.id for r, o in zip(rows, outcomes, strict=True) if o is Outcome.ACKED]
        refused = [r for r, o in zip(rows, outcomes, strict=True) if o is Outcome.REFUSED]
        suspect = next(
            (r for r, o in zip(rows, outcomes, strict=True) if o is Outcome.UNCONFIRMED), None
        )
        self._count_sends(rows, outcomes, acked)
        if acked:
            await self._store.outbox_ack(acked)
            self._counters.inc(self.sink_id, "acked", len(acked))
        if refused:
            self._counters.inc(self.sink_id, "refused", len(refused))
        failed = refused + ([suspect] if suspect is not None else [])
        if failed:
            dead = [r for r in failed if r.attempts + 1 >= self._max_attempts]
            await self._store.outbox_failed([r.id for r in failed if r not in dead])
            if dead:
                await self._bury(dead, "undeliverable")
            unconfirmed = sum(o is Outcome.UNCONFIRMED for o in outcomes)
            raise SinkError(
                f"{unconfirmed} of {len(rows)} messages not acknowledged, {len(refused)} refused"
            )

    def _count_sends(
        self, rows: list[OutboxRow], outcomes: list[Outcome], acked: list[int]
    ) -> None:
        """``published`` counts every send, ``retries`` the sends of a row sent before and
        not acknowledged (refused, or unconfirmed when a connection dropped or acks were late).
        When every send is acknowledged (the usual case) this is one counter increment."""
        self._counters.inc(self.sink_id, "published", len(rows))
        unconfirmed = self._unconfirmed
        if unconfirmed:
            if retries := sum(r.id in unconfirmed for r in rows):
                self._counters.inc(self.sink_id, "retries", retries)
            unconfirmed.difference_update(acked)
        if len(acked) < len(rows):
            if len(unconfirmed) > UNCONFIRMED_REMEMBERED:  # rows dropped by the outbox policy
                unconfirmed.clear()
            unconfirmed.update(
                r.id for r, o in zip(rows, outcomes, strict=True) if o is not Outcome.ACKED
            )

    async def _bury(self, rows: list[OutboxRow], reason: str) -> None:
        self._unconfirmed.difference_update(r.id for r in rows)
        await self._store.outbox_dead_letter(rows, self.sink_id, reason)
        self._counters.inc(self.sink_id, f"dead_{reason}", len(rows))
        log.error(
            "sink %s: %d messages moved to dead_letters (%s), first %s on %s",
            self.sink_id,
            len(rows),
            reason,
            rows[0].msg_id,
            rows[0].topic,
        )

    async def run(self) -> None:
        """Forward until cancelled; never raises for upstream trouble."""
        while True:
            rows = await self._next_batch()
            if not self.breaker.allow():
                await asyncio.sleep(max(self.breaker.retry_in(), 0.05))
                continue
            started = asyncio.get_running_loop().time()
            try:
                await self._deliver(rows)
            except sqlite3.Error as exc:  # e.g. disk full while deleting acked rows: resend later
                self._counters.inc(self.sink_id, "store_errors")
                delay = self._backoff.next_delay()
                log.error(
                    "sink %s: outbox update failed (%s); retrying in %.1fs",
                    self.sink_id,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
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
                if self._drain_rate is not None:  # pace the backlog; alerts are taken first
                    spent = asyncio.get_running_loop().time() - started
                    await asyncio.sleep(max(0.0, len(rows) / self._drain_rate - spent))

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
