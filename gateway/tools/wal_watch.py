"""The store's WAL and checkpointer under a sustained load, sampled over time.

Drives the real ``Store`` (its flusher, checkpointer and retention) with readings at a fixed rate
per phase, each also queued in the outbox and settled after its commit as a live sink with slow
acknowledgements does (``--take``: read and acked with ``outbox_take`` as a sink catching up does).
An optional reader thread runs ``SELECT count(*) FROM readings`` on a connection of its own, as the
bench's progress poll and the web UI do. Every ``--sample`` seconds it prints the WAL file's size,
what the checkpointer saw (WAL frames, passes, busy passes, restarts), the latency from queueing a
reading to its commit (p50/p99/max) and the outbox depth::

    python -m gateway.tools.wal_watch --phases 5000:20
    python -m gateway.tools.wal_watch --phases 5000:10,30000:10,5000:20 --reader-every 0.05
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from gateway.counters import Counters
from gateway.model import Reading
from gateway.store.config import StoreConfig
from gateway.store.store import PRIORITY_READING, OutboxRow, Store, WalStats

SINK = "up"
TICK = 0.005
PAGE = 4096


@dataclass
class Sample:
    t: float
    rate: float
    written_per_s: float
    wal_mb: float
    log_frames: int
    passes: int
    busy: int
    restarts: int
    writer_restarts: int
    writer_busy: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    outbox: int
    reads: int


@dataclass
class Load:
    """What the producer, the sink and the reader share (loop thread, except ``reads``)."""

    latencies: list[float] = field(default_factory=list)
    sent: int = 0
    reads: int = 0
    stop: threading.Event = field(default_factory=threading.Event)


def quantile(xs: Sequence[float], q: float) -> float:
    if not xs:
        return 0.0
    if len(xs) == 1:
        return xs[0]
    return statistics.quantiles(xs, n=100, method="inclusive")[round(q * 100) - 1]


def parse_phases(text: str) -> list[tuple[float, float]]:
    """``"5000:20,30000:10"`` -> [(5000.0, 20.0), (30000.0, 10.0)] (rate/s : seconds)."""
    phases = []
    for part in text.split(","):
        rate, _, seconds = part.partition(":")
        phases.append((float(rate), float(seconds)))
    return phases


async def produce(
    store: Store, load: Load, phases: list[tuple[float, float]], rate: list[float]
) -> None:
    """Queue readings (and their outbox rows) every tick at each phase's rate."""
    loop = asyncio.get_running_loop()
    seq = 0
    for phase_rate, seconds in phases:
        rate[0] = phase_rate
        start = loop.time()
        due_from = load.sent
        while (now := loop.time()) < start + seconds:
            n = int(phase_rate * (now - start)) - (load.sent - due_from)
            if n > 0:
                batch = [
                    Reading("wal", f"d{(seq + i) % 1000}", "temp", 21.5, time.time(), seq + i)
                    for i in range(n)
                ]
                store.add_readings(batch)
                for r in batch:
                    payload = b'{"v":21.5,"ts":%d,"seq":%d}' % (int(r.ts), r.seq or 0)
                    store.add_outbox(
                        SINK, f"m{r.seq}", f"b/{r.device}/temp", payload, 1, PRIORITY_READING
                    )
                seq += n
                load.sent += n
                store.when_committed(partial(committed, load, time.perf_counter()))
            await asyncio.sleep(TICK)


def committed(load: Load, queued: float) -> None:
    load.latencies.append(time.perf_counter() - queued)


def live_sink(store: Store) -> None:
    """Settle each row after its commit, as a live sink does whose acknowledgements come
    later than the group commit (rows acknowledged before it are never written)."""

    def feed(rows: list[OutboxRow]) -> None:
        ids = [r.id for r in rows]
        store.when_committed(partial(store.outbox_settled, ids))

    store.outbox_feed(SINK, feed)


async def catch_up_sink(store: Store, batch: int) -> None:
    """Read the oldest rows and ack them on the next read, as a sink catching up does."""
    ready = store.outbox_signal(SINK)
    acked: list[int] = []
    while True:
        ready.clear()
        rows = await store.outbox_take(SINK, batch, acked)
        acked = [r.id for r in rows]
        if not rows:
            await ready.wait()


def reader(path: Path, every: float, load: Load) -> None:
    """``count(*)`` over the readings every ``every`` seconds on a connection of its own."""
    while not path.exists() and not load.stop.is_set():
        time.sleep(0.01)
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        while not load.stop.wait(every):
            with contextlib.suppress(sqlite3.OperationalError):
                conn.execute("SELECT count(*) FROM readings").fetchone()
                load.reads += 1
    finally:
        conn.close()


async def watch(args: argparse.Namespace, path: Path) -> list[Sample]:
    counters = Counters()
    config = StoreConfig(path=path, synchronous=args.synchronous)
    phases = parse_phases(args.phases)
    load = Load()
    rate = [0.0]
    samples: list[Sample] = []
    wal = Path(f"{path}-wal")
    async with Store(config, counters) as store:
        runner = asyncio.create_task(store.run(), name="store.run")
        sink = None
        if args.take:
            sink = asyncio.create_task(catch_up_sink(store, args.take), name="sink")
        else:
            live_sink(store)
        thread = None
        if args.reader_every:
            thread = threading.Thread(target=reader, args=(path, args.reader_every, load))
            thread.start()
        producer = asyncio.create_task(produce(store, load, phases, rate), name="producer")
        t0 = time.monotonic()
        last = WalStats()
        written = 0
        reads = 0
        try:
            while not producer.done() or store.pending or await store.outbox_depth():
                await asyncio.wait((producer,), timeout=args.sample)
                if producer.done():
                    producer.result()  # raises what failed it
                    await asyncio.sleep(args.sample)
                if runner.done():
                    runner.result()  # raises what stopped the store
                stats, lat = store.wal_stats, load.latencies
                load.latencies = []
                now_written = counters.get("store", "readings_written")
                s = Sample(
                    t=round(time.monotonic() - t0, 2),
                    rate=rate[0] if not producer.done() else 0.0,
                    written_per_s=round((now_written - written) / args.sample),
                    wal_mb=round(wal_size(wal) / 1e6, 1),
                    log_frames=stats.log,
                    passes=stats.passes - last.passes,
                    busy=stats.busy - last.busy,
                    restarts=stats.restarts - last.restarts,
                    writer_restarts=getattr(stats, "writer_restarts", 0)
                    - getattr(last, "writer_restarts", 0),
                    writer_busy=getattr(stats, "writer_busy", 0) - getattr(last, "writer_busy", 0),
                    p50_ms=round(quantile(lat, 0.5) * 1e3, 1),
                    p99_ms=round(quantile(lat, 0.99) * 1e3, 1),
                    max_ms=round(max(lat, default=0.0) * 1e3, 1),
                    outbox=await store.outbox_depth(),
                    reads=load.reads - reads,
                )
                written, reads = now_written, load.reads
                last = WalStats(**asdict(stats))
                samples.append(s)
                print(format_sample(s), flush=True)
                if time.monotonic() - t0 > args.max_seconds:
                    print("giving up: the backlog did not drain", file=sys.stderr)
                    break
        finally:
            load.stop.set()
            if thread is not None:
                thread.join()
            for task in (producer, sink, runner):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
        print(f"write errors: {counters.get('store', 'write_errors')}")
        most = store.wal_stats.max_log
        print(f"max WAL frames seen: {most} ({most * PAGE / 1e6:.1f} MB)")
        longest = getattr(store.wal_stats, "writer_seconds_max", 0.0)
        total = getattr(store.wal_stats, "writer_seconds", 0.0)
        n = getattr(store.wal_stats, "writer_restarts", 0)
        print(
            f"RESTARTs on the writer: {n}, mean {total / max(n, 1) * 1e3:.1f} ms,"
            f" longest {longest * 1e3:.1f} ms"
        )
    return samples


def wal_size(wal: Path) -> int:
    """The WAL file's size in bytes (0 while it does not exist)."""
    try:
        return os.stat(wal).st_size
    except FileNotFoundError:
        return 0


HEADER = (
    f"{'t':>6} {'rate':>7} {'stored/s':>8} {'wal MB':>7} {'frames':>7} {'passes':>6}"
    f" {'busy':>5} {'rst':>4} {'wrst':>4} {'wbsy':>4} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7}"
    f" {'outbox':>7} {'reads':>5}"
)


def format_sample(s: Sample) -> str:
    return (
        f"{s.t:6.1f} {s.rate:7.0f} {s.written_per_s:8.0f} {s.wal_mb:7.1f} {s.log_frames:7d}"
        f" {s.passes:6d} {s.busy:5d} {s.restarts:4d} {s.writer_restarts:4d} {s.writer_busy:4d}"
        f" {s.p50_ms:7.1f} {s.p99_ms:7.1f} {s.max_ms:7.1f} {s.outbox:7d} {s.reads:5d}"
    )


def summary(samples: list[Sample]) -> dict[str, Any]:
    return {
        "max_wal_mb": max((s.wal_mb for s in samples), default=0.0),
        "max_log_frames": max((s.log_frames for s in samples), default=0),
        "restarts": sum(s.restarts for s in samples),
        "writer_restarts": sum(s.writer_restarts for s in samples),
        "worst_p99_ms": max((s.p99_ms for s in samples), default=0.0),
        "median_p99_ms": statistics.median([s.p99_ms for s in samples]) if samples else 0.0,
        "max_ms": max((s.max_ms for s in samples), default=0.0),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phases", default="5000:20", help="rate/s:seconds, comma-separated")
    parser.add_argument("--sample", type=float, default=1.0, help="seconds between samples")
    parser.add_argument("--reader-every", type=float, default=0.0, help="seconds; 0: no reader")
    parser.add_argument("--take", type=int, default=0, help="sink catches up in batches of N")
    parser.add_argument("--synchronous", choices=("normal", "full"), default="normal")
    parser.add_argument("--dir", type=Path, default=None, help="where the database goes")
    parser.add_argument("--max-seconds", type=float, default=300.0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        print(HEADER)
        samples = asyncio.run(watch(args, Path(tmp) / "gw.db"))
    result = summary(samples)
    print(json.dumps(result))
    if args.json is not None:
        args.json.write_text(
            json.dumps({"summary": result, "samples": [asdict(s) for s in samples]}, indent=1)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
