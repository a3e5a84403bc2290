"""Micro-benchmark of the per-reading hot path, in-process: µs per reading per step.

Each Rx step is timed alone behind a ``Subject`` and the cost of an empty chain (the subject
and the terminal observer) is subtracted; decode, router and intake are timed as calls. The
router and the intake queue into a real store, which commits every ``STORE_CHUNK`` calls
(untimed), as the gateway's flusher does: a store that never commits would hold hundreds of
thousands of pending rows, whose growth and GC walks the figure would measure.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from pydantic import TypeAdapter
from reactivex.scheduler import HistoricalScheduler
from reactivex.subject import Subject

from gateway.counters import Counters
from gateway.intake import Intake
from gateway.model import Reading, Record
from gateway.pipeline.steps import Step, compile_steps
from gateway.router import Router, Target
from gateway.sinks.payloads import MessageIds
from gateway.sources.codecs import JsonFormat, build_decoder
from gateway.store.config import StoreConfig
from gateway.store.store import Store

STEPS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("filter", {"filter": "value > -1000000 and device.startswith('dev')"}),
    ("map", {"map": "value * 1.8 + 32"}),
    ("scale", {"scale": {"factor": 1.8, "offset": 32}}),
    ("dedupe", {"dedupe": {"size": 10000}}),
    ("window 10s", {"window": {"size": "10s", "aggregates": ["count", "mean", "min", "max"]}}),
    ("window 10s p95", {"window": {"size": "10s", "aggregates": ["mean", "p95"]}}),
    ("threshold", {"threshold": {"above": 80, "hysteresis": 1, "for": "5s"}}),
)


def _readings(n: int, devices: int = 1000) -> list[Reading]:
    t0 = time.time() - 60
    return [
        Reading("fleet", f"dev-{i % devices:05d}", "temp", 20.0 + (i % 17) * 0.5, t0 + i / 1e4, i)
        for i in range(n)
    ]


STORE_CHUNK = 2000
"""Calls between two (untimed) commits of the store: its default ``batch_max``."""


def _store_us(
    make: Callable[[Store], Callable[[Any], None]], items: Sequence[Any], repeat: int
) -> float:
    """Best µs per item of ``make(store)(item)`` over ``items``, committing every chunk."""

    async def run() -> float:
        with tempfile.TemporaryDirectory() as tmp:
            async with Store(StoreConfig(path=Path(tmp) / "micro.db"), Counters()) as store:
                call = make(store)
                chunks = [items[i : i + STORE_CHUNK] for i in range(0, len(items), STORE_CHUNK)]
                best = float("inf")
                for _ in range(repeat):
                    spent = 0.0
                    for chunk in chunks:
                        t = time.perf_counter()
                        for item in chunk:
                            call(item)
                        spent += time.perf_counter() - t
                        await store.flush()
                    best = min(best, spent)
                return best / len(items) * 1e6

    return asyncio.run(run())


def _best_us(run: Callable[[], None], n: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t)
    return best / n * 1e6


def _chain_us(steps: Sequence[dict[str, Any]], readings: list[Reading], repeat: int) -> float:
    adapter: TypeAdapter[list[Step]] = TypeAdapter(list[Step])

    def run() -> None:
        scheduler = HistoricalScheduler(initial_clock=datetime.now(UTC))
        subject: Subject[Record] = Subject()
        operator = compile_steps("bench", adapter.validate_python(steps), scheduler, Counters())
        subject.pipe(operator).subscribe(lambda _r: None)
        push = subject.on_next
        for r in readings:
            push(r)

    return _best_us(run, len(readings), repeat)


def run_micro(
    n: int, repeat: int = 3, detector: Sequence[dict[str, Any]] = ()
) -> list[tuple[str, float]]:
    """(what, µs per reading) for decode, each step, the router and the intake."""
    readings = _readings(n)
    out: list[tuple[str, float]] = []

    decode = build_decoder(JsonFormat(type="json"))
    payloads = [
        orjson.dumps(
            {"device": r.device, "metric": r.metric, "value": r.value, "ts": r.ts, "seq": r.seq}
        )
        for r in readings
    ]

    def decode_all() -> None:
        now = time.time()
        for p in payloads:
            decode(p, "fleet", None, None, now)

    out.append(("decode json (orjson)", _best_us(decode_all, n, repeat)))

    def construct() -> None:
        for r in readings:
            Reading(r.source, r.device, r.metric, r.value, r.ts, r.seq)

    out.append(("Reading(...) construction", _best_us(construct, n, repeat)))

    empty = _chain_us([], readings, repeat)
    out.append(("Rx: subject + observer (empty chain)", empty))
    named = list(STEPS)
    if detector:
        named.append(("default detector", {"_chain": list(detector)}))
    for name, step in named:
        chain = step.get("_chain", [step])
        out.append((f"Rx step: {name}", max(_chain_us(chain, readings, repeat) - empty, 0.0)))

    target = Target("up", "out/{device}/{metric}", "a/{device}", "b/{device}", 1)

    def router(store: Store) -> Callable[[Reading], None]:
        return Router("bench", "forward", store, [target], MessageIds(), ["readings"])

    out.append(("router: topic + payload + outbox row", _store_us(router, readings, repeat)))

    def intake(store: Store) -> Callable[[list[Reading]], None]:
        return Intake(store, {"fleet": [lambda _r: None]}, Counters(), time.time).accept

    batches = [[r] for r in readings]
    out.append(("intake: queue for store + route", _store_us(intake, batches, repeat)))
    return out
