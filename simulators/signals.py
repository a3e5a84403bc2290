"""Seeded, deterministic sensor signals with injectable defects.

A :class:`Signal` produces the value of one device+metric at a sample timestamp::

    value = baseline + device_offset + daily_cycle(ts) + noise      (+ fault effects)

* ``daily_cycle`` is a sinusoid over the 24 h UTC time of day of ``ts`` (peak at 15:00).
* ``noise`` is gaussian; one draw per sample from a per-signal RNG seeded with
  ``(seed, device, metric)``, so a signal does not depend on the rest of the fleet.
* Faults draw from a second RNG: adding a fault never changes the clean samples
  outside the fault's effect.

Faults are written on the command line as ``kind[:key=value,...]``; times are relative to the
simulation start and take ``ms``, ``s``, ``m`` or ``h`` (bare numbers are seconds):

========== ======================================================= =========================
kind       effect                                                  parameters
========== ======================================================= =========================
spike      single-point outliers: ``±mag`` with probability prob   ``prob=0.01``, ``mag=``
drift      linear drift of ``rate`` units per hour since ``at``     ``rate`` (required)
stuck      value frozen at the first sample at/after ``at``         —
dropout    no readings while active                                 —
noise_burst noise multiplied by ``factor`` while active             ``factor=10``
========== ======================================================= =========================

Every kind also takes ``device`` and ``metric`` (glob patterns, default ``*``; ``dev-3``
also matches ``dev-003``), ``at`` (start, default ``0s``) and ``for`` (length, default: forever).
Examples: ``spike:device=dev-3,prob=0.01,mag=25``, ``stuck:device=dev-1,at=30s``,
``dropout:device=*,at=10s,for=5s``, ``drift:metric=temperature,at=1m,rate=120``.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from fnmatch import fnmatchcase
from typing import Literal

__all__ = [
    "FAULT_KINDS",
    "METRICS",
    "Fault",
    "FaultKind",
    "FaultSpecError",
    "MetricSpec",
    "ReadingSource",
    "Signal",
    "SimReading",
    "check_faults",
    "device_names",
    "parse_duration",
    "parse_fault",
    "parse_metrics",
]

DAY_S = 86_400.0
PEAK_S = 15 * 3_600.0
"""Time of day (UTC seconds) where the daily cycle peaks."""


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """Shape of one metric's clean signal."""

    unit: str
    baseline: float
    amplitude: float
    """Half the peak-to-peak swing of the daily cycle."""
    noise: float
    """Standard deviation of the gaussian noise."""
    spread: float
    """Standard deviation of the per-device baseline offset."""
    spike: float
    """Default spike magnitude."""
    decimals: int
    lo: float | None = None
    hi: float | None = None

    def clamp(self, value: float) -> float:
        """Keep a value inside the physically possible range."""
        if self.lo is not None and value < self.lo:
            return self.lo
        if self.hi is not None and value > self.hi:
            return self.hi
        return value


METRICS: dict[str, MetricSpec] = {
    "temperature": MetricSpec("°C", 21.0, 3.0, 0.15, 0.8, 15.0, 2),
    "humidity": MetricSpec("%", 45.0, 8.0, 0.8, 3.0, 30.0, 1, lo=0.0, hi=100.0),
    "pressure": MetricSpec("hPa", 1013.25, 1.5, 0.2, 2.0, 40.0, 2, lo=0.0),
    "vibration": MetricSpec("mm/s", 2.0, 0.5, 0.08, 0.3, 20.0, 3, lo=0.0),
    "current": MetricSpec("A", 5.0, 1.5, 0.05, 0.5, 15.0, 3, lo=0.0),
}
"""Known metrics and their clean-signal parameters."""


def parse_metrics(text: str) -> tuple[str, ...]:
    """Parse ``temperature,humidity`` (or ``all``) into known metric names."""
    if text.strip() == "all":
        return tuple(METRICS)
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise ValueError("no metric given")
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ValueError(
            f"unknown metric {', '.join(map(repr, unknown))} "
            f"(expected 'all' or some of: {', '.join(METRICS)})"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"metric listed twice in {text!r}")
    return names


def device_names(n: int) -> tuple[str, ...]:
    """``dev-001`` ... ``dev-NNN`` (at least three digits)."""
    if n < 1:
        raise ValueError(f"need at least one device, got {n}")
    width = max(3, len(str(n)))
    return tuple(f"dev-{i:0{width}d}" for i in range(1, n + 1))


# --------------------------------------------------------------------------- faults

FaultKind = Literal["spike", "drift", "stuck", "dropout", "noise_burst"]
FAULT_KINDS: tuple[FaultKind, ...] = ("spike", "drift", "stuck", "dropout", "noise_burst")

_COMMON = ("device", "metric", "at", "for")
_PARAMS: dict[FaultKind, tuple[str, ...]] = {
    "spike": (*_COMMON, "prob", "mag"),
    "drift": (*_COMMON, "rate"),
    "stuck": _COMMON,
    "dropout": _COMMON,
    "noise_burst": (*_COMMON, "factor"),
}
_REQUIRED: dict[FaultKind, tuple[str, ...]] = {"drift": ("rate",)}

_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h)?")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_DEV_NUM = re.compile(r"dev-0*(\d+)")


class FaultSpecError(ValueError):
    """A ``--fault`` string that cannot be understood; the message says why and how."""


def parse_duration(text: str) -> float:
    """``500ms``, ``30s``, ``2m``, ``1.5h`` or a bare number of seconds -> seconds."""
    m = _DURATION.fullmatch(text.strip())
    if m is None:
        raise ValueError(f"bad duration {text!r} (use e.g. 500ms, 30s, 2m, 1h)")
    return float(m.group(1)) * _UNIT_S[m.group(2) or "s"]


def _fmt_duration(seconds: float) -> str:
    return f"{seconds:g}s"


@dataclass(frozen=True, slots=True)
class Fault:
    """One injected defect, selecting devices and metrics by glob pattern.

    ``at`` and ``duration`` are seconds since the simulation start; the fault is active on
    ``[at, at + duration)``.
    """

    kind: FaultKind
    device: str = "*"
    metric: str = "*"
    at: float = 0.0
    duration: float = math.inf
    prob: float = 0.01
    mag: float | None = None
    """Spike magnitude; ``None`` means the metric's default (:attr:`MetricSpec.spike`)."""
    rate: float = 0.0
    """Drift in metric units per hour."""
    factor: float = 10.0

    def matches(self, device: str, metric: str) -> bool:
        """Whether this fault applies to ``device``/``metric``."""
        return _match_device(self.device, device) and fnmatchcase(metric, self.metric)

    def active(self, elapsed: float) -> bool:
        """Whether the fault is in effect ``elapsed`` seconds after the start."""
        return self.at <= elapsed < self.at + self.duration

    def __str__(self) -> str:
        parts = [f"device={self.device}", f"metric={self.metric}", f"at={_fmt_duration(self.at)}"]
        if math.isfinite(self.duration):
            parts.append(f"for={_fmt_duration(self.duration)}")
        if self.kind == "spike":
            parts.append(f"prob={self.prob:g}")
            if self.mag is not None:
                parts.append(f"mag={self.mag:g}")
        elif self.kind == "drift":
            parts.append(f"rate={self.rate:g}")
        elif self.kind == "noise_burst":
            parts.append(f"factor={self.factor:g}")
        return f"{self.kind}:{','.join(parts)}"


def _match_device(pattern: str, device: str) -> bool:
    if fnmatchcase(device, pattern):
        return True
    p, d = _DEV_NUM.fullmatch(pattern), _DEV_NUM.fullmatch(device)
    return p is not None and d is not None and int(p.group(1)) == int(d.group(1))


def parse_fault(spec: str) -> Fault:
    """Parse ``kind[:key=value,...]`` into a :class:`Fault`.

    Raises :class:`FaultSpecError` naming the spec and the exact problem.
    """

    def fail(why: str) -> FaultSpecError:
        return FaultSpecError(f"invalid fault {spec!r}: {why}")

    kind_text, _, rest = spec.strip().partition(":")
    kind_text = kind_text.strip().replace("-", "_")
    if kind_text not in FAULT_KINDS:
        raise fail(f"unknown kind {kind_text!r} (expected one of: {', '.join(FAULT_KINDS)})")
    kind: FaultKind = kind_text
    allowed = _PARAMS[kind]
    params: dict[str, str] = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = (s.strip() for s in item.partition("="))
        if not eq or not key or not value:
            raise fail(f"expected key=value, got {item!r}")
        if key not in allowed:
            raise fail(
                f"unknown parameter {key!r} for {kind} (expected one of: {', '.join(allowed)})"
            )
        if key in params:
            raise fail(f"parameter {key!r} given twice")
        params[key] = value
    missing = [k for k in _REQUIRED.get(kind, ()) if k not in params]
    if missing:
        raise fail(f"{kind} needs {', '.join(missing)} (e.g. {kind}:{missing[0]}=...)")

    def number(key: str) -> float:
        try:
            value = float(params[key])
        except ValueError:
            raise fail(f"{key} must be a number, got {params[key]!r}") from None
        if not math.isfinite(value):
            raise fail(f"{key} must be finite, got {params[key]!r}")
        return value

    def duration(key: str) -> float:
        try:
            return parse_duration(params[key])
        except ValueError as e:
            raise fail(f"{key}: {e}") from None

    fault = Fault(kind=kind, device=params.get("device", "*"), metric=params.get("metric", "*"))
    if fault.metric != "*" and not any(fnmatchcase(m, fault.metric) for m in METRICS):
        raise fail(f"metric {fault.metric!r} matches no known metric ({', '.join(METRICS)})")
    if "at" in params:
        fault = replace(fault, at=duration("at"))
    if "for" in params:
        fault = replace(fault, duration=duration("for"))
        if fault.duration <= 0:
            raise fail("for must be longer than 0s")
    if "prob" in params:
        fault = replace(fault, prob=number("prob"))
        if not 0.0 <= fault.prob <= 1.0:
            raise fail(f"prob must be between 0 and 1, got {params['prob']}")
    if "mag" in params:
        fault = replace(fault, mag=number("mag"))
    if "rate" in params:
        fault = replace(fault, rate=number("rate"))
    if "factor" in params:
        fault = replace(fault, factor=number("factor"))
        if fault.factor <= 0:
            raise fail(f"factor must be positive, got {params['factor']}")
    return fault


def check_faults(faults: Iterable[Fault], devices: Sequence[str], metrics: Sequence[str]) -> None:
    """Raise :class:`FaultSpecError` for a fault that selects nothing in this fleet."""
    for f in faults:
        if not any(f.matches(d, m) for d in devices for m in metrics):
            raise FaultSpecError(
                f"fault '{f}' matches no series of this fleet "
                f"(devices {devices[0]}..{devices[-1]}, metrics {', '.join(metrics)})"
            )


# --------------------------------------------------------------------------- signals


class Signal:
    """The deterministic value stream of one device+metric.

    ``start_ts`` is the simulation start (epoch seconds); fault times are relative to it.
    Call :meth:`sample` with non-decreasing timestamps; ``None`` means "no reading"
    (a dropout). Every call consumes the same random draws, faulted or not.
    """

    def __init__(
        self,
        device: str,
        metric: str,
        *,
        seed: int = 0,
        start_ts: float = 0.0,
        faults: Iterable[Fault] = (),
    ) -> None:
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r} (expected one of: {', '.join(METRICS)})")
        self.device = device
        self.metric = metric
        self.spec = METRICS[metric]
        self.start_ts = start_ts
        self.faults = tuple(f for f in faults if f.matches(device, metric))
        self._rng = random.Random(f"{seed}:{device}:{metric}")
        self._fault_rng = random.Random(f"{seed}:{device}:{metric}:faults")
        self._offset = self._rng.gauss(0.0, self.spec.spread)
        self._frozen: dict[int, float] = {}
        self.spike_times: list[float] = []
        """Timestamps of the samples a spike fault hit: ground truth for evaluations."""

    def clean(self, ts: float, noise: float) -> float:
        """Baseline + device offset + daily cycle at ``ts``, plus ``noise``."""
        phase = 2.0 * math.pi * ((ts - PEAK_S) % DAY_S) / DAY_S
        return self.spec.baseline + self._offset + self.spec.amplitude * math.cos(phase) + noise

    def sample(self, ts: float) -> float | None:
        """The value at ``ts`` rounded to the metric's precision, or ``None`` in a dropout."""
        noise = self._rng.gauss(0.0, self.spec.noise)
        elapsed = ts - self.start_ts
        gain, offset = 1.0, 0.0
        dropped = spiked = False
        stuck: int | None = None
        for i, f in enumerate(self.faults):
            if f.kind == "spike":
                # Draw on every sample so the fault RNG stays aligned with time.
                hit = self._fault_rng.random() < f.prob
                sign = 1.0 if self._fault_rng.random() < 0.5 else -1.0
                if hit and f.active(elapsed):
                    offset += sign * (self.spec.spike if f.mag is None else f.mag)
                    spiked = True
            elif not f.active(elapsed):
                continue
            elif f.kind == "drift":
                offset += f.rate * (elapsed - f.at) / 3600.0
            elif f.kind == "noise_burst":
                gain *= f.factor
            elif f.kind == "dropout":
                dropped = True
            elif stuck is None:  # stuck: the first active one wins
                stuck = i
        if dropped:
            return None
        value = self._finish(self.clean(ts, noise * gain) + offset)
        if stuck is not None:
            return self._frozen.setdefault(stuck, value)
        if spiked:  # ground truth: only spikes that reached the output
            self.spike_times.append(ts)
        return value

    def _finish(self, value: float) -> float:
        return round(self.spec.clamp(value), self.spec.decimals)


# --------------------------------------------------------------------------- fleet stream


@dataclass(frozen=True, slots=True)
class SimReading:
    """One reading as the simulators put it on the wire."""

    device: str
    metric: str
    value: float
    ts: float
    seq: int

    def as_dict(self) -> dict[str, str | float | int]:
        """The JSON wire shape: ``device, metric, value, ts, seq``."""
        return {
            "device": self.device,
            "metric": self.metric,
            "value": self.value,
            "ts": self.ts,
            "seq": self.seq,
        }


@dataclass
class ReadingSource:
    """Round-robin over every device x metric series, one series per scheduled slot.

    ``seq`` counts the readings a series actually emitted, from 1: a dropout leaves a time
    gap, never a ``seq`` gap.
    """

    devices: Sequence[str]
    metrics: Sequence[str]
    seed: int = 0
    start_ts: float = 0.0
    faults: Sequence[Fault] = ()
    _signals: list[Signal] = field(init=False, repr=False)
    _seqs: list[int] = field(init=False, repr=False)
    _next: int = field(init=False, default=0, repr=False)

    def __post_init__(self) -> None:
        self._signals = [
            Signal(d, m, seed=self.seed, start_ts=self.start_ts, faults=self.faults)
            for d in self.devices
            for m in self.metrics
        ]
        self._seqs = [0] * len(self._signals)

    def labels(self, end_ts: float) -> list[dict[str, str | float]]:
        """Ground truth of the injected defects up to ``end_ts``, one episode per entry.

        ``{"device", "metric", "kind", "start", "end"}`` in epoch seconds; a spike is an
        episode of one sample (``start == end``); a fault without ``for`` ends at ``end_ts``.
        """
        out: list[dict[str, str | float]] = []
        for s in self._signals:
            for f in s.faults:
                if f.kind == "spike":
                    out += [
                        {
                            "device": s.device,
                            "metric": s.metric,
                            "kind": "spike",
                            "start": t,
                            "end": t,
                        }
                        for t in s.spike_times
                    ]
                    continue
                start = self.start_ts + f.at
                if start > end_ts:
                    continue
                end = end_ts if f.duration is None else min(start + f.duration, end_ts)
                out.append(
                    {
                        "device": s.device,
                        "metric": s.metric,
                        "kind": f.kind,
                        "start": start,
                        "end": end,
                    }
                )
        return sorted(out, key=lambda label: (label["start"], label["device"], label["metric"]))

    @property
    def series(self) -> tuple[tuple[str, str], ...]:
        """Every ``(device, metric)`` in emission order."""
        return tuple((s.device, s.metric) for s in self._signals)

    def peek(self) -> tuple[str, str]:
        """The ``(device, metric)`` of the next slot."""
        s = self._signals[self._next]
        return s.device, s.metric

    def take(self, ts: float) -> SimReading | None:
        """Sample the next series at ``ts``; ``None`` if a dropout suppressed it."""
        i = self._next
        self._next = (i + 1) % len(self._signals)
        s = self._signals[i]
        value = s.sample(ts)
        if value is None:
            return None
        self._seqs[i] += 1
        return SimReading(s.device, s.metric, value, ts, self._seqs[i])
