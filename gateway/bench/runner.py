"""``edge-gateway bench``: size this box. One run, the same private brokers, every scenario.

For each scenario the publish rate is ramped (x``factor`` per step, then bisected after the
first failure) until readings are lost or arrive later than ``grace`` after the step (the
backlog grows); the highest rate delivered in full is the sustained zero-loss rate. Then
latency is measured at a fixed rate (5,000 readings/s), and CPU and RSS are read from
``/proc``. Ratios are to a ceiling measured in the same run: the bare paho-mqtt 2 client.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson
import yaml

from gateway.bench.agents import METRIC, device_name
from gateway.bench.brokers import Broker, mosquitto_binary
from gateway.bench.collector import Collector
from gateway.bench.micro import run_micro
from gateway.bench.peers import PEERS, PeerUnavailable, make_peer
from gateway.bench.soak import rss_trend, slope
from gateway.bench.systems import (
    Agent,
    Ceiling,
    GatewayRun,
    Load,
    System,
    cpu_seconds,
    memory_mb,
    rss_parts_mb,
    wait_for,
)

SOAK_SAMPLE_S = 1.0
"""The soak sends a second's worth of readings, then samples RSS."""
SOAK_BACKLOG_EVERY = 10
"""... and every 10 samples, how many readings are not stored yet (a count over SQLite)."""
AGGREGATE_WINDOWS = 3
"""Window closings of all devices whose aggregates' latency is measured (3,000 at 1,000)."""
AGGREGATE_WAIT_S = 10.0
"""How long after the load the last of those aggregates may take to arrive."""
ANOMALY_EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "examples" / "anomaly.yaml"


@dataclass(frozen=True)
class Profile:
    """How long and how hard: ``full`` for real figures, ``quick`` for a smoke test."""

    step_s: float
    start_rate: float
    factor: float
    max_rate: float
    refine: int
    grace_s: float
    latency_rate: float
    latency_s: float
    window_s: float
    lateness_s: float
    rss_devices: int
    replay_readings: int
    micro_readings: int
    max_steps: int = 12


FULL = Profile(
    step_s=2.0,
    start_rate=2000,
    factor=1.6,
    max_rate=200_000,
    refine=4,
    grace_s=1.0,
    latency_rate=5000,
    latency_s=4.0,
    window_s=10.0,
    lateness_s=2.0,
    rss_devices=10_000,
    replay_readings=300_000,
    micro_readings=100_000,
)
QUICK = Profile(
    step_s=0.3,
    start_rate=300,
    factor=2.0,
    max_rate=600,
    refine=0,
    grace_s=3.0,
    latency_rate=300,
    latency_s=0.5,
    window_s=1.0,
    lateness_s=0.2,
    rss_devices=300,
    replay_readings=2000,
    micro_readings=2000,
    max_steps=3,
)


@dataclass
class Step:
    rate: float
    achieved: float
    sent: int
    delivered: int
    ok: bool
    cpu_pct: float
    backlog: int | None = None
    """Readings not through when the step's grace ran out (a step that failed)."""
    drain_s: float | None = None
    """Seconds from then until they were through (or progress stopped: the rest was lost)."""
    left: int | None = None
    """Of those, readings not through when progress stopped (lost)."""


@dataclass
class Result:
    """One row of the table and one object of the JSON list."""

    name: str
    kind: str
    readings_per_s: float | None = None
    ratio_to_ceiling: float | None = None
    ceiling: str | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    cpu_pct: float | None = None
    """CPU of the system under test at the latency rate (100 = one core)."""
    rss_mb: float | None = None
    """Peak RSS of the system under test over the scenario."""
    cpu_pct_at_max: float | None = None
    rss_10k_devices_mb: float | None = None
    rss_slope_mb_per_hour: float | None = None
    """Soak: least-squares RSS slope over the second half of the samples."""
    rss_final_mb: float | None = None
    us_per_reading: float | None = None
    latency_rate: float | None = None
    notes: list[str] = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)


def _percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] * 1000


class Bench:
    """One benchmark run: two private brokers, a collector, scenarios one after another."""

    def __init__(self, profile: Profile, workdir: Path, log: Callable[[str], None]) -> None:
        self.p = profile
        self.workdir = workdir
        self.say = log
        self.local = Broker(workdir, "local")
        self.upstream = Broker(workdir, "upstream")
        self.collector = Collector("127.0.0.1", self.upstream.port)
        self.seq = 0
        self.results: dict[str, Result] = {}
        self.unavailable: dict[str, str] = {}
        """Peers that cannot run here, with the reason (not retried for the next QoS)."""

    def close(self) -> None:
        self.collector.close()
        self.upstream.stop()
        self.local.stop()

    # -------------------------------------------------------------- measuring one system

    def _deliver(self, system: System, load: Load, rate: float, count: int) -> Step:
        base = system.progress()
        cpu0, t0 = cpu_seconds(system.pid), time.monotonic()
        sent, elapsed = load.send(rate, count, self.seq)
        self.seq += sent
        deadline = time.monotonic() + self.p.grace_s
        while system.progress() < base + sent and time.monotonic() < deadline:
            time.sleep(0.01)
        delivered = system.progress() - base
        cpu = (cpu_seconds(system.pid) - cpu0) / max(time.monotonic() - t0, 1e-9) * 100
        achieved = sent / max(elapsed, 1e-9)
        # The sender falling behind is back-pressure (a pty) or a starved load generator:
        # either way this rate was not shown to be sustained.
        ok = delivered >= sent and achieved >= 0.95 * rate
        return Step(rate, achieved, sent, delivered, ok, cpu)

    def _settle(
        self, system: System, until: int | None = None, quiet_s: float = 1.0, timeout: float = 30.0
    ) -> float:
        """Wait until the system's progress reaches ``until`` (its backlog is drained) or stops
        (what is left was lost), so that the next step does not count an earlier backlog;
        returns when (``time.monotonic``) progress last moved."""
        return _until_quiet(system.progress, until, quiet_s, timeout)

    def _drain(self, system: System, step: Step, expected: int) -> None:
        """Wait out a failed step's backlog, and say how big it was and how long it took."""
        step.backlog = max(0, expected - system.progress())
        t = time.monotonic()
        step.drain_s = round(self._settle(system, until=expected, quiet_s=2.0) - t, 2)
        step.left = max(0, expected - system.progress())
        self.say(f"      backlog {step.backlog}: {step.drain_s:.1f} s, {step.left} not through")

    def ramp(self, system: System, load: Load, result: Result) -> None:
        p = self.p
        expected = system.progress()  # what the system has shown once everything sent arrived
        warm = self._deliver(system, load, min(p.start_rate, 1000), max(int(p.start_rate / 4), 50))
        expected += warm.sent
        if not warm.ok:
            self._settle(system, until=expected, quiet_s=2.0)
        lo: Step | None = None
        hi: float | None = None
        rate = p.start_rate
        refined = 0
        for _ in range(p.max_steps):
            step = self._deliver(system, load, rate, max(int(rate * p.step_s), 1))
            expected += step.sent
            limited = step.achieved < 0.95 * rate
            self.say(
                f"    {rate:9.0f}/s -> sent at {step.achieved:9.0f}/s, delivered "
                f"{step.delivered}/{step.sent} {'ok' if step.ok else 'LOSS/BACKLOG'}"
                f"{' (sender fell behind)' if limited else ''}"
            )
            if step.ok and (lo is None or step.achieved > lo.achieved):
                lo = step
            if not step.ok:
                hi = rate
                self._drain(system, step, expected)
            result.steps.append(asdict(step))
            if limited:
                result.notes.append(f"sender fell behind at {rate:.0f}/s ({step.achieved:.0f}/s)")
            if hi is None:
                if rate >= p.max_rate:
                    break
                rate = min(rate * p.factor, p.max_rate)
            else:
                if refined >= p.refine:
                    break
                refined += 1
                rate = ((lo.rate if lo else 0) + hi) / 2
        if lo is not None:
            result.readings_per_s = round(lo.achieved)
            result.cpu_pct_at_max = round(lo.cpu_pct, 1)
        drains = [s for s in result.steps if s["backlog"]]
        if drains:
            worst = max(drains, key=lambda s: s["backlog"])
            through = worst["backlog"] - worst["left"]
            result.notes.append(
                f"backlog drain: {worst['backlog']} readings behind after the "
                f"{worst['rate']:.0f}/s step; {through} through in {worst['drain_s']:.1f} s "
                f"({through / max(worst['drain_s'], 1e-9):.0f}/s), {worst['left']} never"
            )
        # What comes next (latency at a fixed rate) must not queue behind the ramp's backlog.
        self._settle(system, until=expected, quiet_s=2.0, timeout=60.0)

    def latency(
        self, system: System, load: Load, result: Result, seconds: float, rate: float | None = None
    ) -> None:
        c = self.collector
        c.reset_latencies()
        c.recording = True
        rate = rate or self.p.latency_rate
        step = self._deliver(system, load, rate, int(rate * seconds))
        c.recording = False
        _record_latency(result, c.latencies, step, rate)

    def steady_latency(self, system: System, load: Load, result: Result) -> None:
        """Latency at the fixed rate in a steady state: after a short warm-up, before the ramp
        (whose overload would leave a backlog, a grown WAL and a cold start behind it)."""
        self._deliver(
            system, load, min(self.p.start_rate, 1000), max(int(self.p.start_rate / 4), 50)
        )
        self._settle(system, timeout=30)
        self.latency(system, load, result, self.p.latency_s)
        self._settle(system, timeout=60)

    def aggregate_latency(self, system: System, load: Load, result: Result, rate: float) -> None:
        """How long after its window closed (``end + lateness`` by the devices' clock, which
        is this machine's) each aggregate arrived upstream, at a steady ``rate``.

        Counted: every device's aggregate of the ``AGGREGATE_WINDOWS`` windows that closed
        while all devices kept sending (each window began at least two rounds of all devices
        after the load started, and closed at least a second before it stopped). After the
        load the wait lasts until all of them arrived (or ``AGGREGATE_WAIT_S``), so neither
        windows an earlier step left open nor a cut-off tail skews the figures.
        """
        p, c = self.p, self.collector
        devices = load.devices
        # every device sends in every window (a smoke test's low rate gets fewer devices)
        load.devices = max(1, min(devices, int(rate * p.window_s / 4)))
        round_s = load.devices / rate
        seconds = AGGREGATE_WINDOWS * p.window_s + p.lateness_s + 2 * round_s + 1.5
        c.reset_latencies()
        c.recording = True
        t0 = time.time()
        try:
            step = self._deliver(system, load, rate, int(rate * seconds))
        finally:
            load.devices, n_devices = devices, load.devices
        t_end = t0 + step.sent / max(step.achieved, 1e-9)
        first = math.ceil((t0 + 2 * round_s) / p.window_s)
        ends = {
            k * p.window_s
            for k in range(first, first + AGGREGATE_WINDOWS)
            if k * p.window_s + p.lateness_s + 1.0 <= t_end
        }
        expected = n_devices * len(ends)

        def counted() -> list[tuple[float, float]]:
            return [(end, t) for end, t in c.aggregate_arrivals if end in ends]

        deadline = time.monotonic() + AGGREGATE_WAIT_S
        while len(counted()) < expected and time.monotonic() < deadline:
            time.sleep(0.05)
        c.recording = False
        samples = [t - (end + p.lateness_s) for end, t in counted()]
        _record_latency(result, samples, step, rate)
        worst = f", max {max(samples) * 1000:.1f} ms" if samples else ""
        result.notes.append(
            f"latency at {rate:.0f}/s: aggregate arrival - (window end + lateness), "
            f"{len(samples)} of {expected} aggregates ({n_devices} devices x {len(ends)} "
            f"windows that closed under load){worst}"
        )

    @contextmanager
    def _scenario(self, name: str, kind: str) -> Iterator[Result]:
        result = Result(name, kind)
        self.say(f"  {name}")
        t = time.monotonic()
        try:
            yield result
        except Exception as exc:  # one broken scenario must not lose the others' figures
            result.notes.append(f"failed: {exc!r}")
            self.say(f"    failed: {exc!r}")
        self.results[name] = result
        self.say(f"    ({time.monotonic() - t:.0f}s)")

    def _finish(self, system: System, result: Result) -> None:
        result.rss_mb = round(memory_mb(system.pid)[1], 1)
        system.stop()

    # -------------------------------------------------------------- scenarios

    def ceiling(self, name: str, mode: str, qos: int) -> None:
        with self._scenario(name, "ceiling") as result:
            publisher = Agent("publish", "--port", str(self.local.port), "--qos", str(qos))
            system = Ceiling(mode, qos, self.local.port, self.upstream.port, self.collector)
            try:
                load = Load(publisher)
                if mode == "forward":
                    self.steady_latency(system, load, result)
                self.ramp(system, load, result)
                if mode != "forward":
                    result.cpu_pct = self._cpu_at(system, load)
                self._finish(system, result)
            finally:
                system.stop()
                publisher.stop()

    def _cpu_at(self, system: System, load: Load) -> float:
        rate = self.p.latency_rate
        return round(self._deliver(system, load, rate, int(rate * self.p.latency_s)).cpu_pct, 1)

    def _config(
        self,
        name: str,
        pipelines: list[dict[str, Any]],
        *,
        qos_in: int,
        qos_out: int,
        synchronous: str = "normal",
        source: dict[str, Any] | None = None,
    ) -> tuple[Path, dict[str, Any]]:
        workdir = self.workdir / name
        workdir.mkdir()
        src = source or {
            "id": "fleet",
            "type": "mqtt",
            "broker": {"host": "127.0.0.1", "port": self.local.port},
            "topics": ["bench/{device}/{metric}"],
            "qos": qos_in,
            # No session kept after the scenario: every gateway scenario uses the client id
            # bench-fleet, and a kept QoS 1 session would queue the later scenarios' load on
            # the broker (costing it CPU meanwhile) and deliver it to the next gateway first.
            "session_expiry": 0,
        }
        config = {
            "gateway": {"id": "bench", "status_interval": "1h"},
            "store": {
                "path": str(workdir / "gateway.db"),
                "synchronous": synchronous,
                "retention": {"max_age": None, "max_rows": None, "interval": "1h"},
            },
            "sources": [src],
            "pipelines": pipelines,
            "sinks": [
                {
                    "id": "upstream",
                    "type": "mqtt",
                    "broker": {"host": "127.0.0.1", "port": self.upstream.port},
                    "qos": qos_out,
                    "topics": {
                        "reading": "out/{device}/{metric}",
                        "aggregate": "out/{device}/{metric}/agg",
                        "alert": "out/{device}/{metric}/alert",
                    },
                }
            ],
        }
        return workdir, config

    def forward(self, name: str, qos: int, ceiling: str, outbox: str = "sqlite") -> None:
        with self._scenario(name, "gateway") as result:
            pipelines = [
                {
                    "id": "forward",
                    "from": ["fleet"],
                    "steps": [{"filter": "value > -1000000"}],
                    "to": ["upstream"],
                    "forward": ["readings"],
                }
            ]
            workdir, config = self._config(name, pipelines, qos_in=qos, qos_out=qos)
            config["sinks"][0]["outbox"] = outbox
            publisher = Agent("publish", "--port", str(self.local.port), "--qos", str(qos))
            system = GatewayRun(workdir, config, "subscribed to", self.collector, True)
            self._forward_job(system, publisher, result, ceiling)

    def _forward_job(self, system: System, publisher: Agent, result: Result, ceiling: str) -> None:
        """Ramp, latency at the fixed rate and a clean stop of one forwarding system."""
        try:
            load = Load(publisher)
            self.steady_latency(system, load, result)
            self.ramp(system, load, result)
            self._latency_below_max(system, load, result)
            self._finish(system, result)
        finally:
            system.stop()
            publisher.stop()
        self._ratio(result, ceiling)

    def peer(self, peer: str, qos: int, ceiling: str, gateway: str) -> None:
        """A peer (``--peers``) on the forward job, measured like ``edge-gateway``."""
        with self._scenario(f"{peer}: forward q{qos}", "peer") as result:
            try:
                if peer in self.unavailable:
                    raise PeerUnavailable(self.unavailable[peer])
                workdir = self.workdir / f"{peer}-q{qos}"
                local, upstream = self.local.port, self.upstream.port
                system = make_peer(peer, workdir, local, upstream, qos, self.collector, self.say)
            except PeerUnavailable as exc:
                self.unavailable[peer] = str(exc)
                result.notes.append(f"skipped: {exc}")
                self.say(f"    skipped: {exc}")
                return
            publisher = Agent("publish", "--port", str(self.local.port), "--qos", str(qos))
            self._forward_job(system, publisher, result, ceiling)
            if peer == "thingsboard":
                result.notes.append(
                    "no filter step (its MQTT connector's JSON converter has none); telemetry "
                    "goes out batched per device every 50 ms (minPackSendDelayMS, its default)"
                )
            for name in (gateway, f"{gateway}, memory outbox"):
                ours = self.results.get(name)
                if ours and ours.readings_per_s and result.readings_per_s:
                    result.notes.append(
                        f"{name} sustains {ours.readings_per_s / result.readings_per_s:.2f}x this"
                    )

    def _latency_below_max(self, system: System, load: Load, result: Result) -> None:
        """When the fixed latency rate is beyond what the system sustains, its latency there
        is a growing backlog; also say what it is at 80% of the sustained rate."""
        sustained = result.readings_per_s
        if not sustained or sustained >= self.p.latency_rate:
            return
        self._settle(system, timeout=60)
        c = self.collector
        c.reset_latencies()
        c.recording = True
        rate = 0.8 * sustained
        step = self._deliver(system, load, rate, int(rate * self.p.latency_s))
        c.recording = False
        p50, p99 = _percentile(c.latencies, 50), _percentile(c.latencies, 99)
        if p50 is not None and p99 is not None:
            result.notes.append(
                f"latency at {rate:.0f}/s (80% of sustained): p50 {p50:.1f} ms, p99 {p99:.1f} ms"
                + ("" if step.ok else " (not all delivered in time)")
            )

    def _detector(self, result: Result) -> list[dict[str, Any]]:
        if ANOMALY_EXAMPLE.exists():
            doc = yaml.safe_load(ANOMALY_EXAMPLE.read_text())
            steps: list[dict[str, Any]] = doc["pipelines"][0]["steps"]
            result.notes.append(f"detector: the default one ({ANOMALY_EXAMPLE.name})")
            return steps
        result.notes.append(
            "detector: config/examples/anomaly.yaml absent on this build; threshold used"
        )
        return [{"threshold": {"above": 80, "hysteresis": 1, "for": "5s"}}]

    def _full_pipelines(self, result: Result) -> list[dict[str, Any]]:
        window = {"size": self.p.window_s, "lateness": self.p.lateness_s}
        return [
            {
                "id": "stats",
                "from": ["fleet"],
                "steps": [{"window": window}],
                "to": ["upstream"],
                "forward": ["aggregates"],
            },
            {
                "id": "detect",
                "from": ["fleet"],
                "steps": self._detector(result),
                "to": ["upstream"],
                "forward": ["alerts"],
            },
        ]

    def full(self, name: str, synchronous: str, ceiling: str, extended: bool) -> None:
        with self._scenario(name, "gateway") as result:
            pipelines = self._full_pipelines(result)
            workdir, config = self._config(
                name, pipelines, qos_in=0, qos_out=1, synchronous=synchronous
            )
            publisher = Agent("publish", "--port", str(self.local.port), "--qos", "0")
            system = GatewayRun(workdir, config, "subscribed to", self.collector, False)
            aggregated0 = self.collector.aggregated
            try:
                load = Load(publisher)
                self.ramp(system, load, result)
                if extended:
                    # Aggregates: their delay after the window closed, at a rate the gateway
                    # sustains (beyond it, the delay is that of a growing backlog).
                    rate = min(self.p.latency_rate, 0.8 * (result.readings_per_s or 1000))
                    self._settle(system)
                    self.aggregate_latency(system, load, result, rate)
                self._finish(system, result)
                stored = system.stored()
                if (newest := system.progress()) != stored:  # progress is the newest rowid
                    result.notes.append(f"progress read {newest} readings, the table has {stored}")
                self._check_aggregates(result, aggregated0, stored, system.db)
            finally:
                system.stop()
                publisher.stop()
            if extended:
                self._rss_many_devices(name, pipelines, result)
            self._ratio(result, ceiling)

    def _rss_many_devices(self, name: str, pipelines: list[dict[str, Any]], result: Result) -> None:
        """``rss_10k_devices_mb``: the RSS of a fresh gateway with the same pipelines once
        ``rss_devices`` devices have sent readings at the latency rate until a window closed
        for all of them (one burst of that many aggregates) and its aggregates are upstream.
        A fresh process, so that the figure is what the devices cost, not what the ramp's
        overload steps left queued."""
        workdir, config = self._config(f"{name}, many devices", pipelines, qos_in=0, qos_out=1)
        publisher = Agent("publish", "--port", str(self.local.port), "--qos", "0")
        system = GatewayRun(workdir, config, "subscribed to", self.collector, False)
        try:
            devices, rate = self.p.rss_devices, self.p.latency_rate
            load = Load(publisher, devices=devices)
            seconds = self.p.window_s + self.p.lateness_s + 2  # a window end, then its close
            aggregated0, base = self.collector.aggregated, system.progress()
            sent, _ = load.send(rate, int(rate * seconds), self.seq)
            self.seq += sent
            self._settle(system, until=base + sent, timeout=60)
            _wait_quietly(lambda: self.collector.aggregated > aggregated0, 2 * seconds)
            if self.collector.aggregated == aggregated0:
                result.notes.append("rss_10k_devices_mb: not measured, no aggregate arrived")
                return
            _until_quiet(lambda: self.collector.aggregated, None, 1.0, 10)  # the rest of them
            rss, peak = memory_mb(system.pid)
            anon, mapped = rss_parts_mb(system.pid)
            result.rss_10k_devices_mb = round(rss, 1)
            result.notes.append(
                f"rss_10k_devices_mb: a fresh gateway after {devices} devices sent {sent} "
                f"readings ({sent // devices} each) in {seconds:.0f}s at {rate:.0f}/s, "
                f"a window closed for every device and its aggregates upstream: {rss:.1f} MB "
                f"({anon:.1f} MB its own, {mapped:.1f} MB of mapped libraries), "
                f"peak {peak:.1f} MB"
            )
        finally:
            system.stop()
            publisher.stop()

    def soak(
        self,
        name: str,
        seconds: float,
        ceiling: str,
        rate: float | None = None,
        devices: int | None = None,
        fill: int = 0,
    ) -> None:
        """The full pipeline at ``rate`` (default: the latency rate) from ``devices``
        (default 10,000) for ``seconds`` after a warm-up: RSS sampled every second, its slope
        over the second half in MB/hour, and the final RSS. With ``fill``, the warm-up first
        sends that many readings per device (at the latency rate, through the broker as any
        reading), so that per-device state such as the detector's windows is full before the
        first sample."""
        with self._scenario(name, "soak") as result:
            pipelines = self._full_pipelines(result)
            workdir, config = self._config(name, pipelines, qos_in=0, qos_out=1)
            publisher = Agent("publish", "--port", str(self.local.port), "--qos", "0")
            system = GatewayRun(workdir, config, "subscribed to", self.collector, False)
            try:
                devices = devices or self.p.rss_devices
                load = Load(publisher, devices=devices)
                rate = rate or self.p.latency_rate
                sent = 0
                if fill:
                    t_fill = time.monotonic()
                    fill_rate = max(rate, self.p.latency_rate)
                    while sent < fill * devices:
                        count = min(int(fill_rate * SOAK_SAMPLE_S), fill * devices - sent)
                        n, _ = load.send(fill_rate, count, self.seq)
                        self.seq += n
                        sent += n
                    self._settle(system, until=sent, quiet_s=5.0, timeout=120.0)
                    result.notes.append(
                        f"filled first: {fill} readings per device ({sent} at {fill_rate:.0f}/s,"
                        f" {time.monotonic() - t_fill:.0f}s) before the warm-up"
                    )
                warmup = self.p.window_s + self.p.lateness_s + 2
                samples: list[tuple[float, float]] = []
                behind: list[tuple[float, float]] = []  # (seconds, sent but not stored yet)
                cpu0, t0 = cpu_seconds(system.pid), time.monotonic()
                while (elapsed := time.monotonic() - t0) < seconds + warmup:
                    n, _ = load.send(rate, max(int(rate * SOAK_SAMPLE_S), 1), self.seq)
                    self.seq += n
                    sent += n
                    if elapsed > warmup:
                        samples.append((elapsed - warmup, memory_mb(system.pid)[0]))
                        if len(samples) % SOAK_BACKLOG_EVERY == 1:
                            behind.append((elapsed - warmup, sent - system.progress()))
                result.cpu_pct = round(
                    (cpu_seconds(system.pid) - cpu0) / (time.monotonic() - t0) * 100, 1
                )
                _wait_quietly(lambda: system.progress() >= sent, 30)
                stored = system.progress()
                if stored < sent:
                    result.notes.append(f"lost or late: only {stored} of {sent} readings stored")
                result.readings_per_s = rate
                trend = rss_trend(samples)
                if trend is None:
                    result.notes.append("soak too short to sample")
                else:
                    result.rss_slope_mb_per_hour = round(trend.slope_mb_per_hour, 3)
                    result.rss_final_mb = round(trend.final_mb, 1)
                    result.notes.append(
                        f"RSS {trend.first_mb:.1f} -> {trend.half_mb:.1f} (half way) -> "
                        f"{trend.final_mb:.1f} MB over {seconds:.0f}s after a {warmup:.0f}s "
                        f"warm-up; second-half slope {trend.slope_mb_per_hour:+.2f} MB/hour "
                        f"({devices} devices, {rate:.0f}/s, {sent} readings: "
                        f"{sent // devices} per device; the default detector's windows are "
                        "full from 2,016 per device)"
                    )
                result.steps = [{"s": round(t, 1), "rss_mb": round(r, 1)} for t, r in samples]
                for (_, b), step in zip(behind, result.steps[::SOAK_BACKLOG_EVERY], strict=True):
                    step["behind"] = int(b)
                self._soak_backlog(result, behind, rate)
                self._finish(system, result)
            finally:
                system.stop()
                publisher.stop()
            self._ratio(result, ceiling)

    def _soak_backlog(self, result: Result, behind: list[tuple[float, float]], rate: float) -> None:
        """RSS that grows with a backlog is the gateway falling behind, not a leak: say so."""
        if len(behind) < 2:
            return
        growth = slope(behind[len(behind) // 2 :])
        if behind[-1][1] > 2 * rate and growth > 0:
            result.notes.append(
                f"fell behind: {behind[-1][1]:.0f} readings not yet stored at the end, the "
                f"backlog growing {growth:.0f}/s; RSS growth includes it (a rate it sustains: "
                "--soak-rate)"
            )

    def _check_aggregates(self, result: Result, aggregated0: int, stored: int, db: Path) -> None:
        """After a clean stop, every aggregate the gateway stored is upstream or still in the
        outbox (what did not drain in ``drain_timeout`` goes after a restart); and every
        stored reading is in an aggregate unless the window step counted it late."""
        c = self.collector
        with sqlite3.connect(db) as conn:
            local = conn.execute("SELECT coalesce(sum(count), 0) FROM aggregates").fetchone()[0]
            queued = sum(
                int(orjson.loads(payload).get("count", 0))
                for (payload,) in conn.execute("SELECT payload FROM outbox")
            )
        with contextlib.suppress(RuntimeError):
            wait_for(lambda: c.aggregated - aggregated0 + queued >= local, 5, "the last aggregates")
        upstream = c.aggregated - aggregated0
        if upstream + queued == local:
            result.notes.append(
                f"delivered: all aggregates ({local} readings) upstream or in the outbox "
                f"({queued} readings' worth left there after the drain timeout)"
            )
        else:
            result.notes.append(
                f"aggregates LOST: {upstream} readings' worth upstream + {queued} in the outbox, "
                f"{local} stored"
            )
        if stored > local:
            result.notes.append(
                f"{stored - local} of {stored} stored readings in no aggregate: they reached "
                "the window after it closed (a backlog during overload) and were counted late"
            )

    def serial(self, name: str, ceiling: str) -> None:
        with self._scenario(name, "gateway") as result:
            writer = Agent("serial")
            path = writer.read()["path"]
            source = {
                "id": "line",
                "type": "serial",
                "port": path,
                "baudrate": 115200,
                "format": {"type": "csv", "columns": ["device", "metric", "value", "ts", "seq"]},
            }
            pipelines = [
                {
                    "id": "stats",
                    "from": ["line"],
                    "steps": [{"window": {"size": self.p.window_s, "lateness": self.p.lateness_s}}],
                }
            ]
            workdir, config = self._config(name, pipelines, qos_in=0, qos_out=1, source=source)
            system = GatewayRun(workdir, config, "reading ", self.collector, False)
            try:
                load = Load(writer)
                self.ramp(system, load, result)
                result.cpu_pct = self._cpu_at(system, load)
                self._finish(system, result)
            finally:
                system.stop()
                writer.stop()
            result.notes.append("one pty; progress = readings committed to SQLite")
            self._ratio(result, ceiling)

    def replay(self, name: str, detector: bool, ceiling: str) -> None:
        with self._scenario(name, "replay") as result:
            check = subprocess.run(
                [sys.executable, "-m", "gateway.cli", "replay", "--help"],
                capture_output=True,
                check=False,
            )
            if check.returncode != 0:
                result.notes.append("skipped: `edge-gateway replay` is not in this build")
                self.say("    skipped: `edge-gateway replay` is not in this build")
                return
            if detector:
                steps = self._detector(result)
            else:
                steps = [{"window": {"size": "10s", "aggregates": ["count", "mean", "min", "max"]}}]
            pipelines = [{"id": "replay", "from": ["fleet"], "steps": steps, "to": ["upstream"]}]
            workdir, config = self._config(name, pipelines, qos_in=0, qos_out=1)
            cfg = workdir / "replay.yaml"
            cfg.write_text(yaml.safe_dump(config, sort_keys=False))
            n = self.p.replay_readings
            small, big = workdir / "small.jsonl", workdir / "big.jsonl"
            _recording(small, 10)
            _recording(big, n)
            _, cpu_small, _ = _timed(cfg, small, workdir)
            t_big, cpu, rss = _timed(cfg, big, workdir)
            # Per CPU second ("on one core": the replay is one thread), so that other load on
            # a shared box does not count; the wall-clock rate is noted beside it.
            result.readings_per_s = round(n / max(cpu - cpu_small, 1e-9))
            result.cpu_pct = round(cpu / t_big * 100, 1)
            result.rss_mb = round(rss, 1)
            result.notes.append(
                f"{n} readings per CPU second, startup subtracted ({cpu_small:.2f}s CPU); "
                f"by the wall clock, startup included, {n / t_big:,.0f}/s"
            )
            self._ratio(result, ceiling)

    def _ratio(self, result: Result, ceiling: str) -> None:
        base = self.results.get(ceiling)
        result.ceiling = ceiling
        if base and base.readings_per_s and result.readings_per_s is not None:
            result.ratio_to_ceiling = round(result.readings_per_s / base.readings_per_s, 3)

    def micro(self) -> None:
        self.say("  micro-benchmark of the hot path")
        probe = Result("probe", "micro")
        detector = self._detector(probe) if ANOMALY_EXAMPLE.exists() else []
        for what, us in run_micro(self.p.micro_readings, detector=detector):
            self.results[f"micro: {what}"] = Result(
                f"micro: {what}",
                "micro",
                readings_per_s=round(1e6 / us) if us > 0 else None,
                us_per_reading=round(us, 3),
            )


def _record_latency(result: Result, samples: Sequence[float], step: Step, rate: float) -> None:
    """p50/p99 of ``samples`` (ms), and the CPU and rate of the step that produced them."""
    result.p50_ms = _round(_percentile(samples, 50))
    result.p99_ms = _round(_percentile(samples, 99))
    result.cpu_pct = round(step.cpu_pct, 1)
    result.latency_rate = rate
    if not step.ok:
        result.notes.append(f"lost or late readings at the latency rate {rate:.0f}/s")


def _until_quiet(
    progress: Callable[[], int], until: int | None, quiet_s: float, timeout: float
) -> float:
    """Poll ``progress`` until it reaches ``until``, has not moved for ``quiet_s``, or
    ``timeout`` passed; returns when (``time.monotonic``) it last moved."""
    last, since, deadline = progress(), time.monotonic(), time.monotonic() + timeout
    while (
        (until is None or last < until)
        and time.monotonic() - since < quiet_s
        and time.monotonic() < deadline
    ):
        time.sleep(0.05)
        now = progress()
        if now != last:
            last, since = now, time.monotonic()
    return since


def _wait_quietly(predicate: Callable[[], bool], timeout: float) -> None:
    with contextlib.suppress(RuntimeError):
        wait_for(predicate, timeout, "")


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def _recording(path: Path, n: int, devices: int = 1000) -> None:
    t0 = 1_700_000_000.0
    with open(path, "w") as f:
        for i in range(n):
            doc = {
                "device": device_name(i % devices),
                "metric": METRIC,
                "value": 20.0 + (i % 17) * 0.5,
                "ts": t0 + i // devices,
            }
            f.write(json.dumps(doc) + "\n")


def _timed(cfg: Path, recording: Path, workdir: Path) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds, peak RSS MB) of one ``edge-gateway replay`` run."""
    cmd = [sys.executable, "-m", "gateway.cli", "replay", "-c", str(cfg)]
    cmd += ["--input", str(recording), "--format", "jsonl"]
    with open(workdir / "replay.err", "ab") as err:
        t = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, cwd=workdir)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"replay exited with {proc.returncode}; see {workdir}/replay.err")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


# ------------------------------------------------------------------ output


def _in_table(note: str) -> bool:
    """Notes worth a place in the table (all of them are in the JSON)."""
    return note.startswith(("skipped", "failed", "lost", "aggregates LOST")) or any(
        key in note for key in ("80% of sustained", "in no aggregate", "x this", "backlog growing")
    )


def table(results: Sequence[Result]) -> str:
    """The human-readable summary."""

    def cell(value: float | None, fmt: str) -> str:
        width = int(fmt.split(".")[0])
        return f"{'-':>{width}}" if value is None else format(value, fmt)

    head = (
        f"{'scenario':34} {'readings/s':>10} {'ratio':>6} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'cpu %':>6} {'rss MB':>7}  notes"
    )
    lines = [head, "-" * len(head)]
    micro = []
    for r in results:
        if r.kind == "micro":
            micro.append(f"  {r.name.removeprefix('micro: '):44} {cell(r.us_per_reading, '8.3f')}")
            continue
        extra = []
        if r.rss_slope_mb_per_hour is not None:
            extra.append(
                f"RSS slope {r.rss_slope_mb_per_hour:+.2f} MB/hour (2nd half), "
                f"final {r.rss_final_mb} MB"
            )
        if r.rss_10k_devices_mb is not None:
            extra.append(f"RSS {r.rss_10k_devices_mb:.0f} MB with many devices")
        if r.cpu_pct_at_max is not None:
            extra.append(f"cpu {r.cpu_pct_at_max:.0f}% at max")
        extra += [n for n in r.notes if _in_table(n)]
        lines.append(
            f"{r.name:34} {cell(r.readings_per_s, '10.0f')} {cell(r.ratio_to_ceiling, '6.2f')} "
            f"{cell(r.p50_ms, '7.2f')} {cell(r.p99_ms, '7.2f')} {cell(r.cpu_pct, '6.0f')} "
            f"{cell(r.rss_mb, '7.1f')}  {'; '.join(extra)}"
        )
    if micro:
        lines += ["", f"  {'hot path, per reading':44} {'µs':>8}", *micro]
    return "\n".join(lines)


SCENARIOS = ("ceiling", "forward", "full", "serial", "replay", "micro", "soak")
DEFAULT = set(SCENARIOS) - {"soak"}


def run(args: argparse.Namespace) -> int:
    """Entry point of ``edge-gateway bench``; returns the exit code."""
    if mosquitto_binary() is None:
        print("edge-gateway bench needs mosquitto: apt-get install mosquitto", file=sys.stderr)
        return 1
    profile = QUICK if args.quick else FULL
    only = set(args.only.split(",")) if args.only else set(DEFAULT)
    if args.soak:
        only.add("soak")
    unknown = only - set(SCENARIOS)
    if unknown:
        print(f"unknown scenario(s) {sorted(unknown)}; choose from {SCENARIOS}", file=sys.stderr)
        return 2
    peers = args.peers.split(",") if args.peers else []
    if set(peers) - set(PEERS):
        print(
            f"unknown peer(s) {sorted(set(peers) - set(PEERS))}; choose from {PEERS}",
            file=sys.stderr,
        )
        return 2
    if peers:
        only.add("forward")  # compared with edge-gateway's forward, same run

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="edge-gateway-bench-") as tmp:
        say(f"edge-gateway bench ({'quick' if args.quick else 'full'}), work dir {tmp}")
        bench = Bench(profile, Path(tmp), say)
        try:
            if only & {"ceiling", "full", "serial", "replay"}:
                bench.ceiling("ceiling: paho subscribe q0", "subscribe", 0)
            if only & {"ceiling", "forward"}:
                bench.ceiling("ceiling: paho forward q0", "forward", 0)
                bench.ceiling("ceiling: paho forward q1", "forward", 1)
            if "forward" in only:
                for qos in (0, 1):
                    ceiling = f"ceiling: paho forward q{qos}"
                    bench.forward(f"gateway: forward q{qos}", qos, ceiling)
                    name = f"gateway: forward q{qos}, memory outbox"
                    bench.forward(name, qos, ceiling, outbox="memory")
            for qos in (0, 1) if "forward" in only else ():
                for peer in peers:
                    forward = f"forward q{qos}"
                    bench.peer(peer, qos, f"ceiling: paho {forward}", f"gateway: {forward}")
            if "full" in only:
                parse = "ceiling: paho subscribe q0"
                bench.full("gateway: full, sync normal", "normal", parse, extended=True)
                bench.full("gateway: full, sync FULL", "full", parse, extended=False)
            if "serial" in only:
                bench.serial("gateway: serial pty", "ceiling: paho subscribe q0")
            if "replay" in only:
                parse = "ceiling: paho subscribe q0"
                bench.replay("replay: window aggregate", False, parse)
                bench.replay("replay: default detector", True, parse)
            if "micro" in only:
                bench.micro()
            if "soak" in only:
                seconds = args.soak or (5.0 if args.quick else 600.0)
                parse = "ceiling: paho subscribe q0"
                bench.soak(
                    "gateway: soak, full pipeline",
                    seconds,
                    parse,
                    args.soak_rate,
                    args.soak_devices,
                    args.soak_fill,
                )
        finally:
            bench.close()
    results = list(bench.results.values())
    print(table(results))
    print(f"\n{time.monotonic() - started:.0f}s; {os.cpu_count()} cores; load {_load()}")
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
        say(f"wrote {args.json}")
    return 0


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument(
        "--quick", action="store_true", help="tiny numbers: a smoke test, not a measurement"
    )
    parser.add_argument(
        "--only",
        metavar="LIST",
        help=f"comma-separated subset of {','.join(SCENARIOS)} (default: all but soak)",
    )
    parser.add_argument(
        "--peers",
        metavar="LIST",
        help=f"also run {','.join(PEERS)} on the forward job (installed on first use into "
        "~/.cache/edge-gateway-bench; skipped when that is not possible)",
    )
    parser.add_argument(
        "--soak",
        type=float,
        metavar="SECONDS",
        help="also run the full pipeline that long at 5,000 readings/s: RSS slope (try 600)",
    )
    parser.add_argument(
        "--soak-rate", type=float, metavar="N", help="readings/s of the soak (default 5000)"
    )
    parser.add_argument(
        "--soak-devices",
        type=int,
        metavar="N",
        help="devices of the soak (default 10000); fewer devices see more readings each",
    )
    parser.add_argument(
        "--soak-fill",
        type=int,
        default=0,
        metavar="N",
        help="before the soak's samples, send N readings per device (at 5000/s or the soak "
        "rate if higher): with N >= 2016 every device's default detector holds its full "
        "windows, so the slope is that of a steady state (e.g. --soak-devices 500 "
        "--soak-fill 2100: about 4 minutes)",
    )
