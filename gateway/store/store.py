"""The local SQLite store and the durable outbox.

Every SQLite call runs on one dedicated writer thread, which owns the connection; the event
loop only appends to in-memory pending lists (O(1) per item) and awaits the thread. The
flusher (``run``) commits everything pending as ONE transaction, so an aggregate and the
outbox row that forwards it become durable together or not at all, unless the row was
delivered before (outbox rows are handed to their sink's forwarder as they are added, on the
next loop turn, and a row acknowledged before its commit is never written). Aggregates and alerts
pending behind readings go first, with their outbox rows, in a transaction of their own
(at most ``AHEAD_MAX`` in a row), so a burst of closing windows does not wait for the
readings' inserts; the readings and their rows follow in the next one.

Failure policy of a batch:

* ``sqlite3.OperationalError`` (locked, I/O error, disk full...) and other database errors:
  the whole batch is rolled back, put back in front of the pending lists, counted as
  ``write_errors`` and retried with capped exponential backoff. Nothing is lost while the
  process lives.
* An item SQLite cannot take (an unbindable value, stats that are not JSON...): the batch
  is retried row by row in one transaction; only the bad rows are dropped and counted as
  ``rejected``, so one poison item can never wedge the store.

WAL checkpoints run off the commit path: every ``checkpoint_interval`` a second connection,
on a thread of its own, runs PASSIVE checkpoints (SQLite lets them copy committed pages into
the database file while the writer goes on committing), then, once every page is copied, a
RESTART that never waits (so the WAL starts over instead of growing). Left to itself SQLite
checkpoints inside the commit that crosses 1,000 WAL pages, which under a steady load of small eager
commits meant a pause of about 20 ms every 80 ms of commits, and a far longer one when the
disk is slow to sync. Under a steady load a commit lands during nearly every pass, so the
checkpointer seldom finds the WAL idle long enough to restart it; once a turn leaves it past
``WAL_RESTART_PAGES`` the writer restarts it between two commits (copying only what the last
pass left, and waiting at most ``WAL_RESTART_WAIT_MS`` for readers), and ``journal_size_limit``
cuts the file back. The writer keeps SQLite's automatic checkpoint as a backstop at
``CHECKPOINT_BACKSTOP_PAGES``, should the checkpointer fall behind.

Bounded everything: pending items (while the disk refuses writes, e.g. when it is full) are
capped by ``max_pending`` and the outbox by ``outbox.max_rows``/``max_bytes``/``max_age``;
overflow drops raw readings first and alerts last, counts every drop and tells
``on_first_drop`` of the first one, so the gateway raises an alert of its own.

Retention (every ``retention.interval`` in ``run``, or ``enforce_retention``) deletes readings
whose ``ts`` is older than ``max_age`` (by the injected clock), the oldest inserted readings
beyond ``max_rows`` and the oldest dead letters beyond ``dead_letters_max_rows``, in jobs of
at most ``RETENTION_DELETE_ROWS`` deletes, so a batch never waits long behind it. Outbox rows
leave only when acked.

Counters (component ``store``): ``readings_written``, ``duplicates``, ``dead_letters``,
``rejected``, ``retention_deleted``, ``write_errors``, ``lost_on_close``, ``pending_dropped``,
``outbox_dropped``, ``outbox_expired``; and the duration histogram ``commit_seconds``, one
observation per batch (from handing it to the writer thread to its commit or failure).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from operator import attrgetter
from types import TracebackType
from typing import Any, NamedTuple, Protocol, Self, TypeVar

import orjson
from sqlite_utils import Database

from gateway.counters import Counters
from gateway.model import Aggregate, Alert, Reading
from gateway.store.config import StoreConfig
from gateway.store.schema import create_schema
from gateway.store.statements import (
    Insert,
    count_attempt,
    delete_outbox,
    id_buckets,
    ids_in,
    insert_rows,
)

log = logging.getLogger("gateway.store")

T = TypeVar("T")

COMPONENT = "store"
DEAD_LETTER_RAW_MAX = 64 * 1024
"""Bytes of a dead letter's raw payload that are kept."""
BUSY_TIMEOUT_MS = 5000
RETENTION_SCAN_ROWS = 50_000
"""Rowid span one age-retention job scans (about 3 ms per 50k rows)."""
RETENTION_DELETE_ROWS = 2_000
"""Rows one retention job deletes at most (about 10 ms with both reading indexes)."""
CHECKPOINT_BACKSTOP_PAGES = 16_000
"""WAL pages (64 MB of 4 KiB pages) past which a commit checkpoints itself, as SQLite does at
1,000 pages: only reached when the background checkpointer falls behind."""
WAL_RESTART_PAGES = 4_000
"""WAL pages (16 MB) past which, when the checkpointer could not start the WAL over by itself
(a commit or a reader always in the way), the writer does it between two commits: a RESTART
that copies what the checkpointer's last pass left and waits at most ``WAL_RESTART_WAIT_MS``
for readers. Only after a pass that left at most ``WAL_RESTART_RESIDUE_PAGES`` to copy, so
that costs the writer a few ms; a checkpointer that is behind leaves it to the backstop. Also
the size the WAL file is cut back to once it starts over (``journal_size_limit``)."""
WAL_RESTART_RESIDUE_PAGES = 256
"""At most this many pages (1 MB) left by the checkpointer's last pass for that RESTART."""
WAL_RESTART_WAIT_MS = 20
"""How long that RESTART waits for readers of old pages (commits queue meanwhile)."""
CHECKPOINT_PASSES = 12
"""Checkpoints per turn of the checkpointer: PASSIVE ones while commits keep adding pages
(each shorter than the one before), then a RESTART once every page is copied, so the next
commit writes the WAL from its beginning instead of growing it."""
RETRY_INITIAL = 0.1
RETRY_MAX = 10.0
AHEAD_MAX = 4
"""Transactions of aggregates and alerts the flusher commits ahead of pending readings in a
row, at most, before it commits the readings too (so a stream of aggregates cannot starve
them)."""

_READINGS = Insert("INSERT OR IGNORE INTO readings (source, device, metric, ts, value, seq)", 6)
_AGGREGATES = Insert(
    'INSERT INTO aggregates (pipeline, step, device, metric, "start", "end", count, stats)', 8
)
_ALERTS = Insert(
    "INSERT INTO alerts (pipeline, step, device, metric, kind, state, severity, ts, value,"
    " threshold, message, score, evidence)",
    13,
)
_DEAD_LETTERS = Insert("INSERT INTO dead_letters (source, ts, reason, detail, raw)", 5)
_OUTBOX = Insert("INSERT INTO outbox (id, sink, msg_id, topic, payload, qos, created, priority)", 8)
PRIORITY_ALERT, PRIORITY_AGGREGATE, PRIORITY_READING = 0, 1, 2
"""Outbox priorities: a sink sends the lowest first; overflow drops the highest first."""

_reading_row = attrgetter("source", "device", "metric", "ts", "value", "seq")
_row_order = attrgetter("priority", "id")

# Errors that belong to one item, not to the database: retrying the batch cannot help.
_ITEM_ERRORS: tuple[type[Exception], ...] = (
    sqlite3.IntegrityError,
    sqlite3.InterfaceError,
    sqlite3.ProgrammingError,
    sqlite3.DataError,
    AttributeError,
    OverflowError,
    TypeError,
    ValueError,
)

DeadLetterRow = tuple[str, float, str, str, bytes]
_Pending = tuple[str, "OutboxRow", float]
"""An outbox row added and not committed yet: its sink, the row, when it was added."""
_Step = tuple[int, int | None]
"""One retention job's result: rows deleted, and where to go on (None: done)."""


class OutboxRow(NamedTuple):
    """One message waiting for its sink (a ``NamedTuple``: one is built per forwarded message
    on the loop, where a frozen dataclass's ``__init__`` costs about three times as much)."""

    id: int
    msg_id: str
    topic: str
    payload: bytes
    qos: int
    attempts: int
    priority: int = PRIORITY_AGGREGATE


@dataclass(slots=True)
class WalStats:
    """What the checkpointer saw (written on its thread, read anywhere): for tools and tests."""

    turns: int = 0
    passes: int = 0
    busy: int = 0
    """Passes that found a reader or writer in the way (PASSIVE: never waits)."""
    restarts: int = 0
    """Checkpoints that started the WAL over (the next commit writes it from its start)."""
    writer_restarts: int = 0
    """RESTARTs the writer ran between commits, the WAL being past ``WAL_RESTART_PAGES``."""
    writer_busy: int = 0
    """...of which a reader kept the WAL from starting over within ``WAL_RESTART_WAIT_MS``."""
    writer_seconds: float = 0.0
    """Time those RESTARTs took (commits queue meanwhile), in all..."""
    writer_seconds_max: float = 0.0
    """...and the longest."""
    behind: int = 0
    """WAL frames the last pass left uncopied (a reader was on them, or it is behind)."""
    log: int = 0
    """WAL frames at the last pass."""
    max_log: int = 0


OutboxFeed = Callable[[list[OutboxRow]], None]
"""Told the rows each commit added for one sink, in id order."""


class MemoryBuffer(Protocol):
    """Where the rows of a sink with ``outbox: memory`` go instead of SQLite."""

    @property
    def depth(self) -> int: ...

    @property
    def oldest_age(self) -> float: ...

    def add(self, msg_id: str, topic: str, payload: bytes, qos: int, priority: int) -> None: ...


@dataclass(slots=True)
class _Batch:
    """What one transaction writes; ``upto`` is the add sequence number it covers."""

    upto: int
    readings: list[Reading] = field(default_factory=list)
    aggregates: list[Aggregate] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    dead_letters: list[DeadLetterRow] = field(default_factory=list)
    outbox: dict[int, _Pending] = field(default_factory=dict)
    settled: list[int] = field(default_factory=list)
    """Outbox rows delivered: deleted in this transaction (not counted in ``size``)."""

    @property
    def size(self) -> int:
        return (
            len(self.readings)
            + len(self.aggregates)
            + len(self.alerts)
            + len(self.dead_letters)
            + len(self.outbox)
        )


@dataclass(frozen=True, slots=True)
class _Written:
    """What a committed batch did, reported back to the loop thread."""

    readings: int
    duplicates: int
    dead_letters: int
    rejected: int
    outbox_dropped: int = 0


def _aggregate_row(a: Aggregate) -> tuple[Any, ...]:
    stats = orjson.dumps(a.stats).decode()
    return (a.pipeline, a.step, a.device, a.metric, a.start, a.end, a.count, stats)


def _alert_row(a: Alert) -> tuple[Any, ...]:
    score = a.score if a.score == a.score else None  # NaN: no score
    evidence = orjson.dumps(a.evidence).decode() if a.evidence else None
    return (
        a.pipeline,
        a.step,
        a.device,
        a.metric,
        a.kind,
        a.state,
        a.severity,
        a.ts,
        a.value,
        a.threshold,
        a.message,
        score,
        evidence,
    )


def _same_row(row: tuple[Any, ...]) -> tuple[Any, ...]:
    return row


def _retry_delay(attempt: int) -> float:
    """Capped exponential backoff with jitter in [cap/2, cap]."""
    cap = min(RETRY_MAX, RETRY_INITIAL * 2 ** min(attempt, 32))
    return random.uniform(cap / 2, cap)


class Store:
    """Readings, aggregates, alerts, dead letters and the outbox in one SQLite file.

    Loop-side ``add_*`` methods only queue; ``run`` (or ``flush``) commits. Usable as
    ``async with Store(...) as store:``.
    """

    _chunk_rows = 1024
    """Rows per INSERT statement (fewer if SQLite binds fewer variables); 0 restores the former
    shapes, one ``executemany`` row by row and one outbox DELETE per chunk size, to compare.
    SQLite lets go of the GIL while it runs a statement, and taking it back while the event
    loop is busy waits up to the switch interval (5 ms): under load the writer's rate is set
    by its statements per batch. Beside a busy loop, a batch commits in 0.55 of the time it
    takes with 128 rows a statement (0.59 with 512: ``python -m gateway.tools.store_insert
    --rows 2000 --devices 1000 --chunks 128,512,1024``), for about 1.5 MB more of prepared
    statements, the power-of-two remainder shapes of every table included (as with 512)."""

    def __init__(
        self, config: StoreConfig, counters: Counters, clock: Callable[[], float] = time.time
    ) -> None:
        self.config = config
        self._counters = counters
        self._clock = clock
        self._sink_events: dict[str, asyncio.Event] = {}
        self._executor: ThreadPoolExecutor | None = None
        self._db: Database | None = None  # touched only on the writer thread
        self._checkpointer: ThreadPoolExecutor | None = None
        self._ckpt_conn: sqlite3.Connection | None = None  # checkpointer thread only
        self.wal_stats = WalStats()
        # pending work, loop thread only
        self._readings: list[Reading] = []
        self._aggregates: list[Aggregate] = []
        self._alerts: list[Alert] = []
        self._dead_letters: list[DeadLetterRow] = []
        self._outbox: dict[int, _Pending] = {}
        """Outbox rows added and not handed to the writer yet, by id (so in id order)."""
        self._inflight_outbox: dict[int, _Pending] = {}
        """...and those of the batch the writer is committing."""
        self._handover: dict[str, list[OutboxRow]] = {}  # added since the last hand-over
        self._handing_over = False
        self._settled: list[int] = []
        self._n_pending = 0
        self._added = 0  # sequence number of the last add
        self._committed_upto = 0  # every add up to this sequence number is committed
        self._inflight: asyncio.Future[_Written] | None = None
        self._inflight_since = 0.0
        self._waiters: deque[tuple[int, Callable[[], None]]] = deque()
        self.on_first_drop: Callable[[str, int], None] | None = None
        """Told ``(counter, n)`` of the first overflow drop of each kind in this process."""
        self.on_write_state: Callable[[bool, str], None] | None = None
        """Told ``(True, error)`` when commits start failing (e.g. disk full), ``(False, "")``
        when one succeeds again: one call per episode, so the gateway raises one alert."""
        self._write_failing = False
        self._ob_rows = 0  # outbox totals, writer thread only
        self._taken: dict[str, frozenset[int]] = {}  # per sink, the rows in flight (writer thread)
        self._ob_bytes = 0
        self._ob_next_id = 1  # outbox ids, assigned as rows are added (read from the file at open)
        self._var_limit = 999  # writer thread: SQLITE_LIMIT_VARIABLE_NUMBER, read at open
        self._feeds: dict[str, OutboxFeed] = {}
        self._memory: dict[str, MemoryBuffer] = {}
        """Sinks whose rows are kept in memory (``outbox: memory``), not in SQLite."""
        self.outbox_epoch = 0
        """Bumped whenever rows leave the outbox by policy (overflow, expiry), so a sink that
        holds rows handed to it knows its copy may be stale."""
        self._wake = asyncio.Event()
        self._urgent = False  # a commit is awaited: eager_interval applies
        self._last_commit = 0.0  # loop time the last commit started

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Start the writer thread, open the file (WAL) and create the schema."""
        if self._executor is not None:
            raise RuntimeError("store is already open")
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-writer")
        try:
            await self._call(self._open_db)
            if self.config.checkpoint_interval is not None:
                self._checkpointer = ThreadPoolExecutor(1, thread_name_prefix="store-checkpoint")
                await self._checkpoint_call(self._open_checkpointer)
        except BaseException:
            await self._stop_checkpointer()
            if self._db is not None:
                await self._call(self._close_db)
            self._executor.shutdown(wait=False)
            self._executor = None
            raise
        log.info("store %s open (synchronous=%s)", self.config.path, self.config.synchronous)

    async def close(self) -> None:
        """Commit everything pending, then close the file and stop the writer thread."""
        if self._executor is None:
            return
        try:
            await self.flush()
        except sqlite3.Error as exc:
            lost = self._n_pending
            self._counters.inc(COMPONENT, "lost_on_close", lost)
            log.error("store: final flush failed (%s); %d pending items lost", exc, lost)
        finally:
            try:
                await self._stop_checkpointer()  # first: the last connection to close
                await self._call(self._close_db)  # checkpoints the WAL away
            finally:
                self._executor.shutdown(wait=False)
                self._executor = None

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # ------------------------------------------------------------------ loop side: queue

    @property
    def pending(self) -> int:
        """Items added but not yet committed."""
        return self._n_pending

    def add_readings(self, readings: Iterable[Reading]) -> None:
        """Queue readings; one already stored with the same (source, device, metric, seq)
        is ignored on commit."""
        before = len(self._readings)
        try:
            self._readings.extend(readings)
        finally:  # an iterable that fails midway still leaves a consistent count
            self._queued(len(self._readings) - before)

    def add_aggregate(self, agg: Aggregate) -> None:
        """Queue one aggregate."""
        self._aggregates.append(agg)
        self._queued(1)

    def add_alert(self, alert: Alert) -> None:
        """Queue one alert transition."""
        self._alerts.append(alert)
        self._queued(1)

    def add_outbox(
        self,
        sink: str,
        msg_id: str,
        topic: str,
        payload: bytes,
        qos: int,
        priority: int = PRIORITY_AGGREGATE,
        created: float | None = None,
    ) -> None:
        """Queue one message for ``sink`` (or, for a sink with a memory outbox, send it there).
        ``created`` (wall clock, default now) is when it was first queued: a row handed back
        by a memory outbox keeps its age (and its expiry by ``outbox.max_age``).

        The sink's forwarder is handed the row on the next loop turn, before it is committed;
        the row commits with whatever was queued before it unless it was acknowledged first
        (``outbox_settled``). Alerts ask for a commit within ``eager_interval``; aggregates
        and forwarded readings commit with the readings (``batch_interval``): the sink does
        not wait for the commit, and most of a burst is acknowledged before it."""
        if self._memory and (memory := self._memory.get(sink)) is not None:
            memory.add(msg_id, topic, payload, qos, priority)
            return
        row_id = self._ob_next_id
        self._ob_next_id = row_id + 1
        row = OutboxRow(row_id, msg_id, topic, payload, qos, 0, priority)
        self._outbox[row_id] = (sink, row, self._clock() if created is None else created)
        if sink in self._feeds or sink in self._sink_events:  # someone forwards this sink
            if (new := self._handover.get(sink)) is None:
                self._handover[sink] = [row]
            else:
                new.append(row)
            if not self._handing_over:
                self._handing_over = True
                asyncio.get_running_loop().call_soon(self._hand_over)
        self._queued(1)
        if priority == PRIORITY_ALERT:
            self._hurry()

    @property
    def outbox_last_id(self) -> int:
        """The id of the newest row added: ``outbox_take`` returns rows up to it."""
        return self._ob_next_id - 1

    def _hand_over(self) -> None:
        """The rows added since the last turn, to each sink's feed; then its signal."""
        self._handing_over = False
        handover, self._handover = self._handover, {}
        for sink, rows in handover.items():
            if (feed := self._feeds.get(sink)) is not None:
                feed(rows)
            if (event := self._sink_events.get(sink)) is not None:
                event.set()

    def add_dead_letter(self, source: str, reason: str, detail: str, raw: bytes, ts: float) -> None:
        """Queue rejected input; ``raw`` is cut to ``DEAD_LETTER_RAW_MAX`` bytes."""
        self._dead_letters.append((source, ts, reason, detail, raw[:DEAD_LETTER_RAW_MAX]))
        self._queued(1)

    def outbox_settled(self, ids: Sequence[int]) -> None:
        """Forget delivered rows: one not committed yet is never written; the others are
        deleted with the next commit, without waiting for it (a crash before that commit
        sends them again: at least once, under the same message id)."""
        if later := self._forget_pending(ids):
            self._settled.extend(later)
            self._added += 1
            if not self._wake.is_set() and len(self._settled) >= self.config.batch_max:
                self._wake.set()

    def _forget_pending(self, ids: Sequence[int]) -> list[int]:
        """Drop the rows of ``ids`` that wait for a commit; returns the other ids."""
        pending = self._outbox
        if not pending:
            return list(ids)
        later: list[int] = []
        for row_id in ids:
            if pending.pop(row_id, None) is None:
                later.append(row_id)
        self._n_pending -= len(ids) - len(later)
        return later

    def _uncommitted(self, ids: Iterable[int]) -> bool:
        """Is any of ``ids`` a row not committed yet (pending, or in the batch being written)?"""
        pending, inflight = self._outbox, self._inflight_outbox
        return (bool(pending) or bool(inflight)) and any(i in pending or i in inflight for i in ids)

    def buffer_in_memory(self, sink: str, buffer: MemoryBuffer | None) -> None:
        """From now on send ``sink``'s new rows to ``buffer`` (None: to SQLite again)."""
        if buffer is None:
            self._memory.pop(sink, None)
        else:
            self._memory[sink] = buffer

    def memory_depths(self) -> dict[str, int]:
        """Rows waiting in each memory outbox."""
        return {sink: buffer.depth for sink, buffer in self._memory.items()}

    def memory_ages(self) -> dict[str, float]:
        """Seconds the oldest row of each memory outbox has waited (0 when empty)."""
        return {sink: buffer.oldest_age for sink, buffer in self._memory.items()}

    def outbox_feed(self, sink: str, feed: OutboxFeed) -> Callable[[], None]:
        """After each commit, hand ``feed`` the rows it added for ``sink`` (replacing any
        earlier feed of that sink); returns what stops it."""
        self._feeds[sink] = feed

        def stop() -> None:
            if self._feeds.get(sink) == feed:
                del self._feeds[sink]

        return stop

    def _queued(self, n: int) -> None:
        if n <= 0:
            return
        self._added += 1
        self._n_pending += n
        if self._n_pending > self.config.max_pending:
            self._shed_pending()
        if self._n_pending >= self.config.batch_max and not self._wake.is_set():
            self._wake.set()

    def when_committed(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (on the loop) once everything added so far is committed: right
        away if it already is. Callbacks run in the order they were registered."""
        if self._committed_upto >= self._added:
            callback()
        else:
            self._waiters.append((self._added, callback))
            self._hurry()

    def _hurry(self) -> None:
        """Something waits for the next commit: make it come within ``eager_interval``."""
        if not self._urgent and self.config.eager_interval is not None:
            self._urgent = True
            self._wake.set()

    def _release_waiters(self) -> None:
        waiters, upto = self._waiters, self._committed_upto
        while waiters and waiters[0][0] <= upto:
            _, callback = waiters.popleft()
            try:
                callback()
            except Exception:  # a caller's bug must not break the commit bookkeeping
                log.exception("store: a commit callback failed")

    def _shed_pending(self) -> None:
        """Over ``max_pending`` (commits failing, e.g. disk full): drop a tenth of the limit,
        oldest readings first, then aggregates and forwarded rows; alerts never."""
        goal = self._n_pending - self.config.max_pending + self.config.max_pending // 10
        dropped = 0
        for items in (self._readings, self._aggregates):
            k = min(goal - dropped, len(items))
            if k > 0:
                del items[:k]
                dropped += k
        if dropped < goal:
            others = [i for i, p in self._outbox.items() if p[1].priority != PRIORITY_ALERT]
            shed = others[: goal - dropped]
            for row_id in shed:
                del self._outbox[row_id]
            dropped += len(shed)
            if shed:  # not handed to the forwarders: they are gone
                gone = set(shed)
                for rows in self._handover.values():
                    rows[:] = [r for r in rows if r.id not in gone]
        if dropped:
            self._n_pending -= dropped
            self._dropped("pending_dropped", dropped)

    def _dropped(self, counter: str, n: int) -> None:
        """Count a drop; the first one of each kind in this process raises an alert."""
        if counter.startswith("outbox_"):
            self.outbox_epoch += 1
        first = self._counters.get(COMPONENT, counter) == 0
        self._counters.inc(COMPONENT, counter, n)
        if first:
            log.error(
                "store: %s: %d items dropped by the overflow policy (raising an alert)", counter, n
            )
            if self.on_first_drop is not None:
                self.on_first_drop(counter, n)

    # ------------------------------------------------------------------ loop side: commit

    async def flush(self) -> None:
        """Return once everything added before this call is committed.

        Raises the database error if a commit fails; the items then stay pending.
        """
        target = self._added
        while self._committed_upto < target:
            await self._commit_once()

    async def run(self) -> None:
        """The background flusher and retention; runs until cancelled, then flushes."""
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._flusher(), name="store.flusher")
                tg.create_task(self._retention_loop(), name="store.retention")
                if self._checkpointer is not None:
                    tg.create_task(self._checkpoint_loop(), name="store.checkpoint")
        except asyncio.CancelledError:
            try:
                await self.flush()
            except sqlite3.Error as exc:
                log.error("store: final flush failed (%s); %d items pending", exc, self._n_pending)
            raise

    async def _flusher(self) -> None:
        attempt = 0
        ahead = 0  # transactions committed ahead of the pending readings in a row
        loop = asyncio.get_running_loop()
        while True:
            if ahead == 0:
                if self._n_pending < self.config.batch_max:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self.config.batch_interval):
                            await self._wake.wait()
                    eager = self.config.eager_interval
                    if (
                        self._urgent
                        and eager is not None
                        and self._n_pending < self.config.batch_max
                    ):
                        await asyncio.sleep(self._last_commit + eager - loop.time())
                self._wake.clear()
                self._urgent = False
                self._last_commit = loop.time()
            try:
                if ahead < AHEAD_MAX and self._readings and (self._aggregates or self._alerts):
                    ahead += 1
                    await self._commit_ahead()
                else:  # everything pending; then wait for the next batch as usual
                    ahead = 0
                    await self._commit_once()
            except sqlite3.Error:
                ahead = 0
                delay = _retry_delay(attempt)
                attempt += 1
                log.warning("store: retrying the batch in %.2fs", delay)
                await asyncio.sleep(delay)
            else:
                attempt = 0

    async def _commit_ahead(self) -> None:
        """Commit the pending aggregates, alerts and dead letters, with their outbox rows and
        the delivered rows to delete, but not the readings (nor their outbox rows): a burst of
        aggregates as windows close is durable, and can leave, without waiting for thousands
        of readings' inserts. Readings are committed next, so nothing is reordered within a
        kind; ``when_committed`` waiters wait for the readings' commit too."""
        await self._writer_free()
        outbox = {i: p for i, p in self._outbox.items() if p[1].priority != PRIORITY_READING}
        if len(outbox) < len(self._outbox):
            self._outbox = {
                i: p for i, p in self._outbox.items() if p[1].priority == PRIORITY_READING
            }
        else:
            self._outbox = {}
        batch = _Batch(
            self._committed_upto,  # the readings added before are not committed yet
            [],
            self._aggregates,
            self._alerts,
            self._dead_letters,
            outbox,
            self._settled,
        )
        self._aggregates, self._alerts, self._dead_letters, self._settled = [], [], [], []
        self._n_pending -= batch.size
        if batch.size or batch.settled:
            await self._write(batch)

    async def _commit_once(self) -> None:
        """Commit what is pending now as one transaction (after any batch in flight)."""
        await self._writer_free()
        if self._n_pending == 0 and not self._settled:
            self._committed_upto = self._added
            self._release_waiters()
            return
        batch = _Batch(
            self._added,
            self._readings,
            self._aggregates,
            self._alerts,
            self._dead_letters,
            self._outbox,
            self._settled,
        )
        self._readings, self._aggregates, self._alerts = [], [], []
        self._dead_letters, self._outbox, self._settled = [], {}, []
        self._n_pending = 0
        await self._write(batch)

    async def _writer_free(self) -> None:
        """Wait until no batch is in flight (one transaction at a time)."""
        while self._inflight is not None:
            await asyncio.wait((self._inflight,))
        if self._executor is None:
            raise RuntimeError("store is not open")

    async def _write(self, batch: _Batch) -> None:
        """Commit ``batch`` on the writer thread; on failure it goes back in front."""
        fut = self._submit(self._write_batch, batch)
        self._inflight = fut
        self._inflight_outbox = batch.outbox
        self._inflight_since = time.perf_counter()
        # The callback does the bookkeeping even if the awaiting task is cancelled meanwhile.
        fut.add_done_callback(partial(self._on_written, batch))
        await asyncio.wait((fut,))
        if (exc := fut.exception()) is not None:
            raise exc

    def _on_written(self, batch: _Batch, fut: asyncio.Future[_Written]) -> None:
        self._inflight = None
        self._inflight_outbox = {}
        if not fut.cancelled():  # one batch: queued behind reads, then one transaction
            self._counters.observe(
                COMPONENT, "commit_seconds", time.perf_counter() - self._inflight_since
            )
        exc = None if fut.cancelled() else fut.exception()
        if fut.cancelled() or exc is not None:
            # Put the batch back in front, so order is kept and nothing is lost.
            self._readings[:0] = batch.readings
            self._aggregates[:0] = batch.aggregates
            self._alerts[:0] = batch.alerts
            self._dead_letters[:0] = batch.dead_letters
            # rows acked meanwhile are in _settled: the retry inserts, then deletes them
            self._outbox = {**batch.outbox, **self._outbox}
            self._settled[:0] = batch.settled
            self._n_pending += batch.size
            self._counters.inc(COMPONENT, "write_errors")
            log.error("store: committing %d items failed: %r", batch.size, exc)
            if not self._write_failing:
                self._write_failing = True
                if self.on_write_state is not None:
                    self.on_write_state(True, repr(exc))
            return
        written = fut.result()
        if self._write_failing:
            self._write_failing = False
            log.warning("store: commits succeed again")
            if self.on_write_state is not None:
                self.on_write_state(False, "")
        self._committed_upto = max(self._committed_upto, batch.upto)
        self._release_waiters()
        c = self._counters
        c.inc(COMPONENT, "readings_written", written.readings)
        c.inc(COMPONENT, "duplicates", written.duplicates)
        c.inc(COMPONENT, "dead_letters", written.dead_letters)
        if written.outbox_dropped:
            self._dropped("outbox_dropped", written.outbox_dropped)
        if written.rejected:
            c.inc(COMPONENT, "rejected", written.rejected)
            log.error("store: dropped %d items SQLite could not store", written.rejected)
        if written.outbox_dropped:  # the forwarders' copies may be stale: let them look
            for event in self._sink_events.values():
                event.set()

    def outbox_signal(self, sink: str) -> asyncio.Event:
        """An event set when rows were added for ``sink`` (on the next loop turn, with the
        feed), or may have been dropped by the outbox policy; the caller clears it."""
        return self._sink_events.setdefault(sink, asyncio.Event())

    # ------------------------------------------------------------------ loop side: outbox, reads

    async def outbox_take(
        self, sink: str, limit: int, acked: Sequence[int] = ()
    ) -> list[OutboxRow]:
        """The oldest ``limit`` rows of ``sink`` (by priority, then id) among those added
        before the call (``outbox_last_id``), committed or not; they stay until acked. Rows in
        ``acked`` (delivered) are forgotten first, in the same trip to the writer thread."""
        upto = self._ob_next_id - 1
        later = self._forget_pending(acked) if acked else []
        # Not committed yet: pending, or in the batch being written (which commits, or goes
        # back to pending, before the read below runs: one thread, in order).
        gone = frozenset(later)
        uncommitted = [
            row
            for pending in (self._inflight_outbox, self._outbox)
            for s, row, _ in pending.values()
            if s == sink and row.id not in gone
        ]
        rows = await self._call(self._outbox_take, sink, limit, later, upto)
        if not uncommitted:
            return rows
        merged = {row.id: row for row in rows}  # a committed row's attempts count
        for row in uncommitted:
            merged.setdefault(row.id, row)
        return sorted(merged.values(), key=_row_order)[:limit]

    async def outbox_created(self, ids: Sequence[int]) -> dict[int, float]:
        """When each of these rows was first queued (wall clock), committed or not; rows
        gone meanwhile are left out."""
        found: dict[int, float] = {}
        for pending in (self._inflight_outbox, self._outbox):
            for row_id in ids:
                if (entry := pending.get(row_id)) is not None:
                    found[row_id] = entry[2]
        rest = [row_id for row_id in ids if row_id not in found]
        for chunk in id_buckets(rest):
            sql = f"SELECT id, created FROM outbox {ids_in(len(chunk))}"
            for row in await self.query(sql, chunk):
                found[int(row["id"])] = float(row["created"])
        return found

    async def outbox_ack(self, ids: Sequence[int]) -> None:
        """Delete delivered rows (those not committed yet are forgotten)."""
        if ids and (later := self._forget_pending(ids)):
            await self._call(self._outbox_ack, later)

    async def outbox_failed(self, ids: Sequence[int]) -> None:
        """Count one more failed delivery attempt on each row."""
        if ids:
            if self._uncommitted(ids):  # rare: a failure before the row's commit
                await self.flush()
            await self._call(self._outbox_attempted, ids)

    async def outbox_dead_letter(self, rows: Sequence[OutboxRow], sink: str, reason: str) -> None:
        """Move undeliverable rows from the outbox to ``dead_letters`` in one transaction."""
        if rows:
            if self._uncommitted(r.id for r in rows):
                await self.flush()
            now = self._clock()
            await self._call(self._outbox_bury, rows, sink, reason, now)
            self._counters.inc(COMPONENT, "dead_letters", len(rows))

    async def outbox_depth(self, sink: str | None = None) -> int:
        """Outbox rows, committed, waiting for a commit or in a memory outbox, of one sink
        or of all."""
        # counted as the query is queued: a batch taken later commits after the query runs
        if sink is None:
            uncommitted = len(self._outbox)
            query = self.query("SELECT count(*) AS n FROM outbox")
            memory = sum(self.memory_depths().values())
        else:
            uncommitted = sum(1 for s, _, _ in self._outbox.values() if s == sink)
            query = self.query("SELECT count(*) AS n FROM outbox WHERE sink = ?", (sink,))
            memory = self._memory[sink].depth if sink in self._memory else 0
        rows = await query
        return int(rows[0]["n"]) + uncommitted + memory

    async def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Run a read-only query on the writer thread; rows as dicts."""
        return await self._call(self._query, sql, params)

    # ------------------------------------------------------------------ retention

    async def enforce_retention(self) -> int:
        """One retention pass now, in short jobs that batches interleave with; rows deleted."""
        retention = self.config.retention
        deleted = 0
        if retention.max_age is not None:
            cutoff = self._clock() - retention.max_age
            pos, last = await self._call(self._rowid_span, "readings")
            while pos is not None:
                n, pos = await self._retention_job(self._delete_expired, pos, last, cutoff)
                deleted += n
        if retention.max_rows is not None:
            deleted += await self._trim("readings", retention.max_rows)
        deleted += await self._trim("dead_letters", self.config.dead_letters_max_rows)
        if self.config.outbox.max_age is not None:
            cutoff = self._clock() - self.config.outbox.max_age
            if expired := await self._call(self._outbox_expire, cutoff):
                self._dropped("outbox_expired", expired)
        return deleted

    async def _trim(self, table: str, keep: int) -> int:
        """Delete the oldest inserted rows of ``table`` beyond ``keep``."""
        first_kept = await self._call(self._first_kept_rowid, table, keep)
        deleted = 0
        more = first_kept
        while more is not None:
            n, more = await self._retention_job(self._delete_before, table, more)
            deleted += n
        return deleted

    async def _retention_loop(self) -> None:
        while True:
            try:
                await self.enforce_retention()
            except sqlite3.Error as exc:
                self._counters.inc(COMPONENT, "write_errors")
                log.error("store: retention failed: %r", exc)
            await asyncio.sleep(self.config.retention.interval)

    async def _retention_job(self, fn: Callable[..., _Step], *args: Any) -> _Step:
        fut = self._submit(fn, *args)
        fut.add_done_callback(self._count_retention)  # counts even if we are cancelled
        return await asyncio.shield(fut)

    def _count_retention(self, fut: asyncio.Future[_Step]) -> None:
        if not fut.cancelled() and fut.exception() is None:
            self._counters.inc(COMPONENT, "retention_deleted", fut.result()[0])

    # ------------------------------------------------------------------ checkpoints

    async def checkpoint(self) -> None:
        """Copy the committed WAL pages into the database file now, on the checkpointer
        thread, without holding up commits (``run`` does it every ``checkpoint_interval``).
        If that leaves the WAL past ``WAL_RESTART_PAGES``, the writer starts it over between
        two commits, unless commits are backlogged: a writer short of CPU restarts slowly
        (72 ms on average in ``wal_watch``'s overload phase), and SQLite's backstop at
        ``CHECKPOINT_BACKSTOP_PAGES`` bounds the WAL meanwhile."""
        if self._checkpointer is not None:
            await asyncio.shield(self._checkpoint_call(self._checkpoint))
            stats = self.wal_stats
            if (
                stats.log > WAL_RESTART_PAGES
                and stats.behind <= WAL_RESTART_RESIDUE_PAGES
                and self._n_pending < self.config.batch_max
            ):
                await asyncio.shield(self._call(self._restart_wal))

    async def _checkpoint_loop(self) -> None:
        interval = self.config.checkpoint_interval or 1.0
        while True:
            await asyncio.sleep(interval)
            try:
                await self.checkpoint()
            except sqlite3.Error as exc:  # the writer's backstop checkpoints meanwhile
                log.warning("store: checkpoint failed: %r", exc)

    async def _checkpoint_call(self, fn: Callable[[], None]) -> None:
        if self._checkpointer is None:
            raise RuntimeError("store is not open")
        await asyncio.get_running_loop().run_in_executor(self._checkpointer, fn)

    async def _stop_checkpointer(self) -> None:
        if self._checkpointer is not None:
            try:
                await self._checkpoint_call(self._close_checkpointer)
            finally:
                self._checkpointer.shutdown(wait=False)
                self._checkpointer = None

    def _open_checkpointer(self) -> None:
        conn = sqlite3.connect(self.config.path, timeout=0)  # never waits for the writer
        conn.execute(f"PRAGMA synchronous = {self.config.synchronous.upper()}")
        self._ckpt_conn = conn

    def _close_checkpointer(self) -> None:
        if self._ckpt_conn is not None:
            self._ckpt_conn.close()
            self._ckpt_conn = None

    def _checkpoint(self) -> None:
        """Copy the WAL into the database file without blocking the writer (checkpointer
        thread). SQLite holds no GIL meanwhile."""
        conn = self._ckpt_conn
        if conn is None:
            return
        stats = self.wal_stats
        stats.turns += 1
        seen = -1
        for _ in range(CHECKPOINT_PASSES):
            # frames: the WAL's length when the pass began; commits may have added more since
            busy, frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            stats.passes += 1
            stats.log = frames
            stats.max_log = max(stats.max_log, frames)
            stats.behind = max(frames - copied, 0)
            if busy or copied < frames or frames <= 0:
                stats.busy += busy
                return  # a reader holds pages (next time), or the WAL is empty
            if frames == seen:  # nothing committed since the last pass: every page is copied
                # Start the WAL over, or it grows: without a busy handler this never waits
                # for a commit under way (it is then busy, and the next pass copies what that
                # commit adds before trying again).
                if conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()[0]:
                    stats.busy += 1
                    return
                stats.restarts += 1
                frames = -1
            seen = frames

    def _restart_wal(self) -> None:
        """Start a WAL the checkpointer could not restart over (writer thread, so no commit
        is under way; the checkpointer is idle, its turn over)."""
        conn = self._database().conn
        began = time.perf_counter()
        conn.execute(f"PRAGMA busy_timeout = {WAL_RESTART_WAIT_MS}")
        try:
            busy, frames, _ = conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
        finally:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        stats = self.wal_stats
        took = time.perf_counter() - began
        stats.writer_seconds += took
        stats.writer_seconds_max = max(stats.writer_seconds_max, took)
        stats.writer_restarts += 1
        stats.writer_busy += busy
        stats.log = 0 if not busy else frames

    # ------------------------------------------------------------------ thread hop

    def _submit(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        if self._executor is None:
            raise RuntimeError("store is not open")
        return asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await self._submit(fn, *args)

    # ------------------------------------------------------------------ writer thread only

    def _database(self) -> Database:
        if self._db is None:
            raise RuntimeError("store is not open")
        return self._db

    def _open_db(self) -> None:
        conn = sqlite3.connect(self.config.path)
        self._var_limit = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        db = Database(conn, execute_plugins=False)
        try:
            db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            db.enable_wal()
            db.execute(f"PRAGMA synchronous = {self.config.synchronous.upper()}")
            if self.config.checkpoint_interval is not None:
                db.execute(f"PRAGMA wal_autocheckpoint = {CHECKPOINT_BACKSTOP_PAGES}")
            # a WAL that grew past this is cut back when it starts over
            page = int(db.execute("PRAGMA page_size").fetchone()[0])
            db.execute(f"PRAGMA journal_size_limit = {WAL_RESTART_PAGES * page}")
            create_schema(db)
            self._db = db
            self._outbox_totals()
        except BaseException:
            self._db = None
            db.close()
            raise
        self._db = db

    def _close_db(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _write_batch(self, batch: _Batch) -> _Written:
        db = self._database()
        # restored when the transaction rolls back
        totals = self._ob_rows, self._ob_bytes
        try:
            with db.atomic():
                return self._insert(db.conn, batch, isolate=False)
        except sqlite3.OperationalError:
            self._ob_rows, self._ob_bytes = totals
            raise
        except _ITEM_ERRORS:
            self._ob_rows, self._ob_bytes = totals
            try:
                with db.atomic():
                    return self._insert(db.conn, batch, isolate=True)
            except BaseException:
                self._ob_rows, self._ob_bytes = totals
                raise

    def _insert(self, conn: sqlite3.Connection, batch: _Batch, *, isolate: bool) -> _Written:
        """Insert every kind of item; with ``isolate`` row by row, skipping bad rows."""
        run = _insert_each if isolate else partial(_insert_many, self._chunk_rows, self._var_limit)
        readings, bad_readings = run(conn, _READINGS, _reading_row, batch.readings)
        rejected = bad_readings
        _, bad = run(conn, _AGGREGATES, _aggregate_row, batch.aggregates)
        rejected += bad
        _, bad = run(conn, _ALERTS, _alert_row, batch.alerts)
        rejected += bad
        dead_letters, bad = run(conn, _DEAD_LETTERS, _same_row, batch.dead_letters)
        rejected += bad
        numbered = [
            (row.id, sink, row.msg_id, row.topic, row.payload, row.qos, created, row.priority)
            for sink, row, created in batch.outbox.values()
        ]
        if isolate:
            numbered = [row for row in numbered if _insert_each(conn, _OUTBOX, _same_row, [row])[0]]
            rejected += len(batch.outbox) - len(numbered)
        elif numbered:  # ids are explicit: each row keeps the id it was numbered with
            insert_rows(conn, _OUTBOX, numbered, _OUTBOX.chunk(self._chunk_rows, self._var_limit))
        if numbered:
            self._ob_rows += len(numbered)
            self._ob_bytes += sum(len(row[4]) for row in numbered)
        if batch.settled:
            self._outbox_delete(batch.settled)
        outbox_dropped = self._enforce_outbox(conn)
        duplicates = len(batch.readings) - readings - bad_readings
        return _Written(readings, duplicates, dead_letters, rejected, outbox_dropped)

    def _outbox_take(
        self, sink: str, limit: int, acked: Sequence[int], upto: int
    ) -> list[OutboxRow]:
        if acked:
            self._outbox_ack(acked)
        cursor = self._database().execute(
            "SELECT id, msg_id, topic, payload, qos, attempts, priority FROM outbox"
            " WHERE sink = ? AND id <= ? ORDER BY priority, id LIMIT ?",
            (sink, upto, limit),
        )
        rows = [OutboxRow(*row) for row in cursor]
        self._taken[sink] = frozenset(r.id for r in rows)  # overflow spares rows in flight
        return rows

    def _outbox_bury(self, rows: Sequence[OutboxRow], sink: str, reason: str, now: float) -> None:
        db = self._database()
        with db.atomic():
            insert_rows(
                db.conn,
                _DEAD_LETTERS,
                (
                    (
                        sink,
                        now,
                        reason,
                        f"{r.msg_id} on {r.topic} after {r.attempts} attempts",
                        r.payload[:DEAD_LETTER_RAW_MAX],
                    )
                    for r in rows
                ),
                _DEAD_LETTERS.chunk(self._chunk_rows, self._var_limit),
            )
            self._outbox_delete([r.id for r in rows])

    def _outbox_ack(self, ids: Sequence[int]) -> None:
        db = self._database()
        with db.atomic():
            self._outbox_delete(ids)

    def _outbox_delete(self, ids: Sequence[int]) -> int:
        """Delete rows by id, keeping the outbox totals; returns rows deleted."""
        deleted, size = delete_outbox(self._database().conn, ids, exact=not self._chunk_rows)
        self._ob_rows -= deleted
        self._ob_bytes -= size
        return deleted

    def _outbox_expire(self, cutoff: float) -> int:
        db = self._database()
        with db.atomic():
            ids = [r[0] for r in db.execute("SELECT id FROM outbox WHERE created < ?", (cutoff,))]
            return self._outbox_delete(ids)

    def _outbox_totals(self) -> None:
        db = self._database()
        n, size, last = db.execute(
            "SELECT count(*), coalesce(sum(length(payload)), 0), coalesce(max(id), 0) FROM outbox"
        ).fetchone()
        self._ob_rows, self._ob_bytes = int(n), int(size)
        # AUTOINCREMENT's high-water mark: an id is never reused, even after its row left
        seq = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
        self._ob_next_id = max(int(last), int(seq[0]) if seq else 0) + 1

    def _enforce_outbox(self, conn: sqlite3.Connection) -> int:
        """Apply the overflow policy inside the batch's transaction; rows dropped."""
        lim = self.config.outbox
        over_rows = self._ob_rows - lim.max_rows if lim.max_rows is not None else 0
        over_bytes = self._ob_bytes - lim.max_bytes if lim.max_bytes is not None else 0
        if over_rows <= 0 and over_bytes <= 0:
            return 0
        order = "priority DESC, id" if lim.overflow == "drop_oldest" else "priority = 0, id DESC"
        in_flight = frozenset().union(*self._taken.values())
        dropped = skip = 0
        while over_rows > 0 or over_bytes > 0:
            chunk = max(over_rows, 256)
            ids: list[int] = []
            for row_id, size in conn.execute(
                f"SELECT id, length(payload) FROM outbox ORDER BY {order} LIMIT ? OFFSET ?",
                (chunk, skip),
            ):
                if over_rows <= 0 and over_bytes <= 0:
                    break
                if row_id in in_flight:
                    skip += 1
                    continue
                ids.append(row_id)
                over_rows -= 1
                over_bytes -= size or 0
            if not ids:
                break
            dropped += self._outbox_delete(ids)
        return dropped

    def _outbox_attempted(self, ids: Sequence[int]) -> None:
        db = self._database()
        with db.atomic():
            if self._chunk_rows:
                count_attempt(db.conn, ids)
            else:  # the row-by-row shape, kept to compare
                sql = "UPDATE outbox SET attempts = attempts + 1 WHERE id = ?"
                db.conn.executemany(sql, ((i,) for i in ids))

    def _query(self, sql: str, params: Sequence[Any]) -> list[dict[str, Any]]:
        return list(self._database().query(sql, params))

    def _rowid_span(self, table: str) -> tuple[int | None, int]:
        """First and last rowid of ``table`` (None, 0 when empty); two O(log n) lookups."""
        db = self._database()
        first = db.execute(f"SELECT rowid FROM {table} ORDER BY rowid LIMIT 1").fetchone()
        last = db.execute(f"SELECT rowid FROM {table} ORDER BY rowid DESC LIMIT 1").fetchone()
        if first is None or last is None:
            return None, 0
        return int(first[0]), int(last[0])

    def _delete_expired(self, lo: int, last: int, cutoff: float) -> _Step:
        """Delete up to RETENTION_DELETE_ROWS readings with ``ts < cutoff`` and a rowid in
        ``[lo, lo + RETENTION_SCAN_ROWS)``; return (deleted, next ``lo`` or None when past
        ``last``).

        Sweeping rowid spans keeps each job short without an index on ``ts`` (which would cost
        every insert) and still finds late-arriving old readings anywhere in the table.
        """
        hi = lo + RETENTION_SCAN_ROWS
        deleted = self._delete_where(
            "readings",
            "rowid IN (SELECT rowid FROM readings WHERE rowid >= ? AND rowid < ? AND ts < ?"
            " LIMIT ?)",
            (lo, hi, cutoff, RETENTION_DELETE_ROWS),
        )
        if deleted == RETENTION_DELETE_ROWS:
            return deleted, lo  # the span may hold more
        row = (
            self._database()
            .execute("SELECT rowid FROM readings WHERE rowid >= ? ORDER BY rowid LIMIT 1", (hi,))
            .fetchone()
        )
        if row is None or row[0] > last:
            return deleted, None
        return deleted, int(row[0])  # skip gaps in the rowids

    def _first_kept_rowid(self, table: str, keep: int) -> int | None:
        """Rowid of the ``keep``-th newest row of ``table``, or None if it has fewer rows."""
        row = (
            self._database()
            .execute(f"SELECT rowid FROM {table} ORDER BY rowid DESC LIMIT 1 OFFSET ?", (keep - 1,))
            .fetchone()
        )
        return None if row is None else int(row[0])

    def _delete_before(self, table: str, rowid: int) -> _Step:
        """Delete up to RETENTION_DELETE_ROWS of the oldest rows with a rowid below ``rowid``;
        return (deleted, ``rowid`` again if there may be more, else None)."""
        deleted = self._delete_where(
            table,
            f"rowid IN (SELECT rowid FROM {table} WHERE rowid < ? ORDER BY rowid LIMIT ?)",
            (rowid, RETENTION_DELETE_ROWS),
        )
        return deleted, (rowid if deleted == RETENTION_DELETE_ROWS else None)

    def _delete_where(self, table: str, where: str, args: Sequence[Any]) -> int:
        db = self._database()
        before = db.conn.total_changes
        db.table(table).delete_where(where, args)
        return db.conn.total_changes - before


def _insert_many(
    chunk_rows: int,
    var_limit: int,
    conn: sqlite3.Connection,
    ins: Insert,
    to_row: Callable[[Any], Sequence[Any]],
    items: list[Any],
) -> tuple[int, int]:
    """All rows, ``chunk_rows`` per statement; returns (rows changed, 0)."""
    if not items:
        return 0, 0
    return insert_rows(conn, ins, map(to_row, items), ins.chunk(chunk_rows, var_limit)), 0


def _insert_each(
    conn: sqlite3.Connection, ins: Insert, to_row: Callable[[Any], Sequence[Any]], items: list[Any]
) -> tuple[int, int]:
    """Row by row, skipping rows SQLite refuses; returns (rows changed, rows rejected)."""
    changed = rejected = 0
    for item in items:
        try:
            changed += conn.execute(ins.one, to_row(item)).rowcount
        except _ITEM_ERRORS as exc:
            if not rejected:
                log.warning("store: dropping an item (%s): %r", ins.head.split("(")[0].strip(), exc)
            rejected += 1
    return changed, rejected
