"""What the web UI costs the hot path, and what its publisher costs per tick.

Prints figures; compares in the same run against the intake without the UI's tap.

    .venv/bin/python tests/benchmarks/bench_web_tap.py [--readings 1000000] [--pairs 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Callable

from reactivex.subject import Subject

from gateway.counters import Counters
from gateway.intake import Intake
from gateway.model import Reading
from gateway.web.live import LiveFeed


class DiscardingStore:
    """Stands in for the store's queue: the benchmark measures the intake and its routes."""

    def add_readings(self, readings: list[Reading]) -> None:
        pass


def intake_ns_per_reading(
    readings: list[Reading], routes: list[Callable[[Reading], None]], repeat: int
) -> float:
    intake = Intake(DiscardingStore(), {"fleet": routes}, Counters(), time.time)  # type: ignore[arg-type]
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter_ns()
        for r in readings:
            intake.accept([r])
        best = min(best, (time.perf_counter_ns() - t0) / len(readings))
    return best


async def publish_us(feed: LiveFeed, readings: list[Reading], pages: int, ticks: int) -> float:
    for _ in range(pages):
        feed.connect()
    times = []
    for _ in range(ticks):
        for r in readings:
            feed.tap(r)
        t0 = time.perf_counter_ns()
        feed.publish()
        times.append((time.perf_counter_ns() - t0) / 1000)
        for client in feed.clients:
            while not client.queue.empty():
                client.queue.get_nowait()
    feed.close()
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readings", type=int, default=1_000_000)
    parser.add_argument("--pairs", type=int, default=1000, help="device+metric pairs")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    readings = [
        Reading("fleet", f"dev-{i % args.pairs:04d}", "temperature", float(i), 1.7e9 + i, i)
        for i in range(args.readings)
    ]
    pipeline: Subject[Reading] = Subject()
    pipeline.subscribe(lambda _r: None)  # a pipeline without steps, as the baseline route
    feed = LiveFeed()
    base = intake_ns_per_reading(readings, [pipeline.on_next], args.repeat)
    tapped = intake_ns_per_reading(readings, [pipeline.on_next, feed.tap], args.repeat)
    print(f"intake, 1 pipeline route (baseline): {base:7.1f} ns/reading")
    print(f"intake, same + web UI tap:           {tapped:7.1f} ns/reading")
    print(f"tap cost: {tapped - base:+.1f} ns/reading ({(tapped - base) / base:+.1%})")
    one_tick = readings[: args.pairs]
    for pages in (0, 1, 10):
        us = asyncio.run(publish_us(LiveFeed(), one_tick, pages, 50))
        print(
            f"publish of {args.pairs} changed pairs to {pages:2d} pages: {us:8.1f} µs per tick"
            f" (default 2 ticks/s)"
        )


if __name__ == "__main__":
    main()
