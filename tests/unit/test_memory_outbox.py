"""A sink with ``outbox: memory``: the same forwarder, rows kept in memory instead of SQLite.
Same order (priority, then id) and retries; nothing touches the SQLite outbox while the
process runs; a stop writes what is left to SQLite and the next start takes it back."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.counters import Counters
from gateway.sinks.memory_outbox import MemoryOutbox
from gateway.status import status_line
from gateway.store.config import StoreConfig
from gateway.store.store import PRIORITY_ALERT, PRIORITY_READING, Store
from tests.unit.test_forwarder_live import Upstream, forwarding


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with Store(StoreConfig(path=tmp_path / "gw.db"), Counters()) as s:
        yield s


def add(store: Store, *ids: str, priority: int = PRIORITY_READING) -> None:
    """What a router does: the store sends a memory sink's rows to its memory outbox."""
    for msg_id in ids:
        store.add_outbox("up", msg_id, "t", msg_id.encode(), 1, priority)


async def sqlite_outbox(store: Store) -> list[str]:
    return [r["msg_id"] for r in await store.query("SELECT msg_id FROM outbox ORDER BY id")]


async def test_rows_go_out_alerts_first_without_touching_the_sqlite_outbox(store: Store) -> None:
    counters, upstream = Counters(), Upstream()
    memory = MemoryOutbox("up", store, counters, max_rows=1000)
    await memory.open()
    async with forwarding(memory, upstream, counters=counters) as forwarder:
        add(store, *(f"r{i}" for i in range(25)))
        add(store, "a1", priority=PRIORITY_ALERT)  # same loop turn: the alert goes first
        await upstream.wait_for(lambda sent: len(sent) == 26)
        add(store, "r25")
        assert await forwarder.drain(5)
    assert upstream.sent[0] == "a1"
    assert upstream.sent[1:] == [f"r{i}" for i in range(26)]
    assert memory.depth == 0
    assert store.pending == 0  # nothing was queued for SQLite
    assert await sqlite_outbox(store) == []
    assert counters.get("up", "acked") == 27


async def test_unacknowledged_rounds_are_sent_again_and_nothing_is_lost(store: Store) -> None:
    counters, upstream = Counters(), Upstream()
    memory = MemoryOutbox("up", store, counters, max_rows=1000)
    await memory.open()
    upstream.fail_batches = 2  # two rounds lost with their connection
    async with forwarding(memory, upstream, counters=counters) as forwarder:
        add(store, *(f"r{i}" for i in range(30)))
        assert await forwarder.drain(5)
    # later rounds in flight were acknowledged meanwhile (pipelining): every row arrives
    assert set(upstream.sent) == {f"r{i}" for i in range(30)}
    assert memory.depth == 0
    assert counters.get("up", "retries") >= 1


async def test_over_max_rows_the_oldest_readings_are_dropped_and_alerts_kept(
    store: Store,
) -> None:
    counters = Counters()
    raised: list[tuple[str, int]] = []
    store.on_first_drop = lambda counter, n: raised.append((counter, n))
    memory = MemoryOutbox("up", store, counters, max_rows=10)
    await memory.open()
    add(store, "a1", priority=PRIORITY_ALERT)
    add(store, *(f"r{i}" for i in range(12)))
    rows = await memory.outbox_take("up", 100)
    # each time it passes 10 rows, the excess and a tenth of the limit go: 2 rows, twice
    assert [r.msg_id for r in rows] == ["a1"] + [f"r{i}" for i in range(4, 12)]
    assert counters.get("up", "memory_dropped") == 4
    assert memory.outbox_epoch == 2  # a forwarder holding handed-over rows reads again
    assert raised == [("up.memory_dropped", 2)]  # the first drop raises the overflow alert
    assert "dropped by policy: up memory_dropped 4" in status_line(counters.snapshot(), {})


async def test_a_stop_writes_what_is_left_to_sqlite_and_the_next_start_sends_it_first(
    store: Store,
) -> None:
    counters = Counters()
    memory = MemoryOutbox("up", store, counters, max_rows=1000)
    await memory.open()
    add(store, "r0", "r1")
    add(store, "a0", priority=PRIORITY_ALERT)
    assert memory.close() == 3
    await store.flush()
    assert sorted(await sqlite_outbox(store)) == ["a0", "r0", "r1"]
    add(store, "r2")  # closed: the sink's rows go to SQLite again
    await store.flush()

    upstream = Upstream()
    again = MemoryOutbox("up", store, counters, max_rows=1000)
    assert await again.open() == 4
    assert await sqlite_outbox(store) == []
    async with forwarding(again, upstream, counters=counters) as forwarder:
        add(store, "r3")
        assert await forwarder.drain(5)
    assert upstream.sent == ["a0", "r0", "r1", "r2", "r3"]


async def test_a_memory_outbox_takes_no_more_than_max_rows_from_sqlite(store: Store) -> None:
    for i in range(7):
        store.add_outbox("up", f"r{i}", "t", b"x", 1, PRIORITY_READING)
    await store.flush()
    memory = MemoryOutbox("up", store, Counters(), max_rows=5)
    assert await memory.open() == 5
    assert await sqlite_outbox(store) == ["r5", "r6"]
    assert await store.outbox_depth("up") == 7  # both places count


async def test_undeliverable_rows_become_dead_letters_in_the_store(store: Store) -> None:
    memory = MemoryOutbox("up", store, Counters(), max_rows=100)
    await memory.open()
    add(store, "big")
    rows = await memory.outbox_take("up", 10)
    await memory.outbox_dead_letter(rows, "up", "too_large")
    await store.flush()
    assert memory.depth == 0
    dead = await store.query("SELECT source, reason, detail, raw FROM dead_letters")
    assert dead == [
        {
            "source": "up",
            "reason": "too_large",
            "detail": "big on t after 0 attempts",
            "raw": b"big",
        }
    ]


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_oldest_age_is_how_long_the_oldest_waiting_row_has_waited(store: Store) -> None:
    mono = Clock(100.0)
    memory = MemoryOutbox("up", store, Counters(), max_rows=1000, monotonic=mono)
    await memory.open()
    assert memory.oldest_age == 0.0
    add(store, "r0", "r1")
    await asyncio.sleep(0)  # the loop turn that hands them over notes their time
    mono.now = 100.5
    add(store, "r2")  # within a second of r0's note: known to be no older than r0
    await asyncio.sleep(0)
    mono.now = 101.25
    add(store, "r3")
    await asyncio.sleep(0)
    mono.now = 105.0
    assert memory.oldest_age == 5.0
    rows = await memory.outbox_take("up", 10)
    memory.outbox_settled([r.id for r in rows[:3]])  # r0..r2 delivered
    assert memory.oldest_age == 3.75  # r3's
    memory.outbox_settled([rows[3].id])
    assert memory.oldest_age == 0.0
    mono.now = 106.0
    add(store, "r4")
    await asyncio.sleep(0)
    mono.now = 106.5
    assert memory.oldest_age == 0.5


async def test_adopted_rows_keep_their_age_from_the_sqlite_outbox(store: Store) -> None:
    wall, mono = Clock(1_700_000_100.0), Clock(50.0)
    store.add_outbox("up", "old", "t", b"x", 1, PRIORITY_READING)  # left by a durable sink
    await store.flush()
    created = (await store.query("SELECT created FROM outbox"))[0]["created"]
    wall.now = created + 30.0
    memory = MemoryOutbox("up", store, Counters(), max_rows=1000, clock=wall, monotonic=mono)
    assert await memory.open() == 1
    assert memory.oldest_age == pytest.approx(30.0)
    assert store.memory_ages() == {"up": pytest.approx(30.0)}


async def test_a_stop_and_a_start_keep_the_rows_ages(store: Store) -> None:
    """A reload moves the rows to SQLite and back: they stay as old as they are, for
    ``oldest_age`` and for the outbox's ``max_age``."""
    wall, mono = Clock(1_700_000_000.0), Clock(50.0)
    memory = MemoryOutbox("up", store, Counters(), max_rows=1000, clock=wall, monotonic=mono)
    await memory.open()
    add(store, "r0")
    await asyncio.sleep(0)  # handed over: its time noted
    wall.now, mono.now = 1_700_000_020.0, 70.0
    add(store, "r1")  # not handed over yet at the stop: queued now
    assert memory.oldest_age == 20.0
    assert memory.close() == 2
    await store.flush()
    rows = await store.query("SELECT msg_id, created FROM outbox ORDER BY id")
    assert [(r["msg_id"], r["created"]) for r in rows] == [
        ("r0", pytest.approx(1_700_000_000.0, abs=1e-3)),
        ("r1", pytest.approx(1_700_000_020.0, abs=1e-3)),
    ]
    wall.now, mono.now = 1_700_000_025.0, 500.0
    again = MemoryOutbox("up", store, Counters(), max_rows=1000, clock=wall, monotonic=mono)
    assert await again.open() == 2
    assert again.oldest_age == pytest.approx(25.0)


async def test_rows_taken_from_sqlite_go_back_each_as_old_as_it_is(store: Store) -> None:
    for msg_id in ("r0", "r1"):
        store.add_outbox("up", msg_id, "t", b"x", 1, PRIORITY_READING)
    await store.flush()
    created = {r["msg_id"]: r["created"] for r in await store.query("SELECT * FROM outbox")}
    with sqlite3.connect(store.config.path, timeout=5) as db:  # r0 queued 30 s earlier
        db.execute("UPDATE outbox SET created = created - 30 WHERE msg_id = 'r0'")
    db.close()
    wall, mono = Clock(created["r1"] + 5), Clock(50.0)
    memory = MemoryOutbox("up", store, Counters(), max_rows=1000, clock=wall, monotonic=mono)
    assert await memory.open() == 2
    wall.now, mono.now = wall.now + 60, 110.0
    assert memory.close() == 2
    await store.flush()
    rows = await store.query("SELECT msg_id, created FROM outbox ORDER BY id")
    assert [(r["msg_id"], r["created"]) for r in rows] == [
        ("r0", pytest.approx(created["r0"] - 30, abs=1e-3)),
        ("r1", pytest.approx(created["r1"], abs=1e-3)),
    ]
