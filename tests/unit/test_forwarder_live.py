"""A caught-up sink takes each commit's rows from the store's hand-over: same order (priority,
then id), same at-least-once delivery, and the outbox still empties; after a failure or an
overflow drop it reads SQLite again and loses nothing."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import pytest

from gateway.counters import Counters
from gateway.sinks.forwarder import Forwarder, Outbox, Outcome
from gateway.sinks.resilience import Backoff
from gateway.store.config import OutboxLimits, StoreConfig
from gateway.store.store import (
    PRIORITY_AGGREGATE,
    PRIORITY_ALERT,
    PRIORITY_READING,
    OutboxRow,
    Store,
)


class Upstream:
    """An in-memory publisher: records what it is sent; can fail or hold a batch."""

    broker_max_packet: int | None = None

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.fail_batches = 0
        self.hold: asyncio.Event | None = None
        self.holding = asyncio.Event()
        self.held = 0  # rounds waiting on hold
        self.changed = asyncio.Event()
        self._connected = False

    @property
    def connected(self) -> bool:
        return self._connected

    async def connect(self) -> None:
        self._connected = True

    async def close(self) -> None:
        self._connected = False

    def send(self, rows: Sequence[OutboxRow]) -> asyncio.Future[list[Outcome]]:
        return asyncio.ensure_future(self.publish(list(rows)))

    async def publish(self, rows: list[OutboxRow]) -> list[Outcome]:
        if self.hold is not None:
            self.held += 1
            self.holding.set()
            await self.hold.wait()
            self.hold = None
        if self.fail_batches:
            self.fail_batches -= 1
            return [Outcome.UNCONFIRMED] * len(rows)
        self.sent += [r.msg_id for r in rows]
        self.changed.set()
        return [Outcome.ACKED] * len(rows)

    async def wait_for(self, done: Callable[[list[str]], bool]) -> None:
        async with asyncio.timeout(10):
            while not done(self.sent):
                self.changed.clear()
                await self.changed.wait()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    config = StoreConfig(path=tmp_path / "gw.db", outbox=OutboxLimits(max_rows=50))
    async with Store(config, Counters()) as s:
        task = asyncio.create_task(s.run())
        yield s
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.asynccontextmanager
async def running(forwarder: Forwarder) -> AsyncIterator[None]:
    """The forwarder's drain loop as a task, cancelled and closed on exit."""
    task = asyncio.create_task(forwarder.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await forwarder.close()


@contextlib.asynccontextmanager
async def forwarding(
    store: Outbox, upstream: Upstream, batch: int = 10, counters: Counters | None = None
) -> AsyncIterator[Forwarder]:
    """A running forwarder of sink ``up`` (the SQLite outbox, or a memory outbox)."""
    forwarder = Forwarder(
        "up",
        store,
        upstream,
        counters or Counters(),
        batch=batch,
        backoff=Backoff(0.01, 0.02),
        breaker_failures=100,
        breaker_cooldown=0.01,
    )
    async with running(forwarder):
        yield forwarder


def add(store: Store, *ids: str, priority: int = PRIORITY_READING) -> None:
    for msg_id in ids:
        store.add_outbox("up", msg_id, "t", msg_id.encode(), 1, priority)


async def test_rows_committed_while_live_go_alerts_first_and_leave_the_outbox(
    store: Store,
) -> None:
    upstream = Upstream()
    async with forwarding(store, upstream) as forwarder:
        add(store, "r1", "r2")
        await upstream.wait_for(lambda sent: len(sent) == 2)
        add(store, "r3", "r4")
        add(store, "a1", priority=PRIORITY_ALERT)  # same commit: the alert goes first
        await upstream.wait_for(lambda sent: len(sent) == 5)
        assert upstream.sent == ["r1", "r2", "a1", "r3", "r4"]
        await forwarder.drain(5)
    assert await store.outbox_depth("up") == 0


async def test_a_failure_while_live_resends_from_the_outbox_and_loses_nothing(
    store: Store,
) -> None:
    upstream = Upstream()
    async with forwarding(store, upstream) as forwarder:
        add(store, "r1")
        await upstream.wait_for(lambda sent: sent == ["r1"])
        upstream.fail_batches = 2
        add(store, "r2", "r3")
        add(store, "r4")
        await upstream.wait_for(lambda sent: "r4" in sent)
        assert await forwarder.drain(5)
    assert upstream.sent == ["r1", "r2", "r3", "r4"]
    assert await store.outbox_depth("up") == 0


async def test_a_backlog_bigger_than_a_batch_is_read_from_sqlite_then_live(
    store: Store,
) -> None:
    add(store, *(f"old{i}" for i in range(25)))
    await store.flush()
    upstream = Upstream()
    async with forwarding(store, upstream, batch=10) as forwarder:
        await upstream.wait_for(lambda sent: len(sent) == 25)
        add(store, "new")
        await upstream.wait_for(lambda sent: "new" in sent)
        assert await forwarder.drain(5)
    assert upstream.sent == [f"old{i}" for i in range(25)] + ["new"]


@contextlib.asynccontextmanager
async def lazy_store(tmp_path: Path) -> AsyncIterator[Store]:
    """A running store that commits forwarded readings only when asked (or by a waiter)."""
    async with Store(StoreConfig(path=tmp_path / "gw.db", batch_interval=3600), Counters()) as s:
        task = asyncio.create_task(s.run())
        try:
            yield s
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def ever_written(store: Store) -> int:
    """The highest outbox id ever inserted (AUTOINCREMENT's mark), 0 if none ever was."""
    rows = await store.query("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'")
    return int(rows[0]["seq"]) if rows else 0


async def test_rows_acknowledged_before_their_commit_are_never_written(tmp_path: Path) -> None:
    async with lazy_store(tmp_path) as store:
        upstream = Upstream()
        async with forwarding(store, upstream) as forwarder:
            add(store, *(f"r{i}" for i in range(30)))
            await upstream.wait_for(lambda sent: len(sent) == 30)
            assert await forwarder.drain(5)
            await store.flush()
            assert await ever_written(store) == 0
            # a row still waiting for its acknowledgement is committed with the next batch
            upstream.hold = asyncio.Event()
            add(store, "slow")
            async with asyncio.timeout(10):
                await upstream.holding.wait()
            await store.flush()
            assert await count_outbox(store) == 1
            upstream.hold.set()
            assert await forwarder.drain(5)
        assert upstream.sent == [*(f"r{i}" for i in range(30)), "slow"]
        assert await count_outbox(store) == 0


async def count_outbox(store: Store) -> int:
    return int((await store.query("SELECT count(*) AS n FROM outbox"))[0]["n"])


async def test_a_read_returns_rows_committed_ahead_and_rows_waiting_for_a_commit(
    tmp_path: Path,
) -> None:
    async with Store(StoreConfig(path=tmp_path / "gw.db"), Counters()) as store:  # no flusher
        add(store, "r1")  # a forwarded reading: waits for the readings' commit
        add(store, "a1", priority=PRIORITY_AGGREGATE)  # newer, committed ahead of it
        await store._commit_ahead()  # what the flusher does when windows close
        assert await count_outbox(store) == 1
        upstream = Upstream()
        async with forwarding(store, upstream) as forwarder:  # starts by reading
            await upstream.wait_for(lambda sent: len(sent) == 2)
            flusher = asyncio.create_task(store.run())
            try:
                add(store, "r2")  # live now
                await upstream.wait_for(lambda sent: len(sent) == 3)
                assert await forwarder.drain(5)
            finally:
                flusher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await flusher
        assert upstream.sent == ["a1", "r1", "r2"]
        assert await count_outbox(store) == 0


async def test_rows_the_overflow_policy_drops_while_live_are_not_sent(store: Store) -> None:
    """Rows the policy drops while they wait in the forwarder's queue are not sent; rows it
    drops that are already on their way (handed over before their commit) still arrive."""
    upstream = Upstream()
    async with forwarding(store, upstream, batch=1) as forwarder:  # window: 4 rows in flight
        add(store, "first")
        await upstream.wait_for(lambda sent: sent == ["first"])
        upstream.hold = asyncio.Event()
        add(store, "held")
        add(store, *(f"r{i}" for i in range(60)))  # max_rows 50: the 11 oldest rows go
        async with asyncio.timeout(10):
            while upstream.held < 4:  # "held", r0, r1, r2 in flight; the others queue up
                upstream.holding.clear()
                await upstream.holding.wait()
        await store.flush()  # drops "held" and r0-r9, though four are on their way already
        upstream.hold.set()
        assert await forwarder.drain(5)
    assert upstream.sent == ["first", "held", "r0", "r1", "r2", *(f"r{i}" for i in range(10, 60))]


# ------------------------------------------------------------------ pipelined rounds


class Broker:
    """A publisher whose PUBACKs the test gives: each round waits until answered."""

    broker_max_packet: int | None = None

    def __init__(self) -> None:
        self.rounds: list[tuple[list[str], asyncio.Future[list[Outcome]]]] = []
        self.sent = asyncio.Event()
        self.connected = False

    async def connect(self) -> None:
        self.connected = True

    async def close(self) -> None:  # like the MQTT publisher: what is open is unconfirmed
        self.connected = False
        for rows, future in self.rounds:
            if not future.done():
                future.set_result([Outcome.UNCONFIRMED] * len(rows))

    def send(self, rows: Sequence[OutboxRow]) -> asyncio.Future[list[Outcome]]:
        future: asyncio.Future[list[Outcome]] = asyncio.get_running_loop().create_future()
        self.rounds.append(([r.msg_id for r in rows], future))
        self.sent.set()
        return future

    async def round(self, n: int) -> list[str]:
        """The ``n``-th round sent (0-based), once it is."""
        async with asyncio.timeout(10):
            while len(self.rounds) <= n:
                self.sent.clear()
                await self.sent.wait()
        return self.rounds[n][0]

    def answer(self, n: int, outcomes: dict[str, Outcome] | None = None) -> None:
        """PUBACK every row of round ``n``: success unless ``outcomes`` says otherwise."""
        rows, future = self.rounds[n]
        future.set_result([(outcomes or {}).get(r, Outcome.ACKED) for r in rows])

    def published(self) -> list[str]:
        return [r for rows, _ in self.rounds for r in rows]


@contextlib.asynccontextmanager
async def pipelined(
    store: Store, broker: Broker, counters: Counters, batch: int = 3, window: int = 6
) -> AsyncIterator[Forwarder]:
    forwarder = Forwarder(
        "up",
        store,
        broker,
        counters,
        batch=batch,
        window=window,
        backoff=Backoff(0.001, 0.002),
        breaker_failures=100,
        breaker_cooldown=0.01,
        max_attempts=2,
    )
    async with running(forwarder):
        yield forwarder


async def spin() -> None:
    """Let every task run until it waits on something outside the loop's ready queue."""
    for _ in range(50):
        await asyncio.sleep(0)


async def outbox(store: Store) -> list[str]:
    await store.flush()
    return [r["msg_id"] for r in await store.query("SELECT msg_id FROM outbox ORDER BY id")]


async def test_rounds_go_out_before_earlier_ones_are_acknowledged_up_to_the_window(
    store: Store,
) -> None:
    broker, counters = Broker(), Counters()
    async with pipelined(store, broker, counters, batch=3, window=6) as forwarder:
        add(store, "r1", "r2", "r3")
        assert await broker.round(0) == ["r1", "r2", "r3"]
        add(store, "r4", "r5", "r6")
        assert await broker.round(1) == ["r4", "r5", "r6"]  # round 0 still unanswered
        add(store, "r7")
        await store.flush()
        await spin()
        assert len(broker.rounds) == 2  # 6 rows in flight: the window is full
        assert await outbox(store) == [f"r{i}" for i in range(1, 8)]  # nothing acked yet
        broker.answer(0)
        assert await broker.round(2) == ["r7"]
        broker.answer(1)
        broker.answer(2)
        assert await forwarder.drain(5)
    assert broker.published() == [f"r{i}" for i in range(1, 8)]
    assert (counters.get("up", "published"), counters.get("up", "acked")) == (7, 7)
    assert await store.outbox_depth("up") == 0


async def test_a_refusal_lets_later_rounds_deliver_and_retries_the_culprit_alone(
    store: Store,
) -> None:
    broker, counters = Broker(), Counters()
    async with pipelined(store, broker, counters) as forwarder:
        add(store, "r1", "r2", "r3")
        await broker.round(0)
        add(store, "r4", "r5", "r6")
        await broker.round(1)
        broker.answer(0, {"r2": Outcome.REFUSED})
        await spin()
        assert len(broker.rounds) == 2  # the pipeline stopped: round 1 is waited for
        broker.answer(1)
        assert await broker.round(2) == ["r2"]  # alone, after the backoff
        assert await outbox(store) == ["r2"]  # the acked rows of both rounds are gone
        broker.answer(2, {"r2": Outcome.REFUSED})  # its second refusal: max_attempts 2
        assert await forwarder.drain(5)
    assert broker.published() == ["r1", "r2", "r3", "r4", "r5", "r6", "r2"]
    assert [counters.get("up", k) for k in ("published", "acked", "refused", "retries")] == [
        7,
        5,
        2,
        1,
    ]
    assert counters.get("up", "dead_undeliverable") == 1
    dead = await store.query("SELECT detail FROM dead_letters")
    assert [d["detail"] for d in dead] == ["r2 on t after 1 attempts"]


async def test_a_dropped_connection_charges_only_the_oldest_unconfirmed_row(
    store: Store,
) -> None:
    broker, counters = Broker(), Counters()
    async with pipelined(store, broker, counters) as forwarder:
        add(store, "r1", "r2", "r3")
        await broker.round(0)
        add(store, "r4", "r5", "r6")
        await broker.round(1)
        broker.answer(0, {"r3": Outcome.UNCONFIRMED})  # the connection dropped after r2
        retry = await broker.round(2)
        assert retry == ["r3"]  # the suspect, alone; round 1 was failed by the close
        attempts = await store.query("SELECT msg_id, attempts FROM outbox ORDER BY id")
        assert attempts == [
            {"msg_id": "r3", "attempts": 1},
            {"msg_id": "r4", "attempts": 0},
            {"msg_id": "r5", "attempts": 0},
            {"msg_id": "r6", "attempts": 0},
        ]
        broker.answer(2)
        assert await broker.round(3) == ["r4", "r5", "r6"]
        broker.answer(3)
        assert await forwarder.drain(5)
    assert broker.published() == ["r1", "r2", "r3", "r4", "r5", "r6", "r3", "r4", "r5", "r6"]
    assert [counters.get("up", k) for k in ("published", "acked", "retries", "failures")] == [
        10,
        6,
        4,
        1,
    ]
    assert await store.outbox_depth("up") == 0


async def test_catching_up_reads_past_the_rows_in_flight(store: Store) -> None:
    add(store, *(f"old{i}" for i in range(7)))
    await store.flush()
    broker, counters = Broker(), Counters()
    async with pipelined(store, broker, counters, batch=3, window=6) as forwarder:
        assert await broker.round(0) == ["old0", "old1", "old2"]
        assert await broker.round(1) == ["old3", "old4", "old5"]  # not old0 again
        broker.answer(0)
        assert await broker.round(2) == ["old6"]
        broker.answer(1)
        broker.answer(2)
        assert await forwarder.drain(5)
    assert broker.published() == [f"old{i}" for i in range(7)]
    assert counters.get("up", "retries") == 0
