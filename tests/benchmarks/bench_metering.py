"""Cost of the per-step meters and the per-pipeline timer on the per-reading path.

Pushes the same readings through the same 3-step pipeline (filter -> scale -> threshold)
bare (the baseline) and with meters, several rounds each, and prints ns per reading.
Usage:  .venv/bin/python tests/benchmarks/bench_metering.py [--readings 200000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

from pydantic import TypeAdapter
from reactivex.scheduler import ImmediateScheduler
from reactivex.subject import Subject

from gateway.counters import Counters
from gateway.model import Reading, Record
from gateway.pipeline.metering import Meters
from gateway.pipeline.steps import Step, compile_steps

STEPS = [
    {"filter": "value > -100"},
    {"scale": {"factor": 1.8, "offset": 32}},
    {"threshold": {"above": 1e9}},
]


def run(readings: list[Reading], metered: bool) -> float:
    steps = [TypeAdapter(Step).validate_python(s) for s in STEPS]
    meters = Meters() if metered else None
    op = compile_steps("bench", steps, ImmediateScheduler(), Counters(), meters)
    subject: Subject[Record] = Subject()
    sink: list[Record] = []
    subject.pipe(op).subscribe(sink.append)
    push = meters.timed("bench", subject.on_next) if meters else subject.on_next
    start = time.perf_counter()
    for r in readings:
        push(r)
    elapsed = time.perf_counter() - start
    assert len(sink) == len(readings)
    return elapsed / len(readings) * 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readings", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    readings = [
        Reading("bench", f"d{i % 50}", "t", float(i % 40), 1.7e9 + i, i)
        for i in range(args.readings)
    ]
    bare, metered = [], []
    for _ in range(args.rounds):  # interleaved, so machine load hits both alike
        bare.append(run(readings, metered=False))
        metered.append(run(readings, metered=True))
    b, m = statistics.median(bare), statistics.median(metered)
    print(f"readings per round: {args.readings}, rounds: {args.rounds} (median ns/reading)")
    print(f"baseline (no meters):       {b:8.0f} ns")
    print(f"3 step meters + timer:      {m:8.0f} ns  (+{m - b:.0f} ns, +{(m / b - 1) * 100:.0f}%)")


if __name__ == "__main__":
    main()
