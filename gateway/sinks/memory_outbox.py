"""One sink's outbox held in memory (``outbox: memory``): the forwarder's rows without SQLite.

The durable outbox commits every row before it is sent, and deletes it once acknowledged:
two SQLite writes per message and a wait for the group commit. A sink configured with
``outbox: memory`` trades that for speed: its rows are queued here, handed to the forwarder
on the next loop turn, and forgotten once acknowledged. An uplink outage still loses nothing
while the process lives (rows wait here, bounded by ``max_rows``, and are retried with the
same backoff and breaker), and a graceful stop or reload moves what is left to the SQLite
outbox (``close``), and the next memory outbox of that sink takes it back (``open``). A crash
or a power cut loses what was not acknowledged yet.

It speaks the outbox interface the ``Forwarder`` uses (the ``Store``'s ``outbox_*`` calls),
so the drain loop, its breaker, pipelining and poison handling are the same code for both.
Over ``max_rows`` the oldest rows of the lowest priority (raw readings first, alerts last)
are dropped, counted as ``memory_dropped`` on the sink (the first drop raises the gateway's
overflow alert, as the SQLite outbox's does), and ``outbox_epoch`` is bumped.

``oldest_age`` is how long the oldest row has waited, as the SQLite outbox's ``created``
column tells for its rows (health, ``/readyz``, the ``outbox_oldest_age_seconds`` metric). Rows
carry no time of their own: when it hands new rows over (once a loop turn, right after they
were added) at least ``MARK_INTERVAL_S`` after its last note, the outbox notes ``(first row
id, monotonic time)``, so the age of the oldest row is known to within that interval.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from array import array
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence

from gateway.counters import Counters
from gateway.store.store import DEAD_LETTER_RAW_MAX, PRIORITY_READING, OutboxFeed, OutboxRow, Store

log = logging.getLogger("gateway.sinks.memory_outbox")

ADOPT_PAGE = 5_000
"""Rows moved from SQLite per trip to the writer thread when a memory outbox adopts them."""
MARK_INTERVAL_S = 1.0
"""At most one ``(row id, time)`` note per this interval: the resolution of ``oldest_age``."""
MARKS_MAX = 4096
"""Notes kept before those older than the oldest row are pruned (also done by ``oldest_age``)."""


class MemoryOutbox:
    """The rows of one sink, by priority then id, in memory."""

    def __init__(
        self,
        sink: str,
        store: Store,
        counters: Counters,
        max_rows: int,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sink = sink
        self._store = store
        self._counters = counters
        self.max_rows = max_rows
        self._clock = clock
        self._monotonic = monotonic
        self._marks: deque[tuple[int, float]] = deque()
        """``(id, t)``: row ``id`` was handed over at monotonic time ``t``, and no row after
        it before ``t``; one note per ``MARK_INTERVAL_S`` at most."""
        self._marked_at = -math.inf
        self._lanes: tuple[OrderedDict[int, OutboxRow], ...] = tuple(
            OrderedDict() for _ in range(PRIORITY_READING + 1)
        )
        self._size = 0
        self._next_id = max_rows + 1  # below: the ids of rows adopted from SQLite
        self._new: list[OutboxRow] = []  # added since the last hand-over
        self._adopted_created = array("d")
        """When each row adopted from SQLite (ids 1, 2, ...) was first queued (NaN: unknown);
        kept while any of them waits, so that ``close`` hands them back as old as they are."""
        self._handing_over = False
        self._feed: OutboxFeed | None = None
        self._signal = asyncio.Event()
        self.outbox_epoch = 0
        """Bumped when rows are dropped (over ``max_rows``): handed-over copies may be stale."""

    @property
    def depth(self) -> int:
        """Rows not acknowledged yet."""
        return self._size

    # ------------------------------------------------------------------ what routers add

    def add(self, msg_id: str, topic: str, payload: bytes, qos: int, priority: int) -> None:
        """Queue one message; the forwarder gets it on the next loop turn."""
        row = OutboxRow(self._next_id, msg_id, topic, payload, qos, 0, priority)
        self._next_id += 1
        self._lanes[min(priority, PRIORITY_READING)][row.id] = row
        self._size += 1
        self._new.append(row)
        if self._size > self.max_rows:
            self._shed()
        if not self._handing_over:
            self._handing_over = True
            asyncio.get_running_loop().call_soon(self._hand_over)

    @property
    def oldest_age(self) -> float:
        """Seconds the oldest row has waited (0 when empty); at most ``MARK_INTERVAL_S``
        more than its true age."""
        oldest = self._prune_marks()
        if oldest is None or not self._marks:
            return 0.0
        return max(0.0, self._monotonic() - self._marks[0][1])

    def _prune_marks(self) -> int | None:
        """Forget the notes no waiting row needs; returns the oldest row's id (None: empty)."""
        firsts = [next(iter(lane)) for lane in self._lanes if lane]
        marks = self._marks
        if not firsts:
            marks.clear()
            self._adopted_created = array("d")
            self._marked_at = -math.inf  # the next row added is noted
            return None
        oldest = min(firsts)
        while len(marks) > 1 and marks[1][0] <= oldest:
            marks.popleft()
        if self._adopted_created and oldest > len(self._adopted_created):
            self._adopted_created = array("d")  # every adopted row is gone
        return oldest

    def _hand_over(self) -> None:
        """What ``Store`` does after a commit: the new rows to the feed, and a signal."""
        self._handing_over = False
        rows, self._new = self._new, []
        if rows and (now := self._monotonic()) - self._marked_at >= MARK_INTERVAL_S:
            self._marked_at = now  # one clock read per loop turn, not per row
            self._marks.append((rows[0].id, now))
            if len(self._marks) > MARKS_MAX:
                self._prune_marks()
        if rows and self._feed is not None:
            self._feed(rows)
        self._signal.set()

    def _shed(self) -> None:
        """Drop a tenth of ``max_rows``, oldest first, from the lowest priority up."""
        goal = self._size - self.max_rows + max(1, self.max_rows // 10)
        dropped = 0
        for lane in reversed(self._lanes):
            while lane and dropped < goal:
                lane.popitem(last=False)
                dropped += 1
        self._size -= dropped
        self.outbox_epoch += 1
        self._new = [r for r in self._new if r.id in self._lanes[min(r.priority, PRIORITY_READING)]]
        first = self._counters.get(self.sink, "memory_dropped") == 0
        self._counters.inc(self.sink, "memory_dropped", dropped)
        if first:
            log.error(
                "sink %s: memory outbox over %d rows: %d dropped, oldest readings first "
                "(raising an alert)",
                self.sink,
                self.max_rows,
                dropped,
            )
            if self._store.on_first_drop is not None:  # as the SQLite outbox's first drop does
                self._store.on_first_drop(f"{self.sink}.memory_dropped", dropped)

    # ------------------------------------------------------------------ the forwarder's side

    @property
    def outbox_last_id(self) -> int:
        """The id of the newest row added: ``outbox_take`` returns rows up to it."""
        return self._next_id - 1

    def outbox_feed(self, sink: str, feed: OutboxFeed) -> Callable[[], None]:
        """Hand ``feed`` the rows added, once a loop turn; returns what stops it."""
        self._feed = feed

        def stop() -> None:
            if self._feed == feed:
                self._feed = None

        return stop

    def outbox_signal(self, sink: str) -> asyncio.Event:
        """Set when rows were added (the caller clears it)."""
        return self._signal

    def when_committed(self, callback: Callable[[], None]) -> None:
        """Nothing waits for a commit here: ``callback`` runs now."""
        callback()

    async def flush(self) -> None:
        """Nothing to commit."""

    async def outbox_take(
        self, sink: str, limit: int, acked: Sequence[int] = ()
    ) -> list[OutboxRow]:
        """The oldest ``limit`` rows by priority, after forgetting ``acked``."""
        self.outbox_settled(acked)
        rows: list[OutboxRow] = []
        for lane in self._lanes:
            for row in lane.values():
                if len(rows) >= limit:
                    return rows
                rows.append(row)
        return rows

    def outbox_settled(self, ids: Sequence[int]) -> None:
        """Forget delivered rows."""
        lanes = self._lanes
        size = self._size
        for row_id in ids:
            for lane in lanes:
                if lane.pop(row_id, None) is not None:
                    size -= 1
                    break
        self._size = size

    async def outbox_failed(self, ids: Sequence[int]) -> None:
        """Count one more failed delivery attempt on each row (it keeps its place)."""
        for row_id in ids:
            for lane in self._lanes:
                if (row := lane.get(row_id)) is not None:
                    lane[row_id] = row._replace(attempts=row.attempts + 1)
                    break

    async def outbox_dead_letter(self, rows: Sequence[OutboxRow], sink: str, reason: str) -> None:
        """Move undeliverable rows to the store's ``dead_letters``."""
        now = self._clock()
        for r in rows:
            self._store.add_dead_letter(
                sink,
                reason,
                f"{r.msg_id} on {r.topic} after {r.attempts} attempts",
                r.payload[:DEAD_LETTER_RAW_MAX],
                now,
            )
        self.outbox_settled([r.id for r in rows])

    async def outbox_depth(self, sink: str | None = None) -> int:
        return self._size

    def _created(self, rows: list[OutboxRow]) -> list[float]:
        """Wall-clock time each of ``rows`` (by id) was queued, from the notes: that of the
        last note at or before it (at most ``MARK_INTERVAL_S`` early); now for rows not
        handed over yet or without a note."""
        wall, mono = self._clock(), self._monotonic()
        unnoted = {r.id for r in self._new}
        adopted = self._adopted_created
        marks, at, noted = list(self._marks), -1, wall
        created = []
        for r in rows:
            while at + 1 < len(marks) and marks[at + 1][0] <= r.id:
                at += 1
                noted = wall - (mono - marks[at][1])
            if r.id <= len(adopted) and not math.isnan(adopted[r.id - 1]):
                created.append(adopted[r.id - 1])
            else:
                created.append(wall if at < 0 or r.id in unnoted else noted)
        return created

    # ------------------------------------------------------------------ to and from SQLite

    async def open(self) -> int:
        """Take this sink's rows from now on, and move its rows from the SQLite outbox (left by
        a stop, or by the sink when it was durable) in front of them, up to ``max_rows``;
        returns how many moved. Rows beyond that stay in SQLite, and the operator is told."""
        self._store.buffer_in_memory(self.sink, self)
        found = await self._store.query(
            "SELECT min(created) AS t FROM outbox WHERE sink = ?", (self.sink,)
        )
        created = found[0]["t"] if found else None
        adopted: tuple[OrderedDict[int, OutboxRow], ...] = tuple(OrderedDict() for _ in self._lanes)
        moved = 0
        acked: list[int] = []
        adopted_created = array("d")
        while (room := self.max_rows - self._size - moved) > 0:
            rows = await self._store.outbox_take(self.sink, min(ADOPT_PAGE, room), acked)
            acked = [r.id for r in rows]
            queued = await self._store.outbox_created(acked)
            for r in rows:  # ids below those of rows added meanwhile (from max_rows + 1)
                moved += 1
                row = OutboxRow(moved, r.msg_id, r.topic, r.payload, r.qos, r.attempts, r.priority)
                adopted[min(r.priority, PRIORITY_READING)][moved] = row
                adopted_created.append(queued.get(r.id, math.nan))
            if len(rows) < ADOPT_PAGE:
                break
        if acked:
            await self._store.outbox_ack(acked)
        if moved:
            for lane, front in zip(self._lanes, adopted, strict=True):
                front.update(lane)
            self._lanes = adopted
            self._size += moved
            self._adopted_created = adopted_created
            waited = max(0.0, self._clock() - float(created)) if created is not None else 0.0
            self._marks.appendleft((1, self._monotonic() - waited))  # the adopted rows' age
            self.outbox_epoch += 1  # a forwarder that went live meanwhile reads them first
            self._signal.set()
            log.info("sink %s: %d rows taken from the SQLite outbox into memory", self.sink, moved)
            if left := await self._store.outbox_depth(self.sink) - self._size:
                log.warning(
                    "sink %s: %d rows stay in the SQLite outbox (memory outbox full at %d)",
                    self.sink,
                    left,
                    self.max_rows,
                )
        return moved

    def close(self) -> int:
        """Send this sink's new rows to SQLite again, and queue every row left there too
        (the store commits them with its next batch, or as it closes), each with the time it
        was first queued as far as the notes tell; returns how many."""
        self._store.buffer_in_memory(self.sink, None)
        rows = sorted((r for lane in self._lanes for r in lane.values()), key=lambda r: r.id)
        for r, created in zip(rows, self._created(rows), strict=True):
            self._store.add_outbox(
                self.sink, r.msg_id, r.topic, r.payload, r.qos, r.priority, created
            )
        for lane in self._lanes:
            lane.clear()
        self._size = 0
        self._new = []
        self._adopted_created = array("d")
        if rows:
            log.info(
                "sink %s: %d undelivered rows moved to the SQLite outbox", self.sink, len(rows)
            )
        return len(rows)
