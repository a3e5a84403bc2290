"""Replay throughput on one core: readings/s per pipeline, and µs per reading per step.

Builds an in-memory recording (``--devices`` devices, one metric, a daily cycle plus noise,
one reading a minute each) and replays it through one pipeline per case, output discarded.
The ``baseline`` case (no steps) is the cost of the replay loop and routing; each step's
µs/reading is its case minus the baseline. ``parse jsonl`` is the cost of reading the same
recording from JSON lines (not included in the cases). Times are CPU seconds of this
process (so other load on the machine counts less), the median of ``--repeat`` rounds::

    python -m gateway.tools.bench_replay --readings 200000
"""

from __future__ import annotations

import argparse
import io
import math
import random
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

import orjson

from gateway.config.model import Config
from gateway.model import Reading
from gateway.replay import Rejects, read_jsonl, replay

PARSE = "parse jsonl (not in the cases)"

CASES: dict[str, list[dict[str, Any]]] = {
    "baseline (no steps)": [],
    "window 1m count/mean/min/max": [{"window": {"size": "1m"}}],
    "window 10m p95 (percentile)": [{"window": {"size": "10m", "aggregates": ["p95"]}}],
    "threshold": [{"threshold": {"above": 1000}}],
    "range": [{"range": {"min": -100, "max": 1000}}],
    "rate_of_change": [{"rate_of_change": {"max": 100, "per": "1m"}}],
    "zscore": [{"zscore": {"window": 100}}],
    "ewma": [{"ewma": None}],
    "mad": [{"mad": {"window": 100}}],
    "cusum": [{"cusum": None}],
    "page_hinkley": [{"page_hinkley": None}],
    "stuck": [{"stuck": {"count": 20}}],
    "spike": [{"spike": None}],
    "silence": [{"silence": {"after": "10m"}}],
    "anomaly (default detector)": [{"anomaly": None}],
}


def recording(n: int, devices: int) -> list[Reading]:
    rng = random.Random(1)
    out = []
    start = 1_700_000_000.0
    for k in range(n):
        device = k % devices
        ts = start + (k // devices) * 60.0
        value = 20 + 3 * math.sin(2 * math.pi * ts / 86400) + rng.gauss(0, 0.2)
        out.append(Reading("bench", f"dev-{device}", "temperature", value, ts, None))
    return out


def config(steps: list[dict[str, Any]]) -> Config:
    return Config.model_validate(
        {
            "sources": [{"id": "bench", "type": "mqtt", "topics": ["s/{device}/{metric}"]}],
            "pipelines": [{"id": "p", "from": ["bench"], "steps": steps, "forward": ["alerts"]}],
        }
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readings", type=int, default=200_000)
    parser.add_argument("--devices", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3, help="median of N rounds per case")
    args = parser.parse_args(argv)
    readings = recording(args.readings, args.devices)
    print(f"{args.readings} readings, {args.devices} devices, median of {args.repeat} (CPU time)")
    print(f"{'case':32s} {'readings/s':>12s} {'µs/reading':>11s} {'step µs':>8s}")
    configs = {name: config(steps) for name, steps in CASES.items()}
    lines = b"".join(
        orjson.dumps({"device": r.device, "metric": r.metric, "value": r.value, "ts": r.ts}) + b"\n"
        for r in readings
    )
    times: dict[str, list[float]] = {name: [] for name in (PARSE, *CASES)}
    for _ in range(args.repeat):  # rounds over every case, so a busy moment hits all alike
        started = time.process_time()
        for _reading in read_jsonl(io.BytesIO(lines), "d", None, "bench", Rejects()):
            pass
        times[PARSE].append(time.process_time() - started)
        for name, cfg in configs.items():
            started = time.process_time()
            replay(cfg, iter(readings), io.BytesIO())
            times[name].append(time.process_time() - started)
    median = {name: statistics.median(t) for name, t in times.items()}
    baseline_us = median["baseline (no steps)"] / args.readings * 1e6
    for name, seconds in median.items():
        per = seconds / args.readings * 1e6
        step = f"{per - baseline_us:8.2f}" if CASES.get(name) else f"{'-':>8s}"
        print(f"{name:32s} {args.readings / seconds:12,.0f} {per:11.2f} {step}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
