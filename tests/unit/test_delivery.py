"""Store commit notifications, outbox dead letters, schema upgrade and message ids."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.counters import Counters
from gateway.model import Aggregate, Reading
from gateway.sinks.payloads import MessageIds
from gateway.store.config import StoreConfig
from gateway.store.store import Store

NOW = 1_700_000_000.0


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with Store(StoreConfig(path=tmp_path / "gw.db"), Counters(), lambda: NOW) as s:
        yield s


def reading(i: int, seq: int | None = None) -> Reading:
    return Reading("mqtt", "d1", "temp", float(i), NOW + i, seq)


async def test_a_commit_callback_runs_only_after_its_readings_are_committed(
    store: Store,
) -> None:
    order: list[str] = []
    store.add_readings([reading(1, 1)])
    store.when_committed(lambda: order.append("first"))
    store.add_readings([reading(2, 2)])
    store.when_committed(lambda: order.append("second"))
    assert order == []
    await store.flush()
    assert order == ["first", "second"]
    rows = await store.query("SELECT count(*) AS n FROM readings")
    assert rows == [{"n": 2}]


async def test_a_commit_callback_with_nothing_pending_runs_at_once(store: Store) -> None:
    called: list[int] = []
    store.when_committed(lambda: called.append(1))
    assert called == [1]


async def test_a_failing_commit_holds_its_callbacks_until_a_retry_succeeds(
    store: Store, tmp_path: Path
) -> None:
    with sqlite3.connect(tmp_path / "gw.db") as conn:
        conn.execute("CREATE TRIGGER broken BEFORE INSERT ON readings BEGIN SELECT json('{'); END")
    conn.close()
    called: list[int] = []
    store.add_readings([reading(1, 1)])
    store.when_committed(lambda: called.append(1))
    with pytest.raises(sqlite3.OperationalError):
        await store.flush()
    assert called == []
    with sqlite3.connect(tmp_path / "gw.db") as conn:
        conn.execute("DROP TRIGGER broken")
    conn.close()
    await store.flush()
    assert called == [1]


async def test_outbox_rows_move_to_dead_letters_in_one_step(store: Store) -> None:
    store.add_outbox("up", "m1", "t/1", b"x" * 10, 1)
    store.add_outbox("up", "m2", "t/2", b"ok", 1)
    await store.flush()
    first, second = await store.outbox_take("up", 10)
    await store.outbox_dead_letter([first], "up", "too_large")
    assert [r.msg_id for r in await store.outbox_take("up", 10)] == ["m2"]
    dead = await store.query("SELECT source, reason, detail, raw FROM dead_letters")
    assert dead == [
        {
            "source": "up",
            "reason": "too_large",
            "detail": "m1 on t/1 after 0 attempts",
            "raw": b"x" * 10,
        }
    ]
    assert second.msg_id == "m2"


async def test_a_version_1_file_is_upgraded_keeping_one_of_each_seqless_repeat(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE readings (source TEXT, device TEXT, metric TEXT, ts FLOAT,"
            " value FLOAT, seq INTEGER)"
        )
        conn.executemany(
            "INSERT INTO readings VALUES ('s', 'd', 'm', ?, ?, NULL)",
            [(1.0, 5.0), (1.0, 5.0), (2.0, 5.0)],
        )
        conn.execute("PRAGMA user_version = 1")
    conn.close()
    async with Store(StoreConfig(path=path), Counters()) as s:
        assert await s.query("SELECT ts FROM readings ORDER BY ts") == [{"ts": 1.0}, {"ts": 2.0}]
        s.add_readings([Reading("s", "d", "m", 5.0, 2.0)])
        await s.flush()
        assert await s.query("SELECT count(*) AS n FROM readings") == [{"n": 2}]


def test_a_readings_message_id_is_the_same_after_a_restart() -> None:
    before, after = MessageIds(), MessageIds()  # two boots
    with_seq = Reading("s", "d", "m", 1.5, NOW, 7)
    no_seq = Reading("s", "d", "m", 1.5, NOW)
    assert before.for_record(with_seq, "p", "up") == after.for_record(with_seq, "p", "up")
    assert before.for_record(no_seq, "p", "up") == after.for_record(no_seq, "p", "up")
    ids = {
        before.for_record(with_seq, "p", "up"),
        before.for_record(no_seq, "p", "up"),
        before.for_record(with_seq, "p2", "up"),
        before.for_record(with_seq, "p", "up2"),
        before.for_record(Reading("s", "d", "m", 1.5, NOW, 8), "p", "up"),
    }
    assert len(ids) == 5


def test_aggregates_get_a_fresh_id_each() -> None:
    ids = MessageIds()
    agg = Aggregate("p", "w", "d", "m", 0.0, 1.0, 1)
    assert ids.for_record(agg, "p", "up") != ids.for_record(agg, "p", "up")
