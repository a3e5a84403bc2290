"""On-demand queries over a real store file, written by the gateway's own Store."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway import cli
from gateway.counters import Counters
from gateway.model import Alert, AlertState, Reading
from gateway.store.config import StoreConfig
from gateway.store.store import Store
from gateway.web import queries
from gateway.web.queries import QueryError, SeriesRequest

NOW = 1_700_000_000.0


def alert(state: AlertState, ts: float, device: str = "p1", step: str = "hot") -> Alert:
    return Alert(
        "overheat",
        step,
        device,
        "temp",
        "threshold",
        state,
        "critical",
        ts,
        35.0,
        30.0,
        f"{device} temp {state}",
    )


async def fill(path: Path) -> None:
    """p1/temp: 0..59 one per second from NOW; p2/temp: 2 readings; alerts; dead letters."""
    async with Store(StoreConfig(path=path), Counters()) as store:
        store.add_readings(Reading("fleet", "p1", "temp", float(i), NOW + i, i) for i in range(60))
        store.add_readings(
            [
                Reading("fleet", "p2", "temp", 5.0, NOW, 1),
                Reading("fleet", "p2", "temp", 7.0, NOW + 9, 2),
            ]
        )
        store.add_alert(alert("raised", NOW + 10))
        store.add_alert(alert("cleared", NOW + 20))
        store.add_alert(alert("raised", NOW + 30, device="p2"))
        store.add_dead_letter("fleet", "malformed_json", "bad", b"{oops", NOW + 1)
        store.add_dead_letter("serial", "bad_utf8", "bad", b"\xff\xfe", NOW + 2)
        await store.flush()


@pytest.fixture
async def db(tmp_path: Path) -> Path:
    path = tmp_path / "gateway.db"
    await fill(path)
    return path


@pytest.fixture
def conn(db: Path) -> Iterator[sqlite3.Connection]:
    c = queries.connect_readonly(db)
    yield c
    c.close()


def test_series_downsamples_to_avg_min_max_per_aligned_bucket(conn: sqlite3.Connection) -> None:
    got = queries.series(conn, SeriesRequest("p1", "temp", NOW, NOW + 60, bucket=20))
    assert got["bucket"] == 20
    assert got["points"] == [
        {"t": NOW, "avg": 9.5, "min": 0.0, "max": 19.0, "count": 20},
        {"t": NOW + 20, "avg": 29.5, "min": 20.0, "max": 39.0, "count": 20},
        {"t": NOW + 40, "avg": 49.5, "min": 40.0, "max": 59.0, "count": 20},
    ]


def test_series_range_is_half_open_and_skips_empty_buckets(conn: sqlite3.Connection) -> None:
    got = queries.series(conn, SeriesRequest("p1", "temp", NOW + 10, NOW + 20, bucket=5))
    assert [(p["t"], p["count"], p["min"], p["max"]) for p in got["points"]] == [
        (NOW + 10, 5, 10.0, 14.0),
        (NOW + 15, 5, 15.0, 19.0),
    ]
    gap = queries.series(conn, SeriesRequest("p2", "temp", NOW, NOW + 10, bucket=1))
    assert [p["t"] for p in gap["points"]] == [NOW, NOW + 9]


def test_series_bucket_from_points_and_capped(conn: sqlite3.Connection) -> None:
    assert (
        queries.series(conn, SeriesRequest("p1", "temp", NOW, NOW + 60, points=6))["bucket"] == 10
    )
    huge = SeriesRequest("p1", "temp", NOW, NOW + 1e6, bucket=0.001)
    assert huge.bucket_seconds() == 1e6 / queries.MAX_BUCKETS


@pytest.mark.parametrize(
    "req",
    [
        SeriesRequest("p1", "temp", NOW, NOW),
        SeriesRequest("p1", "temp", NOW + 5, NOW),
        SeriesRequest("p1", "temp", float("nan"), NOW),
        SeriesRequest("p1", "temp", NOW, NOW + 5, bucket=-1),
    ],
)
def test_series_rejects_bad_ranges(conn: sqlite3.Connection, req: SeriesRequest) -> None:
    with pytest.raises(QueryError):
        queries.series(conn, req)


def test_latest_is_the_newest_reading_per_device_and_metric(conn: sqlite3.Connection) -> None:
    got = queries.latest(conn)
    assert [(r["device"], r["metric"], r["value"], r["ts"]) for r in got] == [
        ("p1", "temp", 59.0, NOW + 59),
        ("p2", "temp", 7.0, NOW + 9),
    ]
    assert [r["device"] for r in queries.latest(conn, "p2")] == ["p2"]


async def test_latest_walks_every_device_and_metric(tmp_path: Path) -> None:
    path = tmp_path / "many.db"
    async with Store(StoreConfig(path=path), Counters()) as store:
        store.add_readings(
            Reading("fleet", device, metric, float(i), NOW + i)
            for i in range(40)
            for device, metric in [("b", "z"), ("a", "y"), ("b", "x"), ("a", "x"), ("c", "")]
        )
        await store.flush()
    conn = queries.connect_readonly(path)
    try:
        got = [(r["device"], r["metric"], r["value"]) for r in queries.latest(conn)]
        assert got == [
            ("a", "x", 39.0),
            ("a", "y", 39.0),
            ("b", "x", 39.0),
            ("b", "z", 39.0),
            ("c", "", 39.0),
        ]
        assert queries.latest(conn, "nobody") == []
    finally:
        conn.close()


def test_alert_history_newest_first_with_filters(conn: sqlite3.Connection) -> None:
    assert [(a["device"], a["state"]) for a in queries.alerts(conn)] == [
        ("p2", "raised"),
        ("p1", "cleared"),
        ("p1", "raised"),
    ]
    assert [a["state"] for a in queries.alerts(conn, device="p1", limit=1)] == ["cleared"]
    assert [a["ts"] for a in queries.alerts(conn, since=NOW + 10, until=NOW + 30)] == [
        NOW + 20,
        NOW + 10,
    ]
    with pytest.raises(QueryError):
        queries.alerts(conn, limit=0)


def test_active_alerts_are_those_raised_and_not_cleared(conn: sqlite3.Connection) -> None:
    assert [(a["device"], a["state"]) for a in queries.active_alerts(conn)] == [("p2", "raised")]


def test_dead_letters_show_raw_text_or_base64(conn: sqlite3.Connection) -> None:
    rows = queries.dead_letters(conn)
    assert [(r["source"], r["raw"], r["raw_base64"]) for r in rows] == [
        ("serial", None, "//4="),
        ("fleet", "{oops", None),
    ]
    assert [r["reason"] for r in queries.dead_letters(conn, source="fleet")] == ["malformed_json"]


def test_the_connection_is_read_only(conn: sqlite3.Connection) -> None:
    with pytest.raises(sqlite3.OperationalError):
        conn.execute("DELETE FROM readings")


def test_a_missing_store_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(QueryError, match="no store"):
        queries.connect_readonly(tmp_path / "absent.db")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("now", NOW),
        ("1699999000", 1_699_999_000.0),
        ("10m", NOW - 600),
        ("2023-11-14T22:13:20Z", NOW),
        ("2023-11-14T22:13:20", NOW),
    ],
)
def test_times_are_epoch_durations_ago_or_iso(text: str, expected: float) -> None:
    assert queries.parse_time(text, NOW) == expected


@pytest.mark.parametrize("text", ["yesterday", "inf", "-5m", ""])
def test_bad_times_are_query_errors(text: str) -> None:
    with pytest.raises(QueryError):
        queries.parse_time(text, NOW)


def run_query(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any, str]:
    code = cli.main(["query", *argv])
    out, err = capsys.readouterr()
    return code, json.loads(out) if out else None, err


def test_query_command_prints_the_same_json_as_the_api(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ("--device", "p1", "--metric", "temp", "--start", str(NOW), "--end", str(NOW + 60))
    code, body, _ = run_query(capsys, "--db", str(db), "series", *args, "--bucket", "20s")
    assert code == 0
    assert [(p["avg"], p["count"]) for p in body["points"]] == [(9.5, 20), (29.5, 20), (49.5, 20)]
    code, body, _ = run_query(capsys, "--db", str(db), "alerts", "--device", "p1")
    assert [a["state"] for a in body] == ["cleared", "raised"]
    code, body, _ = run_query(capsys, "--db", str(db), "active-alerts")
    assert [a["device"] for a in body] == ["p2"]
    code, body, _ = run_query(capsys, "--db", str(db), "dead-letters", "--limit", "1")
    assert [d["source"] for d in body] == ["serial"]


def test_query_command_reads_the_store_named_in_the_config(
    db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"store: {{path: {db}}}\n"
        "sources: [{id: fleet, type: mqtt, topics: ['s/{device}/{metric}']}]\n"
    )
    code, body, _ = run_query(capsys, "-c", str(config), "latest", "--device", "p2")
    assert code == 0
    assert [(r["device"], r["value"]) for r in body] == [("p2", 7.0)]


def test_query_command_errors_are_messages_with_exit_codes(
    db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_query(capsys, "--db", str(db), "series", "--device", "p1")
    assert (code, "--device and --metric" in err) == (2, True)
    code, _, err = run_query(capsys, "--db", str(db), "alerts", "--since", "last week")
    assert (code, "not a time" in err) == (2, True)
    code, _, err = run_query(capsys, "--db", str(tmp_path / "none.db"), "latest")
    assert (code, "no store" in err) == (1, True)
