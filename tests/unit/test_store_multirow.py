"""Multi-row INSERTs and bucketed outbox deletes: every row once, in order, ids in order."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlite_utils import Database

from gateway.counters import Counters
from gateway.model import Aggregate, Alert, Reading
from gateway.store.config import StoreConfig
from gateway.store.schema import create_schema
from gateway.store.statements import (
    DELETE_BUCKET,
    Insert,
    count_attempt,
    delete_outbox,
    insert_rows,
)
from gateway.store.store import OutboxRow, Store

NOW = 1_700_000_000.0
SIZES = [0, 1, 127, 128, 129, 1000]
TABLES = ("readings", "aggregates", "alerts", "dead_letters", "outbox")
READINGS = Insert("INSERT OR IGNORE INTO readings (source, device, metric, ts, value, seq)", 6)


def reading(i: int) -> Reading:
    return Reading("mqtt", f"d{i % 7}", "temp", float(i), NOW + i, i)


def aggregate(i: int, stats: dict[str, Any] | None = None) -> Aggregate:
    return Aggregate("p", "w", f"d{i}", "temp", NOW, NOW + 60, i, stats or {"mean": float(i)})


def alert(i: int) -> Alert:
    return Alert("p", "hi", f"d{i}", "temp", "threshold", "raised", "warning", NOW, i, 9.0, "hot")


def fill(store: Store, n: int, offset: int = 0) -> None:
    """``n`` items of every kind, numbered from ``offset``."""
    store.add_readings(reading(offset + i) for i in range(n))
    for i in range(offset, offset + n):
        store.add_aggregate(aggregate(i))
        store.add_alert(alert(i))
        store.add_dead_letter("mqtt", "bad", f"#{i}", f"{i}".encode(), NOW + i)
        store.add_outbox("up", f"m{i}", "t", f"{i}".encode(), 1)


async def dump(store: Store) -> dict[str, list[dict[str, Any]]]:
    return {t: await store.query(f"SELECT rowid AS rid, * FROM {t} ORDER BY rowid") for t in TABLES}


@pytest.fixture
def make_store(tmp_path: Path) -> Callable[..., Store]:
    """A store (not opened) on its own file; ``chunk_rows`` 0 is the former row-by-row path."""

    def make(name: str = "gw.db", chunk_rows: int | None = None, **config: Any) -> Store:
        store = Store(StoreConfig(path=tmp_path / name, **config), Counters(), lambda: NOW)
        if chunk_rows is not None:
            store._chunk_rows = chunk_rows
        return store

    return make


@pytest.mark.parametrize("chunk_rows", [128, 0])
@pytest.mark.parametrize("n", SIZES)
async def test_every_row_lands_once_in_order(
    make_store: Callable[..., Store], n: int, chunk_rows: int
) -> None:
    fed: list[OutboxRow] = []
    async with make_store(chunk_rows=chunk_rows) as store:
        store.outbox_feed("up", fed.extend)
        fill(store, n)
        await store.flush()
        tables = await dump(store)

    expect = list(range(n))
    assert [r["seq"] for r in tables["readings"]] == expect
    assert [r["count"] for r in tables["aggregates"]] == expect
    assert [r["value"] for r in tables["alerts"]] == expect
    assert [r["detail"] for r in tables["dead_letters"]] == [f"#{i}" for i in expect]
    assert [r["msg_id"] for r in tables["outbox"]] == [f"m{i}" for i in expect]
    for rows in tables.values():  # rowids (and ids) follow the order rows were added
        assert [r["rid"] for r in rows] == list(range(1, n + 1))
    # the forwarder is handed each row under the id it was stored with, in id order
    assert [(r.id, r.msg_id, r.payload) for r in fed] == [
        (r["id"], r["msg_id"], r["payload"]) for r in tables["outbox"]
    ]


async def test_the_former_path_gives_identical_tables(make_store: Callable[..., Store]) -> None:
    dumps = []
    for name, chunk_rows in (("new.db", 128), ("old.db", 0)):
        async with make_store(name, chunk_rows) as store:
            for offset, n in ((0, 300), (300, 129), (429, 1), (430, 0)):
                fill(store, n, offset)
                store.add_readings([reading(offset // 2), reading(5)])  # duplicates: ignored
                await store.flush()
            [first] = await store.outbox_take("up", 1)
            await store.outbox_ack([first.id, *range(first.id + 2, first.id + 700)])  # two chunks
            dumps.append(await dump(store))
    assert dumps[0] == dumps[1]
    assert len(dumps[0]["readings"]) == 430
    assert [r["msg_id"] for r in dumps[0]["outbox"]] == ["m1"]


async def test_duplicates_across_chunk_boundaries_count_once(
    make_store: Callable[..., Store],
) -> None:
    counters = Counters()
    async with make_store() as store:
        store._counters = counters
        store.add_readings([*map(reading, range(200)), reading(3), reading(150), reading(199)])
        await store.flush()
        assert [r["seq"] for r in await store.query("SELECT seq FROM readings")] == list(range(200))
    assert counters.get("store", "readings_written") == 200
    assert counters.get("store", "duplicates") == 3


@pytest.mark.parametrize("chunk_rows", [128, 0])
async def test_a_bad_row_in_a_chunk_is_dropped_alone(
    make_store: Callable[..., Store], chunk_rows: int
) -> None:
    counters = Counters()
    fed: list[OutboxRow] = []
    async with make_store(chunk_rows=chunk_rows) as store:
        store._counters = counters
        store.outbox_feed("up", fed.extend)
        fill(store, 300)
        store._aggregates[150] = aggregate(150, {"x": object()})  # not JSON
        row_id = list(store._outbox)[200]
        sink, row, created = store._outbox[row_id]
        bad = row._replace(payload=object())  # type: ignore[arg-type]
        store._outbox[row_id] = (sink, bad, created)
        await store.flush()
        tables = await dump(store)

    assert counters.get("store", "rejected") == 2
    assert [r["count"] for r in tables["aggregates"]] == [i for i in range(300) if i != 150]
    assert [r["msg_id"] for r in tables["outbox"]] == [f"m{i}" for i in range(300) if i != 200]
    assert len(tables["readings"]) == len(tables["alerts"]) == 300
    ids = [r["id"] for r in tables["outbox"]]
    assert ids == sorted(ids)
    # the forwarder was handed every row as it was added, the one SQLite refused too
    assert [(r.id, r.msg_id) for r in fed if r.msg_id != "m200"] == [
        (r["id"], r["msg_id"]) for r in tables["outbox"]
    ]
    assert len(fed) == 300


# --------------------------------------------------------------------- statements


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    db = Database(sqlite3.connect(tmp_path / "s.db"), execute_plugins=False)
    create_schema(db)
    yield db.conn
    db.close()


def test_a_statement_never_binds_more_variables_than_sqlite_allows(
    conn: sqlite3.Connection,
) -> None:
    conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 50)
    chunk = READINGS.chunk(128, 50)
    assert chunk == 8
    rows = [("s", "d", "m", float(i), float(i), i) for i in range(100)]
    assert insert_rows(conn, READINGS, rows, chunk) == 100
    assert conn.execute("SELECT count(*) FROM readings").fetchone() == (100,)


def test_a_row_of_the_wrong_width_is_refused(conn: sqlite3.Connection) -> None:
    with pytest.raises(sqlite3.ProgrammingError):
        insert_rows(conn, READINGS, [("s", "d", "m", 1.0, 1.0)], 128)


@settings(max_examples=60, deadline=None)
@given(
    seqs=st.lists(st.integers(0, 40), max_size=300),
    chunk=st.sampled_from([1, 2, 8, 13, 128]),
)
def test_multirow_inserts_match_row_by_row(seqs: list[int], chunk: int) -> None:
    tables = []
    for size in (chunk, 1):
        conn = sqlite3.connect(":memory:")
        create_schema(Database(conn, execute_plugins=False))
        rows = [("s", "d", "m", float(i), float(seq), seq) for i, seq in enumerate(seqs)]
        changed = insert_rows(conn, READINGS, rows, size)
        tables.append((changed, conn.execute("SELECT rowid, * FROM readings").fetchall()))
        conn.close()
    assert tables[0] == tables[1]
    assert tables[0][0] == len(set(seqs))  # OR IGNORE: the first of each seq, in order


@pytest.mark.parametrize("exact", [False, True])
@pytest.mark.parametrize("n", [1, 3, DELETE_BUCKET - 1, DELETE_BUCKET, DELETE_BUCKET + 1, 1200])
def test_delete_outbox_counts_what_it_deletes(
    conn: sqlite3.Connection, n: int, exact: bool
) -> None:
    conn.executemany(
        "INSERT INTO outbox (id, sink, msg_id, payload) VALUES (?, 'up', ?, ?)",
        ((i, f"m{i}", b"x" * (i % 5) if i % 11 else None) for i in range(1, 1301)),
    )
    ids = [*range(1, n + 1, 2), 1, 5000]  # every other row, a repeat, an id that is not there
    gone = set(range(1, n + 1, 2))
    got = delete_outbox(conn, ids, exact=exact)
    assert got == (len(gone), sum(i % 5 for i in gone if i % 11))
    left = [i for (i,) in conn.execute("SELECT id FROM outbox ORDER BY id")]
    assert left == [i for i in range(1, 1301) if i not in gone]


@pytest.mark.parametrize("n", [1, 3, DELETE_BUCKET, DELETE_BUCKET + 1, 1200])
def test_a_failed_round_counts_one_attempt_on_each_of_its_rows(
    conn: sqlite3.Connection, n: int
) -> None:
    conn.executemany(
        "INSERT INTO outbox (id, sink, msg_id, payload, attempts) VALUES (?, 'up', ?, x'00', 2)",
        ((i, f"m{i}") for i in range(1, 1301)),
    )
    ids = list(range(1, n + 1, 2))
    assert count_attempt(conn, [*ids, 5000]) == len(ids)  # an id that is not there
    attempts = dict(conn.execute("SELECT id, attempts FROM outbox"))
    assert attempts == {i: 3 if i in set(ids) else 2 for i in range(1, 1301)}
