"""In-process event counters keyed by (component id, name), e.g. ("fleet", "malformed_json"),
and duration histograms keyed the same way, e.g. ("store", "commit_seconds").

Incrementing is a dict update on the hot path: no locks (everything counting runs on the
event loop thread or, for the store, reports through it), no allocation beyond the key tuple.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict

DURATION_BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Upper bounds (seconds) of the histogram buckets: 1 ms (a small batch on an SSD) to 10 s
(an SD card stalling on fsync); slower goes in ``+Inf``."""


class Durations:
    """A cumulative histogram of durations, in the shape Prometheus wants: bucket ``i`` counts
    observations ``<= bounds[i]``."""

    __slots__ = ("bounds", "count", "in_bucket", "total")

    def __init__(self, bounds: tuple[float, ...] = DURATION_BOUNDS) -> None:
        self.bounds = bounds
        self.in_bucket = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.count = 0
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.in_bucket[bisect_left(self.bounds, seconds)] += 1
        self.count += 1
        self.total += seconds

    def buckets(self) -> list[tuple[str, float]]:
        """``(le, cumulative count)`` pairs, ending with ``+Inf``."""
        out: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip((*map(str, self.bounds), "+Inf"), self.in_bucket, strict=True):
            running += n
            out.append((bound, float(running)))
        return out


class Counters:
    """A flat table of monotonically increasing counts, and of duration histograms."""

    __slots__ = ("_counts", "_durations")

    def __init__(self) -> None:
        self._counts: defaultdict[tuple[str, str], int] = defaultdict(int)
        self._durations: dict[tuple[str, str], Durations] = {}

    def inc(self, component: str, name: str, n: int = 1) -> None:
        self._counts[(component, name)] += n

    def get(self, component: str, name: str) -> int:
        return self._counts.get((component, name), 0)

    def snapshot(self) -> dict[tuple[str, str], int]:
        return dict(self._counts)

    def for_component(self, component: str) -> dict[str, int]:
        return {name: n for (comp, name), n in self._counts.items() if comp == component}

    def observe(self, component: str, name: str, seconds: float) -> None:
        """Add one duration to the ``(component, name)`` histogram (made on first use)."""
        key = (component, name)
        durations = self._durations.get(key)
        if durations is None:
            durations = self._durations[key] = Durations()
        durations.observe(seconds)

    def durations(self) -> dict[tuple[str, str], Durations]:
        return dict(self._durations)
