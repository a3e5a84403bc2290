"""The drain loop of one sink: outbox batch -> breaker -> publish -> ack or keep and back off.

The outbox is the source of truth: a row leaves it only after the broker acknowledged it
with a success reason code, so an outage loses nothing; resent rows keep their message id.
A row is in the outbox from the moment it is added: the store commits it with its next group
commit unless it was acknowledged before, in which case it is never written (a caught-up sink
at QoS 0, or with a fast PUBACK, costs SQLite nothing). A crash loses only rows neither
committed nor acknowledged: the ones added within the last group commit interval, as for the
readings they come from.

Two ways to get rows, same order (priority, then id). Catching up (at start, after any
failure, behind a backlog) the sink reads the oldest rows (``outbox_take``: those committed
and those waiting for a commit) and has the delivered ones deleted by its next read. Once a
read finds fewer rows than a batch, the sink is caught up and goes live: the store hands it
each row it adds on the next loop turn (``outbox_feed``), and delivered rows are forgotten,
or deleted with the store's next commit, so the steady state costs no query and no wait on
the writer thread. Any failure, a live queue longer than ``LIVE_MAX`` rows, or rows dropped
by the outbox policy (``Store.outbox_epoch``) sends the sink back to catching up.

Rounds are pipelined: a sink keeps publishing new batches while earlier ones wait for their
PUBACKs, up to ``window`` rows in flight (the broker's receive window is the real bound; the
publisher queues what is beyond it, in order). Outcomes are taken in publish order, so the
counters and the deletions are those of one round after another. A round with a failure
stops the pipeline: the rounds after it are waited for (their acked rows are delivered and
leave the outbox), then the failure is handled as below. A row with a failed attempt, a
half-open breaker and a paced (``drain_rate``) sink go stop-and-wait: one round at a time.

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
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

from gateway.counters import Counters
from gateway.errors import SinkError
from gateway.sinks.resilience import Backoff, BreakerState, CircuitBreaker
from gateway.store.store import OutboxFeed, OutboxRow


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


class Outbox(Protocol):
    """Where a sink's rows wait: the SQLite outbox (``Store``) or a ``MemoryOutbox``."""

    outbox_epoch: int

    @property
    def outbox_last_id(self) -> int: ...

    def outbox_feed(self, sink: str, feed: OutboxFeed) -> Callable[[], None]: ...

    def outbox_signal(self, sink: str) -> asyncio.Event: ...

    def when_committed(self, callback: Callable[[], None]) -> None: ...

    async def flush(self) -> None: ...

    async def outbox_take(
        self, sink: str, limit: int, acked: Sequence[int] = ()
    ) -> list[OutboxRow]: ...

    def outbox_settled(self, ids: Sequence[int]) -> None: ...

    async def outbox_failed(self, ids: Sequence[int]) -> None: ...

    async def outbox_dead_letter(
        self, rows: Sequence[OutboxRow], sink: str, reason: str
    ) -> None: ...

    async def outbox_depth(self, sink: str | None = None) -> int: ...


class Publisher(Protocol):
    """A connection to one upstream."""

    @property
    def connected(self) -> bool: ...

    async def connect(self) -> None: ...

    async def close(self) -> None: ...

    @property
    def broker_max_packet(self) -> int | None: ...

    def send(self, rows: Sequence[OutboxRow]) -> asyncio.Future[list[Outcome]]:
        """Publish ``rows`` now, after everything sent before (in order); the future gives
        one outcome per row once each is acknowledged, refused or given up on (it fails
        with ``SinkError`` when nothing could be sent, e.g. not connected)."""
        ...


@dataclass(slots=True)
class _Flight:
    """One round on its way: its rows and their outcomes to come."""

    rows: list[OutboxRow]
    outcomes: asyncio.Future[list[Outcome]]


@dataclass(slots=True)
class _Tally:
    """The failures of a pipeline that stopped: what to charge and how to say it."""

    refused: list[OutboxRow] = field(default_factory=list)
    suspect: OutboxRow | None = None
    unconfirmed: int = 0
    sent: int = 0
    error: str = ""


class Forwarder:
    """Moves one sink's outbox rows upstream, in order, at least once."""

    def __init__(
        self,
        sink_id: str,
        store: Outbox,
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
        window: int | None = None,
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
        self._window = max(window if window is not None else 4 * self._batch, self._batch)
        """Rows published and not yet settled, at most (a new round goes out below it)."""
        self._flight: deque[_Flight] = deque()
        self._flying = 0  # rows in self._flight
        self._flying_ids: set[int] = set()
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
        """Wait until the outbox has rows for this sink that are not in flight and return the
        oldest; or return [] once the oldest round in flight has its outcomes."""
        ready = self._store.outbox_signal(self.sink_id)
        while True:
            ready.clear()
            if self._landed():
                return []
            if self._live and self._epoch != self._store.outbox_epoch:
                self._catch_up()  # the policy dropped rows: the queue may hold some
            rows = self._take_live() if self._live else await self._read()
            if rows:
                self.idle.clear()
                return rows
            if self._landed():
                return []
            if not self._flight:
                if self._settled_upto != self._settles:
                    # idle once delivered rows are gone from the outbox too (soon committed,
                    # or at once: a memory outbox forgets them when told)
                    self._store.when_committed(functools.partial(self._settled, self._settles))
                if self._settled_upto == self._settles:
                    self.idle.set()
            self._waiting = True
            try:
                await ready.wait()
            finally:
                self._waiting = False

    async def _read(self) -> list[OutboxRow]:
        """Catch up: the oldest rows in SQLite, less those in flight; go live once a read
        finds every row."""
        if self._settled_upto != self._settles:  # delivered rows go before reading
            settles = self._settles
            await self._store.flush()
            self._settled_upto = max(self._settled_upto, settles)
        self._catch_up()
        self._spilled = False
        # the read returns rows up to here; the feed hands over the newer ones
        self._last_id = self._store.outbox_last_id
        self._epoch = self._store.outbox_epoch
        acked, self._acked = self._acked, []
        flying = self._flying_ids  # only this task changes it: stable during the read
        limit = self._batch + len(flying)
        try:
            got = await self._store.outbox_take(self.sink_id, limit, acked)
        except BaseException:
            self._acked[:0] = acked
            raise
        rows = [r for r in got if r.id not in flying] if flying else got
        if (
            len(got) < limit  # nothing older is left: go live
            and len(rows) <= self._batch
            and not self._spilled
            and self._epoch == self._store.outbox_epoch
        ):
            self._live = True  # what was fed meanwhile is newer than what was read
            return rows
        self._catch_up()
        return rows[: self._batch]

    def _settled(self, settles: int) -> None:
        """The rows of the first ``settles`` live rounds are deleted."""
        self._settled_upto = max(self._settled_upto, settles)
        if self._waiting and self._settled_upto == self._settles and not self._flight:
            self.idle.set()

    def _too_large(self, row: OutboxRow) -> bool:
        limit = self._max_bytes
        broker = self._publisher.broker_max_packet
        if broker is not None:
            limit = min(limit, broker - 64)  # room for the fixed and variable headers
        return len(row.payload) + len(row.topic) > limit

    async def _deliver(self, rows: list[OutboxRow]) -> None:
        if not self._publisher.connected:
            await self._land_all()  # the rounds sent on the lost connection
            await self._publisher.connect()
            log.info("sink %s: connected", self.sink_id)
        if big := [r for r in rows if self._too_large(r)]:
            await self._bury(big, "too_large")
            rows = [r for r in rows if not self._too_large(r)]
        if not rows:
            self.breaker.record_success()  # the upstream is fine; the rows were the trouble
            return
        alone = rows[0].attempts > 0
        if alone:
            if len(rows) > 1:
                self._catch_up()  # the rows left out are read again
            rows = rows[:1]  # a suspect goes alone, so its outcome is its own
        # One round at a time for a suspect, a breaker's probe, and a paced sink.
        stop_and_wait = (
            alone or self._drain_rate is not None or self.breaker.state is not BreakerState.CLOSED
        )
        if stop_and_wait:
            await self._land_all()
        started = asyncio.get_running_loop().time()
        try:
            outcomes = self._publisher.send(rows)
        except SinkError:
            await self._land_all()  # an earlier round's failure is the one to report
            raise
        outcomes.add_done_callback(self._wake)
        self._flight.append(_Flight(rows, outcomes))
        self._flying += len(rows)
        self._flying_ids.update(r.id for r in rows)
        if stop_and_wait:
            await self._land_all()
            if self._drain_rate is not None:  # pace the backlog; alerts are taken first
                spent = asyncio.get_running_loop().time() - started
                await asyncio.sleep(max(0.0, len(rows) / self._drain_rate - spent))

    def _wake(self, _: object) -> None:
        self._store.outbox_signal(self.sink_id).set()

    def _landed(self) -> bool:
        """Has the oldest round in flight got its outcomes?"""
        return bool(self._flight) and self._flight[0].outcomes.done()

    def _pop(self) -> _Flight:
        flight = self._flight.popleft()
        self._flying -= len(flight.rows)
        self._flying_ids.difference_update(r.id for r in flight.rows)
        return flight

    async def _land_all(self) -> None:
        """Take the outcomes of every round in flight, oldest first."""
        while self._flight:
            await asyncio.wait((self._flight[0].outcomes,))
            await self._land(self._pop())

    async def _land(self, flight: _Flight) -> None:
        """Count and settle one round; on a failure stop the pipeline, charge the culprits
        and raise ``SinkError``."""
        tally = _Tally()
        self._account(flight, tally)
        if tally.sent and not tally.refused and tally.suspect is None and not tally.error:
            self.breaker.record_success()
            self._backoff.reset()
            return
        if tally.unconfirmed or tally.error:  # the connection is in doubt: fail the rest now
            await self._publisher.close()
        while self._flight:  # rows after the failure: delivered if acked, else sent again
            later = self._flight[0]
            await asyncio.wait((later.outcomes,))
            self._account(self._pop(), tally)
        self._catch_up()
        failed = tally.refused + ([tally.suspect] if tally.suspect is not None else [])
        if failed:
            dead = [r for r in failed if r.attempts + 1 >= self._max_attempts]
            await self._store.outbox_failed([r.id for r in failed if r not in dead])
            if dead:
                await self._bury(dead, "undeliverable")
        if tally.error and not tally.sent:
            raise SinkError(tally.error)
        raise SinkError(
            f"{tally.unconfirmed} of {tally.sent} messages not acknowledged, "
            f"{len(tally.refused)} refused"
        )

    def _account(self, flight: _Flight, tally: _Tally) -> None:
        """Counters and deletions for one round's outcomes; its failures go to ``tally``:
        refused rows, and the oldest unconfirmed row of the pipeline (the suspect)."""
        rows, future = flight.rows, flight.outcomes
        if future.cancelled() or future.exception() is not None:  # nothing was sent
            exc = None if future.cancelled() else future.exception()
            tally.error = tally.error or (str(exc) if exc is not None else "send cancelled")
            return
        outcomes = future.result()
        acked = [r.id for r, o in zip(rows, outcomes, strict=True) if o is Outcome.ACKED]
        self._count_sends(rows, outcomes, acked)
        tally.sent += len(rows)
        if acked:
            if self._live:
                self._store.outbox_settled(acked)  # deleted with the next commit
                self._settles += 1
            else:
                self._acked += acked  # deleted by the next read, on the same trip
            self._counters.inc(self.sink_id, "acked", len(acked))
        if len(acked) == len(rows):
            return
        refused = [r for r, o in zip(rows, outcomes, strict=True) if o is Outcome.REFUSED]
        if refused:
            self._counters.inc(self.sink_id, "refused", len(refused))
            tally.refused += refused
        unconfirmed = [r for r, o in zip(rows, outcomes, strict=True) if o is Outcome.UNCONFIRMED]
        tally.unconfirmed += len(unconfirmed)
        if unconfirmed and tally.suspect is None:
            tally.suspect = unconfirmed[0]

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
            try:
                try:
                    await self._step()
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

    async def _step(self) -> None:
        """Take the outcomes that came in; then send one more round, or wait for rows or
        for the oldest round (when ``window`` rows are in flight)."""
        while self._landed():
            await self._land(self._pop())
        if self._flying >= self._window:
            await asyncio.wait((self._flight[0].outcomes,))
            return
        rows = await self._next_batch()
        if not rows:
            return  # a round landed
        if not self.breaker.allow():
            self._catch_up()  # the rows taken are read again from SQLite
            await asyncio.sleep(max(self.breaker.retry_in(), 0.05))
            return
        await self._deliver(rows)

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
