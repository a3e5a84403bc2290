"""How long the on-demand queries take on a store the size of the retention default.

Builds a store with the gateway's own schema (1,000,000 readings: 50 devices x 4 metrics,
one reading per device+metric every 10 s), then times each query on a read-only connection.
Baseline in the same run: ``count(*)`` over the whole readings table.

    .venv/bin/python tests/benchmarks/bench_web_queries.py [--rows 1000000] [--db /tmp/bench.db]
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from gateway.store.schema import create_schema
from gateway.web import queries
from gateway.web.queries import SeriesRequest

DEVICES, METRICS, STEP = 50, ("temperature", "humidity", "pressure", "vibration"), 10.0


def build(path: Path, rows: int) -> float:
    """Fill ``path``; returns the newest timestamp."""
    db = Database(path)
    db.execute("PRAGMA journal_mode=WAL")
    create_schema(db)
    pairs = [(f"dev-{d:03d}", m) for d in range(DEVICES) for m in METRICS]
    per_pair = rows // len(pairs)
    t0 = 1_700_000_000.0
    conn = db.conn
    with conn:
        conn.executemany(
            "INSERT INTO readings (source, device, metric, ts, value, seq) VALUES (?,?,?,?,?,?)",
            (
                ("fleet", dev, metric, t0 + i * STEP, float(i % 100), i)
                for i in range(per_pair)
                for dev, metric in pairs
            ),
        )
        conn.executemany(
            "INSERT INTO alerts (pipeline, step, device, metric, kind, state, severity, ts,"
            " value, threshold, message) VALUES ('p','s',?,?,'threshold',?,'warning',?,1,1,'m')",
            ((f"dev-{i % DEVICES:03d}", "temperature", ("raised", "cleared")[i % 2], t0 + i)
             for i in range(2000)),
        )  # fmt: skip
    db.close()
    return t0 + (per_pair - 1) * STEP


def timed(fn: Callable[[], Any], repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--db", type=Path, help="keep the store here (default: a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.db or Path(tmp) / "bench.db"
        path.unlink(missing_ok=True)
        newest = build(path, args.rows)
        conn: sqlite3.Connection = queries.connect_readonly(path)
        count = conn.execute("SELECT count(*) FROM readings").fetchone()[0]
        print(f"{count} readings, {DEVICES * len(METRICS)} device+metric pairs")
        cases: list[tuple[str, Callable[[], Any]]] = [
            ("baseline: SELECT count(*) FROM readings", lambda: conn.execute(
                "SELECT count(*) FROM readings").fetchone()),
            ("series, last 5 min, 60 points (the page)", lambda: queries.series(
                conn, SeriesRequest("dev-007", "humidity", newest - 300, newest + 1, points=60))),
            ("series, last 24 h, 1 min buckets", lambda: queries.series(
                conn, SeriesRequest("dev-007", "humidity", newest - 86400, newest + 1, bucket=60))),
            ("series, whole range, 200 points", lambda: queries.series(
                conn, SeriesRequest("dev-007", "humidity", 0, newest + 1))),
            ("latest, every device+metric", lambda: queries.latest(conn)),
            ("latest, one device", lambda: queries.latest(conn, "dev-007")),
            ("alerts, newest 100", lambda: queries.alerts(conn)),
            ("active alerts", lambda: queries.active_alerts(conn)),
        ]  # fmt: skip
        for name, fn in cases:
            print(f"{name:45s} {timed(fn):8.1f} ms")
        conn.close()


if __name__ == "__main__":
    main()
