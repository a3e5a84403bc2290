"""Precision, recall and time-to-detect of a config's detectors on the simulated fleet.

Generates a fleet recording offline with the simulators' own signal model and injected
defects (one defect kind per device, the other devices clean), keeps the simulators' ground
truth labels, replays the recording through the config in event time, and matches raised
alerts to the labelled episodes of the same device and metric::

    python -m gateway.tools.sim_eval -c config/examples/defects.yaml

An alert matches an episode when its event time lies in ``[start, end + grace]``. Per defect
kind: recall = episodes with a matching alert / episodes; precision = alerts that match an
episode / all alerts on the series carrying that defect; time to detect = first matching
alert - episode start. The ``none`` row counts alerts on the clean series (false alarms).
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path

import orjson

from gateway.config.loader import load
from gateway.model import Reading
from gateway.replay import replay
from simulators.signals import ReadingSource, device_names, parse_fault

DEFAULT_FAULTS = (
    "spike:device=dev-01,prob=0.003",
    "drift:device=dev-02,at=36h,rate=0.5",
    "stuck:device=dev-03,at=40h,for=3h",
    "dropout:device=dev-04,at=44h,for=1h",
    "noise_burst:device=dev-05,at=48h,for=2h,factor=10",
    "stuck:device=dev-06,at=60h,for=2h",
    "dropout:device=dev-07,at=66h,for=30m",
    "drift:device=dev-08,at=50h,rate=-0.3",
)


DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "config" / "examples" / "defects.yaml"
"""The example in a checkout (the tools run from a clone of the repository)."""


def recording(
    source: ReadingSource, start: float, interval: float, steps: int
) -> Iterator[Reading]:
    """Every series sampled every ``interval`` seconds, in time order."""
    n = len(source.series)
    for k in range(steps):
        ts = start + k * interval
        for _ in range(n):
            r = source.take(ts)
            if r is not None:
                yield Reading("fleet", r.device, r.metric, r.value, r.ts, r.seq)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", default=str(DEFAULT_CONFIG))
    parser.add_argument("--devices", type=int, default=20)
    parser.add_argument("--metric", default="temperature")
    parser.add_argument("--interval", type=float, default=60.0, help="seconds between readings")
    parser.add_argument("--days", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grace", type=float, default=3600.0, help="seconds after an episode")
    parser.add_argument("--fault", action="append", help="replaces the default defect set")
    args = parser.parse_args(argv)

    start = 1_700_000_000.0
    faults = [parse_fault(spec) for spec in (args.fault or DEFAULT_FAULTS)]
    source = ReadingSource(
        device_names(args.devices), (args.metric,), seed=args.seed, start_ts=start, faults=faults
    )
    steps = int(args.days * 86400 / args.interval)
    out = io.BytesIO()
    summary = replay(load(args.config), recording(source, start, args.interval, steps), out)
    labels = source.labels(start + (steps - 1) * args.interval)

    alerts = [
        doc["payload"]
        for doc in map(orjson.loads, out.getvalue().splitlines())
        if doc["payload"].get("kind") == "alert" and doc["payload"]["state"] == "raised"
    ]
    by_series: dict[tuple[str, str], list[dict[str, str | float]]] = defaultdict(list)
    for label in labels:
        by_series[(str(label["device"]), str(label["metric"]))].append(label)
    kind_of_series = {key: str(eps[0]["kind"]) for key, eps in by_series.items()}

    detected: dict[int, float] = {}
    alerts_per_kind: dict[str, int] = defaultdict(int)
    matched_per_kind: dict[str, int] = defaultdict(int)
    detectors_per_kind: dict[str, set[str]] = defaultdict(set)
    for alert in alerts:
        key = (alert["device"], alert["metric"])
        kind = kind_of_series.get(key, "none")
        alerts_per_kind[kind] += 1
        hit = False
        for label in by_series.get(key, []):
            if float(label["start"]) <= alert["ts"] <= float(label["end"]) + args.grace:
                hit = True
                first = detected.get(id(label))
                delay = alert["ts"] - float(label["start"])
                if first is None or delay < first:
                    detected[id(label)] = delay
        if hit:
            matched_per_kind[kind] += 1
            detectors_per_kind[kind].add(str(alert["detector"]))

    print(
        f"{summary.readings} readings, {len(labels)} labelled episodes, {len(alerts)} alerts "
        f"({args.devices} devices x {args.metric}, every {args.interval:g}s for {args.days:g} days)"
    )
    print(
        f"{'defect':12s} {'episodes':>8s} {'found':>6s} {'recall':>7s} {'alerts':>7s} "
        f"{'precision':>9s} {'ttd median':>11s} {'ttd max':>9s}  detectors"
    )
    kinds = sorted({str(label["kind"]) for label in labels})
    for kind in [*kinds, "none"]:
        episodes = [label for label in labels if label["kind"] == kind]
        delays = [detected[id(label)] for label in episodes if id(label) in detected]
        n_alerts = alerts_per_kind.get(kind, 0)
        recall = f"{len(delays) / len(episodes):.2f}" if episodes else "-"
        precision = f"{matched_per_kind.get(kind, 0) / n_alerts:.2f}" if n_alerts else "-"
        median = f"{statistics.median(delays):.0f}s" if delays else "-"
        worst = f"{max(delays):.0f}s" if delays else "-"
        print(
            f"{kind:12s} {len(episodes):8d} {len(delays):6d} {recall:>7s} {n_alerts:7d} "
            f"{precision:>9s} {median:>11s} {worst:>9s}  "
            + ",".join(sorted(detectors_per_kind[kind]))
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
