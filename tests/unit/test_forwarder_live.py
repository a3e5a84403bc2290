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
from gateway.sinks.forwarder import Forwarder, Outcome
from gateway.sinks.resilience import Backoff
from gateway.store.config import OutboxLimits, StoreConfig
from gateway.store.store import PRIORITY_ALERT, PRIORITY_READING, OutboxRow, Store


class Upstream:
    """An in-memory publisher: records what it is sent; can fail or hold a batch."""

    broker_max_packet: int | None = None

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.fail_batches = 0
        self.hold: asyncio.Event | None = None
        self.holding = asyncio.Event()
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
async def forwarding(store: Store, upstream: Upstream, batch: int = 10) -> AsyncIterator[Forwarder]:
    forwarder = Forwarder(
        "up",
        store,
        upstream,
        Counters(),
        batch=batch,
        backoff=Backoff(0.01, 0.02),
        breaker_failures=100,
        breaker_cooldown=0.01,
    )
    task = asyncio.create_task(forwarder.run())
    try:
        yield forwarder
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await forwarder.close()


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


async def test_rows_the_overflow_policy_drops_while_live_are_not_sent(store: Store) -> None:
    upstream = Upstream()
    async with forwarding(store, upstream, batch=100) as forwarder:
        add(store, "first")
        await upstream.wait_for(lambda sent: sent == ["first"])
        upstream.hold = asyncio.Event()
        add(store, "held")
        async with asyncio.timeout(10):
            await upstream.holding.wait()  # "held" is in flight; the next rows queue up
        add(store, *(f"r{i}" for i in range(60)))  # max_rows 50: the 11 oldest rows go,
        await store.flush()  # "held" among them, though it is on its way already
        upstream.hold.set()
        assert await forwarder.drain(5)
    assert upstream.sent == ["first", "held", *(f"r{i}" for i in range(10, 60))]
