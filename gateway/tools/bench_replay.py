"""Replay throughput on one core: readings/s per pipeline, and µs per reading per step.

Builds an in-memory recording (``--devices`` devices, one metric, a daily cycle plus noise,
one reading a minute each) and replays it through one pipeline per case, output discarded.
The ``baseline`` case (no steps) is the cost of the replay loop and routing; each step's
µs/reading is its case minus the baseline::

    python -m gateway.tools.bench_replay --readings 200000
"""

from __future__ import annotations

import argparse
import io
import math
import random
import sys
from collections.abc import Sequence
from typing import Any

from gateway.config.model import Config
from gateway.model import Reading
from gateway.replay import replay

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
    parser.add_argument("--repeat", type=int, default=3, help="best of N rounds per case")
    args = parser.parse_args(argv)
    readings = recording(args.readings, args.devices)
    print(f"{args.readings} readings, {args.devices} devices, best of {args.repeat}, one core")
    print(f"{'case':32s} {'readings/s':>12s} {'µs/reading':>11s} {'step µs':>8s}")
    configs = {name: config(steps) for name, steps in CASES.items()}
    best = dict.fromkeys(CASES, math.inf)
    for _ in range(args.repeat):  # rounds over every case, so a busy moment hits all alike
        for name, cfg in configs.items():
            summary = replay(cfg, iter(readings), io.BytesIO())
            best[name] = min(best[name], summary.seconds)
    baseline_us = best["baseline (no steps)"] / args.readings * 1e6
    for name, steps in CASES.items():
        per = best[name] / args.readings * 1e6
        step = f"{per - baseline_us:8.2f}" if steps else f"{'-':>8s}"
        print(f"{name:32s} {args.readings / best[name]:12,.0f} {per:11.2f} {step}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
