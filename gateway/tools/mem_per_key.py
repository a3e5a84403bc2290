"""Memory of the full pipeline's steps per device+metric, measured with tracemalloc.

The bench's full pipeline (a 10 s tumbling window, and the default detector) is built as the
replay builds it and fed ``--readings`` readings for each of ``--devices`` devices (one
metric); the Python memory it then holds, divided by the number of devices, is printed with
the allocation sites that hold most of it::

    python -m gateway.tools.mem_per_key --devices 10000 --readings 2     # fresh keys
    python -m gateway.tools.mem_per_key --devices 300 --readings 2100 --interval 300
        # detector state full: 2016 readings of novelty memory, 288 time-of-day slots

It also prints what that is for ``--project`` device+metrics (default 10,000). With ``--rss``
it measures the process instead (no tracemalloc, readings made as they are fed): its RSS
with the pipeline's state for every device, and the growth since the pipeline was built::

    python -m gateway.tools.mem_per_key --rss --devices 10000 --readings 2100 --interval 300
        # a real process holding 10,000 full keys

That feeds 21 million readings through both pipelines, most of the time in the window
pipeline, whose state per key is only the window of its latest readings (10 s windows,
readings ``--interval`` apart). ``--window-tail N`` feeds that pipeline only each device's
last ``N`` readings (the detector pipeline still sees them all), in less than half the
time. The heap it leaves is within about 130 bytes a key of the full run's (``N`` = 10), but
not the RSS: without the window pipeline's churn between the detector's allocations the
heap fragments less (10,000 keys: 14.8 KB a key, against 16.3-16.5 KB measured in full at
1,000 and 3,000 keys), so take it as a lower bound::

    python -m gateway.tools.mem_per_key --rss --window-tail 10 --devices 10000 \
        --readings 2100 --interval 300

``--anomaly JSON`` sizes the detector with other parameters (``'{"window": 300}'``).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tracemalloc
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import yaml

from gateway.config.model import Config
from gateway.counters import Counters
from gateway.model import Reading
from gateway.pipeline.steps import compile_steps
from gateway.replay import Feed, ReplayScheduler, StdoutOutputs
from gateway.router import Router, Target
from gateway.sinks.payloads import MessageIds

ANOMALY = Path(__file__).resolve().parents[2] / "config" / "examples" / "anomaly.yaml"


def config(anomaly: dict[str, Any] | None = None) -> Config:
    """The bench's full pipeline; ``anomaly`` overrides the default detector's parameters."""
    detector: list[dict[str, Any]] = yaml.safe_load(ANOMALY.read_text())["pipelines"][0]["steps"]
    for step in detector:
        if "anomaly" in step and anomaly:
            step["anomaly"] = {**(step["anomaly"] or {}), **anomaly}
    window = [{"window": {"size": "10s", "lateness": "2s"}}]
    return Config.model_validate(
        {
            "sources": [{"id": "fleet", "type": "mqtt", "topics": ["b/{device}/{metric}"]}],
            "pipelines": [
                {"id": "stats", "from": ["fleet"], "steps": window, "forward": ["aggregates"]},
                {"id": "detect", "from": ["fleet"], "steps": detector, "forward": ["alerts"]},
            ],
            "sinks": [{"id": "up", "type": "mqtt"}],
        }
    )


def readings(devices: int, per_device: int, interval: float) -> Iterator[Reading]:
    """``per_device`` readings of every device in turn, ``interval`` apart, one metric."""
    for k in range(per_device):
        for d in range(devices):
            yield Reading(
                "fleet",
                f"dev-{d:05d}",
                "temp",
                20.0 + d % 7 + k * 0.1,
                1.7e9 + k * interval + d * 1e-5,
            )


def build(cfg: Config, start: float, out: IO[bytes]) -> dict[str, list[Callable[[Reading], None]]]:
    """The pipelines of ``cfg`` as the replay builds them, writing to ``out``: each one's pushes."""
    scheduler = ReplayScheduler(datetime.fromtimestamp(start, UTC))
    outputs, counters, ids = StdoutOutputs(out), Counters(), MessageIds()
    sink = cfg.sinks[0]
    target = Target(sink.id, sink.topics.reading, sink.topics.aggregate, sink.topics.alert, 1)
    pushes: dict[str, list[Callable[[Reading], None]]] = {}
    for p in cfg.pipelines:
        feed = Feed()
        router = Router(cfg.gateway.id, p.id, outputs, [target], ids, p.forward)
        feed.pipe(compile_steps(p.id, p.steps, scheduler, counters)).subscribe(router)
        pushes[p.id] = list(feed.pushes)
    return pushes


def rss_mb() -> float:
    """This process's resident set size in MB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def feed(
    pipelines: dict[str, list[Callable[[Reading], None]]],
    fed: Iterable[Reading],
    devices: int,
    per_device: int,
    window_tail: int | None,
) -> None:
    """Push every reading to every pipeline; with ``window_tail``, the window pipeline
    (``stats``) sees only each device's last that many readings."""
    every = [push for each in pipelines.values() for push in each]
    detect = pipelines["detect"]
    tail_from = devices * (per_device - window_tail) if window_tail is not None else 0
    for n, reading in enumerate(fed):
        for push in every if n >= tail_from else detect:
            push(reading)


def measure_rss(
    cfg: Config,
    out: IO[bytes],
    devices: int,
    per_device: int,
    interval: float,
    window_tail: int | None = None,
) -> None:
    """Feed the pipelines in this process; print its RSS before and after."""
    gc.collect()
    before = rss_mb()
    pipelines = build(cfg, 1.7e9, out)
    feed(pipelines, readings(devices, per_device, interval), devices, per_device, window_tail)
    gc.collect()
    after = rss_mb()
    print(
        f"{devices} devices x {per_device} readings, {interval:g}s apart: RSS {after:,.1f} MB"
        f" ({before:,.1f} MB before the pipelines; {(after - before) * 1e6 / devices:,.0f}"
        f" bytes per device+metric)"
    )


def measure_heap(
    cfg: Config,
    out: IO[bytes],
    devices: int,
    per_device: int,
    interval: float,
    project: int,
    top: int,
    window_tail: int | None = None,
) -> None:
    """Feed the pipelines under tracemalloc; print what they hold and where."""
    fed = list(readings(devices, per_device, interval))
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    pipelines = build(cfg, fed[0].ts, out)  # held until the snapshot
    feed(pipelines, fed, devices, per_device, window_tail)
    gc.collect()
    stats = tracemalloc.take_snapshot().compare_to(before, "lineno")
    tracemalloc.stop()
    total = sum(s.size_diff for s in stats)
    print(
        f"{devices} devices x {per_device} readings, {interval:g}s apart: {total / devices:,.0f}"
        f" bytes per device+metric, {total / devices * project / 1e6:,.1f} MB for {project:,}"
    )
    for s in stats[:top]:
        frame = s.traceback[0]
        print(f"  {s.size_diff / devices:8,.0f} B  {Path(frame.filename).name}:{frame.lineno}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--readings", type=int, default=2, help="readings per device")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between readings")
    parser.add_argument("--project", type=int, default=10_000, help="device+metrics projected")
    parser.add_argument("--top", type=int, default=8, help="allocation sites shown")
    parser.add_argument("--rss", action="store_true", help="measure this process's RSS")
    parser.add_argument(
        "--window-tail",
        type=int,
        metavar="N",
        help="feed the window pipeline only each device's last N readings",
    )
    parser.add_argument(
        "--anomaly",
        type=json.loads,
        metavar="JSON",
        help='the detector\'s parameters, e.g. \'{"window": 300, "min_count": 150}\'',
    )
    args = parser.parse_args(argv)
    cfg = config(args.anomaly)
    with open(os.devnull, "wb") as out:  # what is written is output, not state
        if args.rss:
            measure_rss(cfg, out, args.devices, args.readings, args.interval, args.window_tail)
        else:
            measure_heap(
                cfg,
                out,
                args.devices,
                args.readings,
                args.interval,
                args.project,
                args.top,
                args.window_tail,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
