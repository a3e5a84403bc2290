"""On-demand analytics over the local store, on a read-only connection of its own.

The store's writer thread owns the write connection; these queries open the same file
read-only (WAL lets readers run beside the writer) and are plain functions of a
``sqlite3.Connection``, so the HTTP API and ``edge-gateway query`` share them.
"""

from __future__ import annotations

import asyncio
import base64
import math
import sqlite3
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from gateway.config.types import parse_duration

T = TypeVar("T")

MAX_BUCKETS = 2000
"""A series never returns more points than this; the bucket grows instead."""
MAX_ROWS = 10_000
"""Upper bound of ``limit`` for alert and dead-letter listings."""


class QueryError(ValueError):
    """A request that cannot be answered as asked (bad range, unknown table, ...)."""


@dataclass(frozen=True, slots=True)
class SeriesRequest:
    """One device+metric over ``[start, end)``, downsampled to buckets of ``bucket`` seconds."""

    device: str
    metric: str
    start: float
    end: float
    bucket: float | None = None
    points: int = 200

    def bucket_seconds(self) -> float:
        """The bucket width: as asked, else the range split in ``points``; never too many."""
        if not (math.isfinite(self.start) and math.isfinite(self.end)) or self.end <= self.start:
            raise QueryError("the range is empty: 'end' must be after 'start'")
        span = self.end - self.start
        wanted = self.bucket if self.bucket else span / max(1, min(self.points, MAX_BUCKETS))
        if not math.isfinite(wanted) or wanted <= 0:
            raise QueryError("'bucket' must be a positive number of seconds")
        return max(wanted, span / MAX_BUCKETS)


def connect_readonly(path: str | Path) -> sqlite3.Connection:
    """Open the store file read-only; raises ``QueryError`` when it does not exist yet."""
    file = Path(path)
    if not file.exists():
        raise QueryError(f"no store at {file} (has the gateway run yet?)")
    conn = sqlite3.connect(f"{file.resolve().as_uri()}?mode=ro", uri=True, timeout=5.0)
    conn.row_factory = sqlite3.Row
    return conn


def series(conn: sqlite3.Connection, req: SeriesRequest) -> dict[str, Any]:
    """``avg/min/max/count`` per bucket; buckets are aligned to multiples of their width."""
    width = req.bucket_seconds()
    rows = conn.execute(
        "SELECT CAST(ts / :w AS INTEGER) AS b, avg(value) AS avg, min(value) AS min,"
        " max(value) AS max, count(*) AS count FROM readings"
        " WHERE device = :d AND metric = :m AND ts >= :s AND ts < :e GROUP BY b ORDER BY b",
        {"w": width, "d": req.device, "m": req.metric, "s": req.start, "e": req.end},
    ).fetchall()
    return {
        "device": req.device,
        "metric": req.metric,
        "start": req.start,
        "end": req.end,
        "bucket": width,
        "points": [
            {
                "t": r["b"] * width,
                "avg": r["avg"],
                "min": r["min"],
                "max": r["max"],
                "count": r["count"],
            }
            for r in rows
        ],
    }


def latest(conn: sqlite3.Connection, device: str | None = None) -> list[dict[str, Any]]:
    """The newest reading of every device+metric (of one device when given)."""
    out: list[dict[str, Any]] = []
    for d, m in _pairs(conn, device):
        row = conn.execute(
            "SELECT source, ts, value, seq FROM readings WHERE device = ? AND metric = ?"
            " ORDER BY ts DESC LIMIT 1",
            (d, m),
        ).fetchone()
        if row is not None:
            out.append({"device": d, "metric": m, **dict(row)})
    return out


def _pairs(conn: sqlite3.Connection, device: str | None) -> Iterator[tuple[str, str]]:
    """Distinct (device, metric) in order, by index seeks: one per device and per pair.

    A ``SELECT DISTINCT`` reads the whole index (1e6 rows: ~100 ms); seeking costs
    microseconds per pair (``tests/benchmarks/bench_web_queries.py``).
    """
    first = "SELECT min(device) FROM readings"
    d = device if device is not None else conn.execute(first).fetchone()[0]
    while d is not None:
        m = conn.execute("SELECT min(metric) FROM readings WHERE device = ?", (d,)).fetchone()[0]
        while m is not None:
            yield d, m
            m = conn.execute(
                "SELECT min(metric) FROM readings WHERE device = ? AND metric > ?", (d, m)
            ).fetchone()[0]
        if device is not None:
            return
        d = conn.execute("SELECT min(device) FROM readings WHERE device > ?", (d,)).fetchone()[0]


def alerts(
    conn: sqlite3.Connection,
    *,
    since: float | None = None,
    until: float | None = None,
    device: str | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Alert transitions, newest first."""
    where, params = _range("ts", since, until)
    if device is not None:
        where.append("device = ?")
        params.append(device)
    sql = (
        "SELECT pipeline, step, device, metric, kind, state, severity, ts, value, threshold,"
        f" message FROM alerts {_where(where)} ORDER BY ts DESC, rowid DESC LIMIT ?"
    )
    return [dict(r) for r in conn.execute(sql, (*params, _limit(limit))).fetchall()]


def active_alerts(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """Alerts whose latest transition is ``raised``: what is wrong right now."""
    rows = conn.execute(
        "SELECT pipeline, step, device, metric, kind, state, severity, ts, value, threshold,"
        " message FROM alerts WHERE rowid IN (SELECT max(rowid) FROM alerts"
        " GROUP BY pipeline, step, device, metric) AND state = 'raised' ORDER BY ts DESC"
    ).fetchall()
    return [dict(r) for r in rows]


def dead_letters(
    conn: sqlite3.Connection,
    *,
    since: float | None = None,
    until: float | None = None,
    source: str | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Rejected input, newest first; ``raw`` as text when it is UTF-8, else base64."""
    where, params = _range("ts", since, until)
    if source is not None:
        where.append("source = ?")
        params.append(source)
    sql = (
        f"SELECT id, source, ts, reason, detail, raw FROM dead_letters {_where(where)}"
        " ORDER BY id DESC LIMIT ?"
    )
    out = []
    for r in conn.execute(sql, (*params, _limit(limit))).fetchall():
        row = dict(r)
        row.update(_raw(row.pop("raw")))
        out.append(row)
    return out


def outbox_depths(conn: sqlite3.Connection) -> dict[str, int]:
    """Messages waiting per sink."""
    return {r[0]: r[1] for r in conn.execute("SELECT sink, count(*) FROM outbox GROUP BY sink")}


def _raw(raw: bytes | str | None) -> dict[str, str | None]:
    if raw is None or isinstance(raw, str):
        return {"raw": raw, "raw_base64": None}
    try:
        return {"raw": raw.decode("utf-8"), "raw_base64": None}
    except UnicodeDecodeError:
        return {"raw": None, "raw_base64": base64.b64encode(raw).decode("ascii")}


def _range(column: str, since: float | None, until: float | None) -> tuple[list[str], list[Any]]:
    where: list[str] = []
    params: list[Any] = []
    if since is not None:
        where.append(f"{column} >= ?")
        params.append(since)
    if until is not None:
        where.append(f"{column} < ?")
        params.append(until)
    return where, params


def _where(clauses: list[str]) -> str:
    return f"WHERE {' AND '.join(clauses)}" if clauses else ""


def _limit(limit: int) -> int:
    if limit < 1:
        raise QueryError("'limit' must be at least 1")
    return min(limit, MAX_ROWS)


class ReadOnlyStore:
    """The query functions on one read-only connection, run on a thread of their own.

    The connection is opened lazily (the gateway may create the file after the web server
    starts) and reopened after an error. Calls are serialized on the single thread.
    """

    def __init__(self, path: str | Path, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.clock = clock
        self._conn: sqlite3.Connection | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="web-query")

    async def run(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run ``fn(conn, *args, **kwargs)`` on the query thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, lambda: self._call(fn, args, kwargs))

    def _call(self, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]) -> T:
        if self._conn is None:
            self._conn = connect_readonly(self.path)
        try:
            return fn(self._conn, *args, **kwargs)
        except sqlite3.Error:
            self._conn.close()
            self._conn = None
            raise

    def close(self) -> None:
        """Close the connection on its own thread, then stop the thread."""

        def close_conn() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        self._pool.submit(close_conn)
        self._pool.shutdown(wait=True)


def parse_time(text: str, now: float) -> float:
    """A point in time: epoch seconds, ``now``, a duration ago (``10m``, ``2h``) or ISO 8601."""
    text = text.strip()
    if text == "now":
        return now
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        if math.isfinite(value):
            return value
        raise QueryError(f"not a time: {text!r}")
    try:
        return now - parse_duration(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise QueryError(
            f"not a time: {text!r} (epoch seconds, 'now', a duration ago like 10m, or ISO 8601)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def parse_seconds(text: str) -> float:
    """A positive duration such as ``30s``, ``5m`` or ``60``."""
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise QueryError(str(exc)) from None
    if seconds <= 0:
        raise QueryError("a bucket must be longer than 0s")
    return seconds
