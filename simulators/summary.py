"""What a simulator run sent, per series, for humans (one line) and for tests (JSON)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from simulators.signals import SimReading

__all__ = ["RunSummary", "SeriesStats"]


@dataclass(slots=True)
class SeriesStats:
    """Count, sum and range of the values one device+metric sent."""

    count: int = 0
    sum: float = 0.0
    min: float = math.inf
    max: float = -math.inf
    first_seq: int = 0
    last_seq: int = 0

    def add(self, value: float, seq: int) -> None:
        """Account for one reading."""
        if self.count == 0:
            self.first_seq = seq
        self.count += 1
        self.sum += value
        self.min = min(self.min, value)
        self.max = max(self.max, value)
        self.last_seq = seq

    def as_dict(self) -> dict[str, float | int]:
        """JSON shape: ``count, sum, mean, min, max, first_seq, last_seq``."""
        empty = self.count == 0
        return {
            "count": self.count,
            "sum": self.sum,
            "mean": 0.0 if empty else self.sum / self.count,
            "min": 0.0 if empty else self.min,
            "max": 0.0 if empty else self.max,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
        }


@dataclass
class RunSummary:
    """Totals of one run; ``series[device][metric]`` holds what each series sent."""

    sent: int = 0
    """Good readings put on the wire."""
    bad: int = 0
    """Malformed payloads or garbage written on purpose (never counted in ``sent``)."""
    dropped: int = 0
    """Readings a ``dropout`` fault suppressed."""
    elapsed: float = 0.0
    interrupted: bool = False
    """Ended by Ctrl-C rather than by count, duration or ``stop``."""
    series: dict[str, dict[str, SeriesStats]] = field(default_factory=dict)

    def add(self, reading: SimReading) -> None:
        """Account for one good reading sent."""
        self.sent += 1
        per_device = self.series.setdefault(reading.device, {})
        stats = per_device.get(reading.metric)
        if stats is None:
            stats = per_device[reading.metric] = SeriesStats()
        stats.add(reading.value, reading.seq)

    def extra(self) -> dict[str, float | int]:
        """Subclass counters for :meth:`line` and :meth:`as_dict`."""
        return {}

    def line(self) -> str:
        """One human line: ``sent=... bad=... dropped=... elapsed=...s rate=.../s``."""
        rate = self.sent / self.elapsed if self.elapsed > 0 else 0.0
        more = "".join(f" {k}={v}" for k, v in self.extra().items())
        return (
            f"sent={self.sent} bad={self.bad} dropped={self.dropped}{more} "
            f"elapsed={self.elapsed:.2f}s rate={rate:.1f}/s"
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON shape: totals plus ``series: {device: {metric: {count, sum, ...}}}``."""
        return {
            "sent": self.sent,
            "bad": self.bad,
            "dropped": self.dropped,
            **self.extra(),
            "elapsed_s": round(self.elapsed, 6),
            "series": {
                device: {metric: s.as_dict() for metric, s in sorted(metrics.items())}
                for device, metrics in sorted(self.series.items())
            },
        }

    def write_json(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`as_dict` to ``path`` atomically (temp file + rename)."""
        target = Path(path)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        tmp.write_bytes(orjson.dumps(self.as_dict(), option=orjson.OPT_INDENT_2) + b"\n")
        os.replace(tmp, target)
