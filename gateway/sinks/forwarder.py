"""The drain loop of one sink: outbox batch -> breaker -> publish -> ack or keep and back off.

The SQLite outbox is the source of truth: a row leaves it only after the broker acknowledged
it with a success reason code, so an outage or a crash loses nothing; resent rows keep their
message id.

Two ways to get rows, same order (priority, then id). Catching up (at start, after any
failure, behind a backlog) the sink reads the oldest rows from SQLite and waits for their
deletion. Once a read finds fewer rows than a batch, the sink is caught up and goes live: the
store hands it the rows of each commit right after the commit, and delivered rows are deleted
with the store's next commit, so the steady state costs no query and no wait on the writer
thread. Any failure, a live queue longer than ``LIVE_MAX`` rows, or rows dropped by the outbox
policy (``Store.outbox_epoch``) sends the sink back to catching up.

Poison messages cannot block it: a row larger than ``max_message_bytes`` (or the
broker's announced Maximum Packet Size) is dead-lettered unsent, and a row that was refused,
or was the oldest unconfirmed one when the connection dropped, ``max_attempts`` times is
dead-lettered too. A row with a failed attempt is retried alone, so the culprit is isolated.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
from collections import deque
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
LIVE_MAX = 20_000
"""Rows a live sink may hold in memory before it falls back to reading SQLite."""


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
        self._live = False
        self._spilled = False  # the queue overflowed since the last read
        self._settles = 0  # rounds delivered live, their rows deleted by a later commit
        self._settled_upto = 0  # rounds whose deletion is known committed
        self._acked: list[int] = []  # rows delivered while catching up: deleted by the next read
        self._waiting = False  # for rows, with nothing queued
        self._epoch = 0
        self._last_id = 0  # the newest row id read or handed over
        self._queued = 0
        self._lanes: tuple[deque[OutboxRow], ...] = (deque(), deque(), deque())  # by priority
        self._unfeed = store.outbox_feed(sink_id, self._feed)

    def _feed(self, rows: list[OutboxRow]) -> None:
        """The store's hand-over after a commit: rows newer than what was read are queued.

        Also while catching up: the rows of commits that land while a read is under way are
        what the sink needs if that read makes it live."""
        last = self._last_id
        if rows[-1].id <= last:
            return
        lanes = self._lanes
        for row in rows:
            if row.id > last:
                lanes[min(row.priority, 2)].append(row)
                self._queued += 1
        self._last_id = rows[-1].id
        if self._queued > LIVE_MAX:
            self._catch_up()
            self._spilled = True

    def _catch_up(self) -> None:
        """Leave live mode: forget the queued rows, SQLite has them."""
        self._live = False
        self._queued = 0
        for lane in self._lanes:
            lane.clear()

    def _take_live(self) -> list[OutboxRow]:
        rows: list[OutboxRow] = []
        want = self._batch
        for lane in self._lanes:
            while lane and len(rows) < want:
                rows.append(lane.popleft())
        self._queued -= len(rows)
        return rows

    def _breaker_changed(self, old: BreakerState, new: BreakerState) -> None:
        self._counters.inc(self.sink_id, f"breaker_{new.value}")
        log.warning("sink %s: circuit breaker %s -> %s", self.sink_id, old.value, new.value)

    async def _next_batch(self) -> list[OutboxRow]:
        """Wait until the outbox has rows for this sink and return the oldest."""
        ready = self._store.outbox_signal(self.sink_id)
        while True:
            ready.clear()
            if self._live and self._epoch != self._store.outbox_epoch:
                self._catch_up()  # the policy dropped rows: the queue may hold some
            if self._live:
                rows = self._take_live()
            else:
                if self._settled_upto != self._settles:  # delivered rows go before reading
                    settles = self._settles
                    await self._store.flush()
                    self._settled_upto = max(self._settled_upto, settles)
                self._catch_up()
                self._spilled = False
                self._last_id = 0
                self._epoch = self._store.outbox_epoch
                acked, self._acked = self._acked, []
                try:
                    rows = await self._store.outbox_take(self.sink_id, self._batch, acked)
                except BaseException:
                    self._acked[:0] = acked
                    raise
                if (
                    len(rows) < self._batch  # nothing older is left: go live
                    and not self._spilled
                    and self._epoch == self._store.outbox_epoch
                ):
                    self._live = True
                    taken = max((r.id for r in rows), default=0)
                    self._drop_queued(taken)
                    self._last_id = max(self._last_id, taken)
                else:
                    self._catch_up()
            if rows:
                self.idle.clear()
                return rows
            if self._settled_upto == self._settles:
                self.idle.set()
            else:  # idle once delivered rows are gone from the outbox too (soon committed)
                self._store.when_committed(functools.partial(self._settled, self._settles))
            self._waiting = True
            try:
                await ready.wait()
            finally:
                self._waiting = False

    def _settled(self, settles: int) -> None:
        """The rows of the first ``settles`` live rounds are deleted."""
        self._settled_upto = max(self._settled_upto, settles)
        if self._waiting and self._settled_upto == self._settles:
            self.idle.set()

    def _drop_queued(self, upto: int) -> None:
        """Forget queued rows up to id ``upto``: the read that made us live returned them."""
        for lane in self._lanes:
            kept = [r for r in lane if r.id > upto]
            self._queued -= len(lane) - len(kept)
            lane.clear()
            lane.extend(kept)

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
            if len(rows) > 1:
                self._catch_up()  # the rows left out are read again
            rows = rows[:1]  # a suspect goes alone, so its outcome is its own
        outcomes = await self._publisher.publish(rows)
        acked = [r.id for r, o in zip(rows, outcomes, strict=True) if o is Outcome.ACKED]
        refused = [r for r, o in zip(rows, outcomes, strict=True) if o is Outcome.REFUSED]
        suspect = next(
            (r for r, o in zip(rows, outcomes, strict=True) if o is Outcome.UNCONFIRMED), None
        )
        self._count_sends(rows, outcomes, acked)
        if acked:
            if self._live:
                self._store.outbox_settled(acked)  # deleted with the next commit
                self._settles += 1
            else:
                self._acked += acked  # deleted by the next read, on the same trip
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
                self._catch_up()  # the rows taken are read again from SQLite
                await asyncio.sleep(max(self.breaker.retry_in(), 0.05))
                continue
            started = asyncio.get_running_loop().time()
            try:
                try:
                    await self._deliver(rows)
                except BaseException:
                    self._catch_up()  # what was not delivered is read again from SQLite
                    raise
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
        self._unfeed()
        await self._publisher.close()
