"""The SQLite store and outbox, on a real file in tmp_path."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.counters import Counters
from gateway.model import Aggregate, Alert, Reading
from gateway.store import store as store_module
from gateway.store.config import RetentionConfig, StoreConfig
from gateway.store.schema import SCHEMA_VERSION, SchemaVersionError
from gateway.store.store import (
    AHEAD_MAX,
    DEAD_LETTER_RAW_MAX,
    PRIORITY_ALERT,
    PRIORITY_READING,
    OutboxRow,
    Store,
)

DAY = 86400.0
NOW = 1_700_000_000.0


class WatchedCounters(Counters):
    """Counters that let a test await a count instead of polling it."""

    def __init__(self) -> None:
        super().__init__()
        self.changed = asyncio.Event()

    def inc(self, component: str, name: str, n: int = 1) -> None:
        super().inc(component, name, n)
        self.changed.set()

    async def reach(self, name: str, at_least: int = 1) -> None:
        async with asyncio.timeout(10):
            while self.get("store", name) < at_least:
                self.changed.clear()
                await self.changed.wait()


class FakeClock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def reading(i: int, *, ts: float = NOW, seq: int | None = None, device: str = "d1") -> Reading:
    return Reading("mqtt", device, "temp", float(i), ts, seq)


def aggregate(n: int = 3) -> Aggregate:
    return Aggregate("p1", "avg", "d1", "temp", NOW - 60, NOW, n, {"mean": 21.5, "max": 23.0})


def alert() -> Alert:
    return Alert("p1", "hi", "d1", "temp", "threshold", "raised", "warning", NOW, 99.0, 90.0, "hot")


@pytest.fixture
def counters() -> WatchedCounters:
    return WatchedCounters()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_store(tmp_path: Path, counters: Counters, clock: FakeClock) -> Callable[..., Store]:
    """Build (not open) a store on ``tmp_path/gw.db``; keyword arguments go to StoreConfig."""

    def make(**config: Any) -> Store:
        return Store(StoreConfig(path=tmp_path / "gw.db", **config), counters, clock)

    return make


@pytest.fixture
async def store(make_store: Callable[..., Store]) -> AsyncIterator[Store]:
    async with make_store() as s:
        yield s


async def count(store: Store, table: str) -> int:
    rows = await store.query(f"SELECT count(*) AS n FROM {table}")
    return int(rows[0]["n"])


def outside(tmp_path: Path, sql: str) -> None:
    """Run DDL from a second connection, as another process would."""
    with sqlite3.connect(tmp_path / "gw.db") as conn:
        conn.execute(sql)
    conn.close()


# Makes every outbox insert fail at run time with sqlite3.OperationalError ("malformed JSON"),
# the way a full disk or an I/O error would, until the trigger is dropped.
BREAK_OUTBOX = "CREATE TRIGGER break_outbox BEFORE INSERT ON outbox BEGIN SELECT json('{'); END"


# --------------------------------------------------------------------- readings


async def test_readings_are_committed_and_queryable(store: Store, counters: Counters) -> None:
    store.add_readings([reading(1, seq=1), reading(2, seq=2, device="d2")])
    await store.flush()

    rows = await store.query("SELECT source, device, metric, ts, value, seq FROM readings")
    assert rows == [
        {"source": "mqtt", "device": "d1", "metric": "temp", "ts": NOW, "value": 1.0, "seq": 1},
        {"source": "mqtt", "device": "d2", "metric": "temp", "ts": NOW, "value": 2.0, "seq": 2},
    ]
    assert counters.get("store", "readings_written") == 2
    assert store.pending == 0


async def test_a_resent_reading_with_the_same_seq_is_stored_once(
    store: Store, counters: Counters
) -> None:
    store.add_readings([reading(1, seq=7), reading(1, seq=7)])  # twice in one batch
    await store.flush()
    store.add_readings([reading(1, seq=7), reading(1, seq=8)])  # and again later
    await store.flush()

    assert [r["seq"] for r in await store.query("SELECT seq FROM readings")] == [7, 8]
    assert counters.get("store", "readings_written") == 2
    assert counters.get("store", "duplicates") == 2


async def test_readings_without_seq_are_deduplicated_by_content_and_timestamp(
    store: Store,
) -> None:
    store.add_readings([reading(1), reading(1)])  # the same value at the same instant
    store.add_readings([reading(2), reading(1, ts=NOW + 1)])  # another value, another instant
    await store.flush()
    assert await count(store, "readings") == 3


async def test_the_same_seq_from_another_device_is_not_a_duplicate(store: Store) -> None:
    store.add_readings([reading(1, seq=1), reading(1, seq=1, device="d2")])
    await store.flush()
    assert await count(store, "readings") == 2


# --------------------------------------------------------------------- batches


async def test_aggregate_alert_and_outbox_are_stored(store: Store) -> None:
    store.add_aggregate(aggregate())
    store.add_alert(alert())
    store.add_outbox("up", "m1", "t/agg", b'{"mean":21.5}', 1)
    await store.flush()

    [agg] = await store.query("SELECT * FROM aggregates")
    assert agg["stats"] == '{"mean":21.5,"max":23.0}'
    assert (agg["start"], agg["end"], agg["count"]) == (NOW - 60, NOW, 3)
    [al] = await store.query("SELECT kind, state, severity, value, threshold FROM alerts")
    assert al == {
        "kind": "threshold",
        "state": "raised",
        "severity": "warning",
        "value": 99.0,
        "threshold": 90.0,
    }
    [row] = await store.outbox_take("up", 10)
    assert (row.msg_id, row.topic, row.payload, row.qos, row.attempts) == (
        "m1",
        "t/agg",
        b'{"mean":21.5}',
        1,
        0,
    )


async def test_aggregate_and_its_outbox_row_commit_in_one_transaction(
    store: Store, tmp_path: Path, counters: Counters
) -> None:
    outside(tmp_path, BREAK_OUTBOX)  # the outbox insert now fails with OperationalError
    store.add_aggregate(aggregate())
    store.add_outbox("up", "m1", "t/agg", b"{}", 1)

    with pytest.raises(sqlite3.OperationalError):
        await store.flush()

    assert await count(store, "aggregates") == 0  # rolled back with the outbox row
    assert store.pending == 2  # kept for the next attempt
    assert counters.get("store", "write_errors") == 1

    outside(tmp_path, "DROP TRIGGER break_outbox")
    await store.flush()
    assert await count(store, "aggregates") == 1
    assert await store.outbox_depth("up") == 1
    assert store.pending == 0


async def test_a_failed_batch_is_retried_in_order(store: Store, tmp_path: Path) -> None:
    outside(tmp_path, BREAK_OUTBOX)
    store.add_outbox("up", "m1", "t", b"1", 1)
    with pytest.raises(sqlite3.OperationalError):
        await store.flush()
    store.add_outbox("up", "m2", "t", b"2", 1)
    outside(tmp_path, "DROP TRIGGER break_outbox")
    await store.flush()
    assert [r.msg_id for r in await store.outbox_take("up", 10)] == ["m1", "m2"]


async def test_an_item_sqlite_cannot_store_is_dropped_alone(
    store: Store, counters: Counters
) -> None:
    bad = Aggregate("p1", "avg", "d1", "temp", 0.0, 1.0, 1, {"x": object()})  # type: ignore[dict-item]
    store.add_readings([reading(1, seq=1)])
    store.add_aggregate(bad)
    store.add_aggregate(aggregate())
    store.add_outbox("up", "m1", "t", b"{}", 1)
    await store.flush()

    assert await count(store, "readings") == 1
    assert await count(store, "aggregates") == 1
    assert await store.outbox_depth() == 1
    assert counters.get("store", "rejected") == 1
    assert store.pending == 0


# --------------------------------------------------------------------- flush and run


async def test_flush_with_nothing_pending_returns(store: Store) -> None:
    await store.flush()
    store.add_readings([])
    await store.flush()
    assert store.pending == 0


async def test_flush_returns_when_everything_added_before_it_is_committed(store: Store) -> None:
    store.add_readings(reading(i) for i in range(10))
    store.add_dead_letter("mqtt", "bad_json", "x", b"{", NOW)
    flushing = asyncio.create_task(store.flush())
    store.add_readings([reading(99)])  # added after flush() was called
    await flushing
    assert await count(store, "readings") >= 10
    assert await count(store, "dead_letters") == 1
    await store.flush()
    assert await count(store, "readings") == 11


async def test_concurrent_flushes_each_see_their_items(store: Store) -> None:
    async def add_and_flush(i: int) -> int:
        store.add_readings([reading(i, seq=i)])
        await store.flush()
        return len(await store.query("SELECT 1 FROM readings WHERE seq = ?", (i,)))

    assert await asyncio.gather(*(add_and_flush(i) for i in range(20))) == [1] * 20


async def test_add_only_queues_and_the_loop_is_not_blocked(store: Store) -> None:
    store.add_readings(reading(i, seq=i) for i in range(100_000))
    assert store.pending == 100_000
    assert await count(store, "readings") == 0  # nothing was written by add_readings

    ticks = 0
    flushing = asyncio.create_task(store.flush())
    while not flushing.done():  # the loop keeps running while the writer thread commits
        ticks += 1
        # Not sleep(0): a loop that never waits keeps the GIL from the writer thread, whose
        # executemany then crawls (a convoy) on a loaded machine.
        await asyncio.sleep(0.001)
    await flushing
    assert ticks > 1
    assert await count(store, "readings") == 100_000


async def test_run_commits_in_the_background(make_store: Callable[..., Store]) -> None:
    async with make_store(batch_interval=0.01) as store:
        task = asyncio.create_task(store.run(), name="store")
        store.add_outbox("up", "m1", "t", b"x", 1)
        committed = asyncio.Event()
        store.when_committed(committed.set)
        await asyncio.wait_for(committed.wait(), 5)
        assert await count(store, "outbox") == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_run_commits_as_soon_as_batch_max_is_pending(
    make_store: Callable[..., Store],
) -> None:
    async with make_store(batch_interval=3600, batch_max=5) as store:
        task = asyncio.create_task(store.run(), name="store")
        for i in range(5):
            store.add_outbox("up", f"m{i}", "t", b"x", 1, PRIORITY_READING)  # not eager
        committed = asyncio.Event()
        store.when_committed(committed.set)
        await asyncio.wait_for(committed.wait(), 5)  # long before batch_interval
        assert await count(store, "outbox") == 5
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_cancelling_run_flushes_what_is_pending(make_store: Callable[..., Store]) -> None:
    async with make_store(batch_interval=3600) as store:
        task = asyncio.create_task(store.run(), name="store")
        await asyncio.sleep(0)  # let run() start, so it is inside its try when cancelled
        store.add_readings(reading(i) for i in range(3))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert store.pending == 0
        assert await count(store, "readings") == 3


async def test_the_flusher_survives_a_failing_batch(
    make_store: Callable[..., Store], tmp_path: Path, counters: WatchedCounters
) -> None:
    async with make_store(batch_interval=0.01) as store:
        outside(tmp_path, BREAK_OUTBOX)
        task = asyncio.create_task(store.run(), name="store")
        store.add_outbox("up", "m1", "t", b"x", 1)
        await counters.reach("write_errors")
        committed = asyncio.Event()
        store.when_committed(committed.set)
        outside(tmp_path, "DROP TRIGGER break_outbox")
        await asyncio.wait_for(committed.wait(), 5)  # the retry went through
        assert not task.done()
        assert await count(store, "outbox") == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_close_flushes(make_store: Callable[..., Store]) -> None:
    store = make_store()
    await store.open()
    store.add_readings([reading(1)])
    await store.close()
    async with make_store() as reopened:
        assert await count(reopened, "readings") == 1


# --------------------------------------------------------------------- outbox


async def test_outbox_take_ack_and_failed(store: Store) -> None:
    for i in range(5):
        store.add_outbox("a", f"a{i}", "t/a", f"{i}".encode(), 1)
        store.add_outbox("b", f"b{i}", "t/b", b"", 0)
    await store.flush()

    first = await store.outbox_take("a", 3)
    assert [r.msg_id for r in first] == ["a0", "a1", "a2"]
    assert [r.id for r in first] == sorted(r.id for r in first)
    assert await store.outbox_take("a", 3) == first  # taking does not remove

    await store.outbox_failed([first[1].id])
    await store.outbox_ack([first[0].id, first[2].id])
    again = await store.outbox_take("a", 10)
    assert [(r.msg_id, r.attempts) for r in again] == [("a1", 1), ("a3", 0), ("a4", 0)]
    assert isinstance(again[0], OutboxRow)

    assert await store.outbox_depth("a") == 3
    assert await store.outbox_depth("b") == 5
    assert await store.outbox_depth() == 8
    await store.outbox_ack([])
    await store.outbox_failed([])


async def test_outbox_ids_are_never_reused(store: Store) -> None:
    store.add_outbox("a", "m1", "t", b"", 1)
    await store.flush()
    [row] = await store.outbox_take("a", 1)
    await store.outbox_ack([row.id])
    store.add_outbox("a", "m2", "t", b"", 1)
    await store.flush()
    [row2] = await store.outbox_take("a", 1)
    assert row2.id > row.id


async def test_committed_outbox_rows_survive_a_restart(make_store: Callable[..., Store]) -> None:
    async with make_store(synchronous="full") as store:
        store.add_outbox("up", "m1", "t/1", b"one", 1)
        store.add_outbox("up", "m2", "t/2", b"two", 0)
        await store.flush()
        [first, _] = await store.outbox_take("up", 10)
        await store.outbox_failed([first.id])

    async with make_store() as reopened:
        rows = await reopened.outbox_take("up", 10)
        assert [(r.msg_id, r.topic, r.payload, r.qos, r.attempts) for r in rows] == [
            ("m1", "t/1", b"one", 1, 1),
            ("m2", "t/2", b"two", 0, 0),
        ]
        assert await reopened.query("PRAGMA user_version") == [{"user_version": SCHEMA_VERSION}]
        [mode] = await reopened.query("PRAGMA journal_mode")
        assert mode == {"journal_mode": "wal"}


async def test_the_wal_is_checkpointed_off_the_commit_path(
    make_store: Callable[..., Store], tmp_path: Path
) -> None:
    async with make_store() as store:
        # commits leave checkpoints to the checkpointer thread (SQLite's own is a backstop)
        [auto] = await store.query("PRAGMA wal_autocheckpoint")
        assert auto == {"wal_autocheckpoint": store_module.CHECKPOINT_BACKSTOP_PAGES}
        store.add_readings([reading(i, seq=i) for i in range(100)])
        await store.flush()
        await store.checkpoint()
        copy = tmp_path / "copy.db"  # the database file alone, without its WAL
        copy.write_bytes((tmp_path / "gw.db").read_bytes())
        with contextlib.closing(sqlite3.connect(copy)) as conn:
            assert conn.execute("SELECT count(*) FROM readings").fetchone() == (100,)
        [wal] = await store.query("PRAGMA wal_checkpoint(PASSIVE)")
        store.add_readings([reading(100, seq=100)])
        await store.flush()
        # (busy, log = WAL frames, checkpointed): the next commit wrote the WAL from its start
        [after] = await store.query("PRAGMA wal_checkpoint(PASSIVE)")
        assert 0 < after["log"] < wal["log"]


def wal_bound(pages: int) -> int:
    """Bytes of a WAL file that holds ``pages`` pages of 4 KiB: header and frame headers too."""
    return 32 + pages * (4096 + 24)


@pytest.fixture
def small_wal(monkeypatch: pytest.MonkeyPatch) -> int:
    """Restart the WAL past 64 pages (8 MB is too long a load for a unit test)."""
    monkeypatch.setattr(store_module, "WAL_RESTART_PAGES", 64)
    return 64


async def commit_while_checkpointing(store: Store, rounds: int, start: int) -> None:
    """Commits that race the checkpointer's passes, as under a steady load."""
    for i in range(start, start + rounds):
        store.add_readings([reading(j, seq=j) for j in range(i * 200, (i + 1) * 200)])
        await asyncio.gather(store.flush(), store.checkpoint())


async def test_the_wal_stays_bounded_while_commits_race_the_checkpointer(
    make_store: Callable[..., Store], tmp_path: Path, small_wal: int
) -> None:
    async with make_store() as store:
        for i in range(30):
            await commit_while_checkpointing(store, 1, i)
            # whatever the checkpointer's passes left, the WAL starts over past the limit
            assert store.wal_stats.log <= small_wal
        assert (tmp_path / "gw.db-wal").stat().st_size <= wal_bound(2 * small_wal)
        [n] = await store.query("SELECT count(*) AS n FROM readings")
        assert n == {"n": 30 * 200}


async def test_a_wal_a_reader_let_grow_is_cut_back_once_it_lets_go(
    make_store: Callable[..., Store], tmp_path: Path, small_wal: int
) -> None:
    wal = tmp_path / "gw.db-wal"
    async with make_store() as store:
        await commit_while_checkpointing(store, 2, 0)
        with contextlib.closing(sqlite3.connect(tmp_path / "gw.db")) as reader:
            reader.execute("BEGIN")
            [(seen,)] = reader.execute("SELECT count(*) FROM readings").fetchall()
            await commit_while_checkpointing(store, 30, 2)
            # the reader's snapshot pins the WAL: it grows, and the reader still sees it
            assert wal.stat().st_size > wal_bound(4 * small_wal)
            assert reader.execute("SELECT count(*) FROM readings").fetchall() == [(seen,)]
            reader.execute("COMMIT")
        await commit_while_checkpointing(store, 2, 32)
        assert wal.stat().st_size <= wal_bound(2 * small_wal)
        [n] = await store.query("SELECT count(*) AS n FROM readings")
        assert n == {"n": 34 * 200}


async def test_without_a_checkpoint_interval_sqlite_checkpoints_in_commits(
    make_store: Callable[..., Store],
) -> None:
    async with make_store(checkpoint_interval=None) as store:
        assert await store.query("PRAGMA wal_autocheckpoint") == [{"wal_autocheckpoint": 1000}]
        await store.checkpoint()  # nothing to do


# --------------------------------------------------------------------- retention


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make retention work in many tiny jobs, so the chunking itself is exercised."""
    monkeypatch.setattr(store_module, "RETENTION_SCAN_ROWS", 7)
    monkeypatch.setattr(store_module, "RETENTION_DELETE_ROWS", 3)


@pytest.mark.usefixtures("small_chunks")
async def test_retention_by_age(
    make_store: Callable[..., Store], clock: FakeClock, counters: Counters
) -> None:
    retention = RetentionConfig(max_age=7 * DAY, max_rows=None)
    async with make_store(retention=retention) as store:
        old = [reading(i, ts=NOW - 8 * DAY, seq=i) for i in range(20)]
        new = [reading(i, ts=NOW - 1 * DAY, seq=i) for i in range(100, 130)]
        late = [reading(999, ts=NOW - 30 * DAY, seq=999)]  # arrives last, is oldest
        store.add_readings(old + new + late)
        await store.flush()

        assert await store.enforce_retention() == 21
        assert await count(store, "readings") == 30
        assert counters.get("store", "retention_deleted") == 21

        clock.now += 7 * DAY  # now the rest is old too
        assert await store.enforce_retention() == 30
        assert await count(store, "readings") == 0


@pytest.mark.usefixtures("small_chunks")
async def test_retention_by_max_rows_keeps_the_newest(make_store: Callable[..., Store]) -> None:
    retention = RetentionConfig(max_age=None, max_rows=20)
    async with make_store(retention=retention) as store:
        store.add_readings(reading(i, seq=i) for i in range(50))
        await store.flush()
        assert await store.enforce_retention() == 30
        rows = await store.query("SELECT seq FROM readings ORDER BY seq")
        assert [r["seq"] for r in rows] == list(range(30, 50))
        assert await store.enforce_retention() == 0


async def test_retention_never_deletes_outbox_rows(make_store: Callable[..., Store]) -> None:
    retention = RetentionConfig(max_age=1, max_rows=1)
    async with make_store(retention=retention, dead_letters_max_rows=1) as store:
        for i in range(5):
            store.add_outbox("up", f"m{i}", "t", b"", 1)
        store.add_readings(reading(i, ts=0.0) for i in range(5))
        await store.flush()
        await store.enforce_retention()
        assert await store.outbox_depth() == 5
        assert await count(store, "readings") == 0


async def test_run_enforces_retention(
    make_store: Callable[..., Store], counters: WatchedCounters
) -> None:
    retention = RetentionConfig(max_age=DAY, max_rows=None, interval=3600)
    async with make_store(retention=retention) as store:
        store.add_readings([reading(1, ts=NOW - 2 * DAY), reading(2, ts=NOW)])
        await store.flush()
        task = asyncio.create_task(store.run(), name="store")
        await counters.reach("retention_deleted")  # the first pass runs at start
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await count(store, "readings") == 1


# --------------------------------------------------------------------- dead letters


async def test_dead_letter_raw_is_truncated(store: Store, counters: Counters) -> None:
    store.add_dead_letter("serial0", "bad_line", "no '=' in line", b"x" * 100_000, NOW)
    await store.flush()
    [row] = await store.query("SELECT source, ts, reason, detail, raw FROM dead_letters")
    assert row["raw"] == b"x" * DEAD_LETTER_RAW_MAX
    assert (row["source"], row["ts"], row["reason"], row["detail"]) == (
        "serial0",
        NOW,
        "bad_line",
        "no '=' in line",
    )
    assert counters.get("store", "dead_letters") == 1


@pytest.mark.usefixtures("small_chunks")
async def test_dead_letters_are_trimmed_oldest_first(make_store: Callable[..., Store]) -> None:
    async with make_store(dead_letters_max_rows=4) as store:
        for i in range(10):
            store.add_dead_letter("s", "r", str(i), b"", NOW + i)
        await store.flush()
        assert await store.enforce_retention() == 6
        rows = await store.query("SELECT detail FROM dead_letters ORDER BY id")
        assert [r["detail"] for r in rows] == ["6", "7", "8", "9"]


# --------------------------------------------------------------------- schema


async def test_schema_is_idempotent(make_store: Callable[..., Store]) -> None:
    async with make_store() as store:
        store.add_readings([reading(1)])
    async with make_store() as store:
        assert await count(store, "readings") == 1
        indexes = await store.query(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND name NOT LIKE 'sqlite_%'"
            " ORDER BY name"
        )
        assert [i["name"] for i in indexes] == [
            "outbox_priority",
            "outbox_sink_priority",
            "readings_content",
            "readings_device_metric_ts",
            "readings_seq",
        ]


async def test_a_newer_schema_is_refused(make_store: Callable[..., Store], tmp_path: Path) -> None:
    outside(tmp_path, f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    store = make_store()
    with pytest.raises(SchemaVersionError):
        await store.open()
    await store.close()  # closing a store that never opened is harmless


def test_config_parses_durations() -> None:
    config = StoreConfig.model_validate(
        {"batch_interval": "100ms", "retention": {"max_age": "1d", "interval": "5m"}}
    )
    assert config.batch_interval == 0.1
    assert config.retention.max_age == DAY
    assert config.retention.interval == 300
    with pytest.raises(ValueError, match="extra"):
        StoreConfig.model_validate({"bogus": 1})


class Transactions:
    """Records what each transaction of a store holds (readings, outbox message ids), and
    whether a commit waiter had been told before it."""

    def __init__(self, store: Store, told: asyncio.Event | None = None) -> None:
        self.batches: list[tuple[int, int, list[str]]] = []
        self.told_before: list[bool] = []
        self.on_write: Callable[[], object] | None = None
        self._write = store._write_batch
        self._told = told
        store._write_batch = self  # type: ignore[method-assign]

    def __call__(self, batch: Any) -> Any:
        self.told_before.append(self._told is not None and self._told.is_set())
        self.batches.append(
            (
                len(batch.readings),
                len(batch.aggregates),
                [row.msg_id for _, row, _ in batch.outbox.values()],
            )
        )
        if self.on_write is not None:
            self.on_write()
        return self._write(batch)


@contextlib.asynccontextmanager
async def flushing(store: Store) -> AsyncIterator[None]:
    task = asyncio.create_task(store.run(), name="store")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_aggregates_and_alerts_commit_ahead_of_readings_queued_before_them(
    make_store: Callable[..., Store],
) -> None:
    async with make_store(batch_interval=3600) as store:
        committed = asyncio.Event()
        log = Transactions(store, committed)
        store.add_readings(reading(i, seq=i) for i in range(500))
        store.add_outbox("up", "r1", "t", b"{}", 1, PRIORITY_READING)  # a forwarded reading
        store.add_aggregate(aggregate())
        store.add_outbox("up", "a1", "t", b"{}", 1)
        store.add_alert(alert())
        store.add_outbox("up", "x1", "t", b"{}", 1, PRIORITY_ALERT)
        store.add_aggregate(aggregate())
        store.add_outbox("up", "a2", "t", b"{}", 1)
        store.when_committed(committed.set)
        async with flushing(store), asyncio.timeout(5):
            await committed.wait()
        # first the aggregates and alerts with their rows, then the readings with theirs
        assert log.batches == [(0, 2, ["a1", "x1", "a2"]), (500, 0, ["r1"])]
        # the waiter registered after all of them waited for the readings too
        assert log.told_before == [False, False]
        rows = await store.outbox_take("up", 10)
        assert [r.msg_id for r in rows] == ["x1", "a1", "a2", "r1"]
        assert rows[1].id < rows[2].id  # in the order they were added, within a priority
        assert await count(store, "readings") == 500
        assert await count(store, "aggregates") == 2


async def test_a_stream_of_aggregates_does_not_starve_readings(
    make_store: Callable[..., Store],
) -> None:
    async with make_store(batch_interval=3600) as store:
        log = Transactions(store)
        loop = asyncio.get_running_loop()
        # every transaction finds a new aggregate pending when it is done
        log.on_write = lambda: loop.call_soon_threadsafe(store.add_aggregate, aggregate())
        store.add_readings(reading(i, seq=i) for i in range(10))
        store.add_aggregate(aggregate())
        committed = asyncio.Event()
        store.when_committed(committed.set)
        async with flushing(store), asyncio.timeout(5):
            await committed.wait()
            log.on_write = None
        readings = [n for n, _, _ in log.batches]
        assert readings[:AHEAD_MAX] == [0] * AHEAD_MAX
        assert readings[AHEAD_MAX] == 10


async def test_what_waits_for_a_commit_is_committed_within_eager_interval(
    tmp_path: Path,
) -> None:
    config = StoreConfig(path=tmp_path / "gw.db", batch_interval=3600, eager_interval=0.005)
    async with Store(config, Counters()) as store:
        flusher = asyncio.create_task(store.run())
        try:
            store.add_readings([reading(1, seq=1)])  # history only: waits for batch_interval
            acked = asyncio.Event()
            store.when_committed(acked.set)  # e.g. an MQTT message to acknowledge
            async with asyncio.timeout(5):
                await acked.wait()
            store.add_outbox("up", "m1", "t", b"{}", 1)  # an aggregate to forward
            acked.clear()
            store.when_committed(acked.set)
            async with asyncio.timeout(5):
                await acked.wait()
            assert await count(store, "outbox") == 1
        finally:
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
