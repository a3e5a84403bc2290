"""The store writer's batch cost: multi-row INSERTs against the former row-by-row path.

Two stores on real files in one temporary directory, one with ``Store._chunk_rows = 0`` (one
``executemany`` row by row, as before) and one with the default, take turns committing
batches of ``--rows`` readings (plus ``--outbox`` outbox rows), so a busy moment of the
machine hits both alike. Each batch is timed from ``flush`` to its commit: the hop to the
writer thread, the INSERTs and the commit. ``busy`` repeats it while a second thread runs
Python (competing for the GIL, as the event loop does). Then the outbox deletes: rows acked
in groups of random size (1 to 500, as a forwarder acks), with the former statement shapes
(every size its own text) and with power-of-two buckets::

    python -m gateway.tools.store_insert --rows 1000 --batches 15

``--chunks`` compares other rows-per-statement sizes, the first the baseline (``0,128,512``:
row by row, the former 128 and the default 512), and ``--devices`` spreads the readings of
a batch over that many devices (each index insert lands on another device's page)::

    python -m gateway.tools.store_insert --rows 2000 --devices 1000 --chunks 128,512,1024

Then the failed rounds: ``outbox_failed`` of ``--failed`` rows (one more attempt each), row by
row against the delete's buckets, idle and beside the busy thread.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

from sqlite_utils import Database

from gateway.counters import Counters
from gateway.model import Reading
from gateway.store.config import StoreConfig
from gateway.store.schema import create_schema
from gateway.store.statements import DELETE_BUCKET, delete_outbox
from gateway.store.store import Store

DEFAULT_PATHS = {"old (row by row)": 0, "new (multi-row)": Store._chunk_rows}


@contextmanager
def busy_thread(on: bool) -> Iterator[None]:
    """While inside, a thread runs pure Python (holding the GIL as much as it may)."""
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            sum(i * i for i in range(1000))

    thread = threading.Thread(target=spin, name="busy", daemon=True)
    if on:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        if on:
            thread.join()


@asynccontextmanager
async def open_stores(
    directory: Path, tag: str, paths: dict[str, int]
) -> AsyncIterator[dict[str, Store]]:
    """A store on a file of its own per path (``Store._chunk_rows`` set), closed on exit."""
    stores: dict[str, Store] = {}
    try:
        for name, chunk_rows in paths.items():
            store = Store(StoreConfig(path=directory / f"{tag}-{chunk_rows}.db"), Counters())
            store._chunk_rows = chunk_rows
            await store.open()
            stores[name] = store
        yield stores
    finally:
        for store in stores.values():
            await store.close()


async def time_batches(
    directory: Path,
    rows: int,
    outbox: int,
    batches: int,
    busy: bool,
    paths: dict[str, int],
    devices: int,
) -> dict[str, list[float]]:
    """Milliseconds per batch commit, per path, batches alternating between the paths."""
    times: dict[str, list[float]] = {name: [] for name in paths}
    seq = 0
    async with open_stores(directory, f"batches-{int(busy)}", paths) as stores:
        with busy_thread(busy):
            for k in range(batches + 2):  # the first two warm up the files and caches
                for name, store in stores.items():
                    store.add_readings(
                        Reading("bench", f"d{i % devices}", "temp", float(i), 1e9 + i, seq + i)
                        for i in range(rows)
                    )
                    for i in range(outbox):
                        store.add_outbox("up", f"m{seq + i}", "t", b"x" * 80, 1, 2)
                    started = time.perf_counter()
                    await store.flush()
                    if k >= 2:
                        times[name].append((time.perf_counter() - started) * 1e3)
                seq += rows
    return times


async def time_failures(
    directory: Path, rows: int, rounds: int, busy: bool, paths: dict[str, int]
) -> dict[str, list[float]]:
    """Milliseconds per ``outbox_failed`` of ``rows`` rows (a failed round: one more attempt
    on each), per path, rounds alternating between the paths."""
    times: dict[str, list[float]] = {name: [] for name in paths}
    async with open_stores(directory, f"failed-{int(busy)}", paths) as stores:
        for store in stores.values():
            for i in range(rows):
                store.add_outbox("up", f"m{i}", "t", b"x" * 80, 1, 2)
            await store.flush()
        with busy_thread(busy):
            for k in range(rounds + 1):  # the first warms up
                for name, store in stores.items():
                    ids = [r.id for r in await store.outbox_take("up", rows)]
                    started = time.perf_counter()
                    await store.outbox_failed(ids)
                    if k >= 1:
                        times[name].append((time.perf_counter() - started) * 1e3)
    return times


def time_deletes(directory: Path, rows: int) -> dict[str, tuple[float, float]]:
    """µs per outbox row deleted by each statement shape (wall, CPU of this thread), acked in
    random groups, each in its own transaction, the shapes taking turns on files of their own."""
    shapes = {"old (exact sizes)": True, "new (buckets)": False}
    rng = random.Random(1)
    groups: list[int] = []
    while sum(groups) < rows:
        groups.append(rng.randint(1, 500))
    conns: dict[str, sqlite3.Connection] = {}
    for k, name in enumerate(shapes):
        db = Database(sqlite3.connect(directory / f"delete-{k}.db"), execute_plugins=False)
        db.enable_wal()
        db.execute("PRAGMA synchronous = NORMAL")  # the store's default
        create_schema(db)
        with db.conn:
            db.conn.executemany(
                "INSERT INTO outbox (id, sink, msg_id, topic, payload, qos, created, priority)"
                " VALUES (?, 'up', ?, 't', ?, 1, 0, 2)",
                ((i, f"m{i}", b"x" * 80) for i in range(1, sum(groups) + 1)),
            )
        conns[name] = db.conn
    wall = dict.fromkeys(shapes, 0.0)
    cpu = dict.fromkeys(shapes, 0.0)
    first = 1
    for size in groups:
        for name, exact in shapes.items():
            conn = conns[name]
            started, started_cpu = time.perf_counter(), time.thread_time()
            with conn:
                delete_outbox(conn, range(first, first + size), exact=exact)
            wall[name] += time.perf_counter() - started
            cpu[name] += time.thread_time() - started_cpu
        first += size
    for conn in conns.values():
        conn.close()
    return {name: (wall[name] / rows * 1e6, cpu[name] / rows * 1e6) for name in shapes}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1000, help="readings per batch")
    parser.add_argument("--outbox", type=int, default=0, help="outbox rows per batch")
    parser.add_argument("--batches", type=int, default=15, help="timed batches per path")
    parser.add_argument("--deletes", type=int, default=50_000, help="outbox rows to delete")
    parser.add_argument("--devices", type=int, default=100, help="devices of a batch's readings")
    parser.add_argument("--failed", type=int, default=1000, help="outbox rows of a failed round")
    parser.add_argument(
        "--chunks",
        help="rows per INSERT statement to compare, the first the baseline (0: row by row)",
    )
    args = parser.parse_args(argv)
    paths = (
        {
            f"{int(c)} rows a statement" if int(c) else "row by row": int(c)
            for c in args.chunks.split(",")
        }
        if args.chunks
        else DEFAULT_PATHS
    )
    print(
        f"{args.rows} readings + {args.outbox} outbox rows a batch, median of {args.batches}"
        f" batches (ms from flush to commit); SQLite {sqlite3.sqlite_version}"
    )
    print(f"{'load':6s} {'path':22s} {'median ms':>10s} {'mean ms':>9s} {'ratio':>6s}")
    with tempfile.TemporaryDirectory(prefix="store-insert-") as tmp:
        directory = Path(tmp)
        for busy in (False, True):
            times = asyncio.run(
                time_batches(
                    directory, args.rows, args.outbox, args.batches, busy, paths, args.devices
                )
            )
            base = statistics.median(times[next(iter(paths))])
            for name, ms in times.items():
                median = statistics.median(ms)
                load = "busy" if busy else "idle"
                print(
                    f"{load:6s} {name:22s} {median:10.2f} {statistics.fmean(ms):9.2f}"
                    f" {median / base:5.2f}x"
                )
        print(f"\nfailed rounds: outbox_failed of {args.failed} rows, median of 10 (ms)")
        failure_paths = {"row by row": 0, f"buckets of {DELETE_BUCKET}": Store._chunk_rows}
        for busy in (False, True):
            times = asyncio.run(time_failures(directory, args.failed, 10, busy, failure_paths))
            base = statistics.median(times["row by row"])
            for name, ms in times.items():
                median = statistics.median(ms)
                load = "busy" if busy else "idle"
                print(f"  {load:6s} {name:16s} {median:9.2f} {median / base:5.2f}x")
        print(f"\noutbox deletes, {args.deletes} rows acked in groups of 1-500 (µs per row)")
        deletes = time_deletes(directory, args.deletes)
        wall0, cpu0 = next(iter(deletes.values()))
        print(f"  {'shape':18s} {'wall':>7s} {'ratio':>6s} {'CPU':>7s} {'ratio':>6s}")
        for name, (wall, cpu) in deletes.items():
            print(f"  {name:18s} {wall:7.2f} {wall / wall0:5.2f}x {cpu:7.2f} {cpu / cpu0:5.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
