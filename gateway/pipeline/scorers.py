"""Per-key anomaly scorers: pure state machines fed one ``(ts, value)`` at a time.

A scorer holds the state of one (device, metric). ``observe`` returns ``None`` for a normal
reading (no allocation on the normal path) or a :class:`Finding` for an anomalous one. The
raise / clear / cooldown lifecycle is not here: see :mod:`gateway.pipeline.detect`.

Every scorer is online with bounded memory: O(1) per reading, or O(log n) for the ones that
keep an ordered window (``mad``, ``spike`` and the default ``anomaly`` ensemble).
"""

from __future__ import annotations

import math
from array import array
from bisect import bisect_left, insort
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from sortedcontainers import SortedList

FLAT_MAX = 4096
"""Windows up to this size keep their sorted copy in a plain list (see OrderedWindow)."""
MAD_PER_SIGMA = 1.4826
"""A normal distribution's sigma is 1.4826 times its median absolute deviation."""


@dataclass(frozen=True, slots=True)
class Finding:
    """Why one reading is anomalous: its score against the limit, and the evidence."""

    score: float
    limit: float
    reason: str
    evidence: dict[str, float]
    ts: float | None = None
    """Event time of the anomalous reading when it is not the one just observed (``spike``)."""
    value: float | None = None


class Scorer(Protocol):
    """The anomaly test of one detector kind for one (device, metric)."""

    def observe(self, ts: float, value: float) -> Finding | None: ...


ScorerFactory = Callable[[], Scorer]


class RangeScorer:
    """Physically impossible values: outside ``[low, high]`` is a sensor fault."""

    __slots__ = ("high", "low")

    def __init__(self, low: float, high: float) -> None:
        self.low, self.high = low, high

    def observe(self, ts: float, value: float) -> Finding | None:
        if self.low <= value <= self.high:
            return None
        limit = self.high if value > self.high else self.low
        return Finding(
            abs(value - limit),
            limit,
            f"outside the possible range [{self.low:g}, {self.high:g}]",
            {"low": self.low, "high": self.high},
        )


class RateScorer:
    """Rate of change between consecutive readings beyond ``limit`` per ``per`` seconds."""

    __slots__ = ("last_ts", "last_value", "limit", "per")

    def __init__(self, limit: float, per: float) -> None:
        self.limit, self.per = limit, per
        self.last_ts: float | None = None
        self.last_value = 0.0

    def observe(self, ts: float, value: float) -> Finding | None:
        last_ts, last_value = self.last_ts, self.last_value
        if last_ts is not None and ts <= last_ts:
            return None  # out of order or repeated: no rate to speak of
        self.last_ts, self.last_value = ts, value
        if last_ts is None:
            return None
        rate = (value - last_value) / (ts - last_ts) * self.per
        if abs(rate) <= self.limit:
            return None
        unit = "s" if self.per == 1 else f"{self.per:g}s"
        return Finding(
            abs(rate),
            self.limit,
            f"changing at {rate:+.4g}/{unit}, limit {self.limit:g}",
            {"rate": rate, "previous": last_value, "dt": ts - last_ts},
        )


class ZScoreScorer:
    """Distance from the mean of the last ``window`` readings, in standard deviations.

    Running sums over a ring buffer: O(1) per reading. The reading is scored before it joins
    the window; ``min_count`` readings are needed before any verdict.
    """

    __slots__ = ("limit", "min_count", "ring", "sum", "sum_sq", "window")

    def __init__(self, window: int, limit: float, min_count: int) -> None:
        self.window, self.limit, self.min_count = window, limit, min_count
        self.ring: deque[float] = deque()
        self.sum = 0.0
        self.sum_sq = 0.0

    def observe(self, ts: float, value: float) -> Finding | None:
        ring = self.ring
        n = len(ring)
        finding = None
        if n >= self.min_count:
            mean = self.sum / n
            var = max(self.sum_sq / n - mean * mean, 0.0)
            std = math.sqrt(var)
            z = (value - mean) / std if std > 0 else (0.0 if value == mean else math.inf)
            if abs(z) > self.limit:
                finding = Finding(
                    abs(z),
                    self.limit,
                    f"z-score {z:+.2f} over the last {n} readings",
                    {"mean": mean, "std": std, "z": z, "n": float(n)},
                )
        ring.append(value)
        self.sum += value
        self.sum_sq += value * value
        if n + 1 > self.window:
            old = ring.popleft()
            self.sum -= old
            self.sum_sq -= old * old
        return finding


class EwmaScorer:
    """Distance from an exponentially weighted mean, in exponentially weighted std devs."""

    __slots__ = ("alpha", "count", "limit", "mean", "min_count", "var")

    def __init__(self, alpha: float, limit: float, min_count: int) -> None:
        self.alpha, self.limit, self.min_count = alpha, limit, min_count
        self.count = 0
        self.mean = 0.0
        self.var = 0.0

    def observe(self, ts: float, value: float) -> Finding | None:
        self.count += 1
        if self.count == 1:
            self.mean = value
            return None
        diff = value - self.mean
        finding = None
        if self.count > self.min_count:
            std = math.sqrt(self.var)
            z = diff / std if std > 0 else (0.0 if diff == 0 else math.inf)
            if abs(z) > self.limit:
                finding = Finding(
                    abs(z),
                    self.limit,
                    f"{z:+.2f} EWMA standard deviations from {self.mean:.4g}",
                    {"mean": self.mean, "std": std, "z": z},
                )
        increment = self.alpha * diff
        self.mean += increment
        self.var = (1 - self.alpha) * (self.var + diff * increment)
        return finding


class OrderedWindow:
    """The last ``size`` values, also kept sorted: median and quartiles by rank.

    Up to ``FLAT_MAX`` values the sorted copy is a flat array of doubles updated with
    ``bisect``: the search is O(log n) and the insert/delete a memmove of at most
    ``FLAT_MAX`` slots in C, several times cheaper than a tree walked in Python at these
    sizes, with O(1) rank access. Larger windows use ``sortedcontainers.SortedList``
    (O(log n) throughout). The arrival order is a ring of doubles. Doubles rather than lists
    of float objects: 16 bytes per value instead of about 40, which is most of a detector's
    memory per device+metric.
    """

    __slots__ = ("oldest", "ring", "size", "sorted")

    def __init__(self, size: int) -> None:
        self.size = size
        self.ring = array("d")
        self.oldest = 0
        """Index in ``ring`` of the oldest value, once the ring is full."""
        self.sorted: array[float] | SortedList = array("d") if size <= FLAT_MAX else SortedList()

    def __len__(self) -> int:
        return len(self.ring)

    def add(self, value: float) -> None:
        ring, ordered = self.ring, self.sorted
        evicted: float | None = None
        if len(ring) < self.size:
            ring.append(value)
        else:
            oldest = self.oldest
            evicted = ring[oldest]
            ring[oldest] = value
            self.oldest = oldest + 1 if oldest + 1 < self.size else 0
        if isinstance(ordered, array):
            insort(ordered, value)
            if evicted is not None:
                del ordered[bisect_left(ordered, evicted)]
        else:
            ordered.add(value)
            if evicted is not None:
                ordered.remove(evicted)

    def quantile(self, q: float) -> float:
        ordered = self.sorted
        n = len(ordered)
        rank = (n - 1) * q
        low = int(rank)
        if low + 1 >= n:
            return float(ordered[low])
        below = ordered[low]
        return float(below + (ordered[low + 1] - below) * (rank - low))

    def robust_scale(self) -> float:
        """Sigma estimated from the spread: MAD taken as half the inter-quartile range.

        For a symmetric distribution the MAD is exactly half the IQR; this keeps every
        update O(log n) where an exact MAD would need a second ordered structure.
        """
        return MAD_PER_SIGMA * (self.quantile(0.75) - self.quantile(0.25)) / 2.0


class MadScorer:
    """Robust z-score: distance from the rolling median in (MAD-estimated) sigmas."""

    __slots__ = ("limit", "min_count", "window")

    def __init__(self, window: int, limit: float, min_count: int) -> None:
        self.window = OrderedWindow(window)
        self.limit, self.min_count = limit, min_count

    def observe(self, ts: float, value: float) -> Finding | None:
        window = self.window
        finding = None
        if len(window) >= self.min_count:
            median = window.quantile(0.5)
            scale = window.robust_scale()
            diff = value - median
            z = diff / scale if scale > 0 else (0.0 if diff == 0 else math.inf)
            if abs(z) > self.limit:
                finding = Finding(
                    abs(z),
                    self.limit,
                    f"robust z-score {z:+.2f} from median {median:.4g}",
                    {"median": median, "scale": scale, "z": z},
                )
        window.add(value)
        return finding


class CusumScorer:
    """Two-sided CUSUM for slow drift, on values standardized by a learned baseline.

    The first ``warmup`` readings set the baseline mean and std; then
    ``S+ = max(0, S+ + z - k)`` and ``S- = max(0, S- - z - k)``; beyond ``h`` is drift.
    The sums restart after a finding, so a lasting drift is reported again only if it goes on.
    """

    __slots__ = ("count", "h", "k", "low", "m2", "mean", "up", "warmup")

    def __init__(self, k: float, h: float, warmup: int) -> None:
        self.k, self.h, self.warmup = k, h, warmup
        self.count = 0
        self.mean = 0.0
        self.m2 = 0.0
        self.up = 0.0
        self.low = 0.0

    def observe(self, ts: float, value: float) -> Finding | None:
        if self.count < self.warmup:
            self.count += 1
            delta = value - self.mean
            self.mean += delta / self.count
            self.m2 += delta * (value - self.mean)
            return None
        std = math.sqrt(self.m2 / (self.count - 1)) if self.count > 1 else 0.0
        z = (value - self.mean) / std if std > 0 else 0.0
        self.up = max(0.0, self.up + z - self.k)
        self.low = max(0.0, self.low - z - self.k)
        total = max(self.up, self.low)
        if total <= self.h:
            return None
        direction = "up" if self.up >= self.low else "down"
        self.up = self.low = 0.0
        return Finding(
            total,
            self.h,
            f"drifting {direction} from the baseline {self.mean:.4g} (CUSUM {total:.1f})",
            {"mean": self.mean, "std": std, "cusum": total},
        )


class StuckScorer:
    """Flatline: no change beyond ``epsilon`` for ``count`` readings and/or ``duration`` s."""

    __slots__ = ("count", "duration", "epsilon", "reference", "run", "since")

    def __init__(self, epsilon: float, count: int | None, duration: float | None) -> None:
        self.epsilon, self.count, self.duration = epsilon, count, duration
        self.reference: float | None = None
        self.since = 0.0
        self.run = 0

    def observe(self, ts: float, value: float) -> Finding | None:
        if self.reference is None or abs(value - self.reference) > self.epsilon:
            self.reference, self.since, self.run = value, ts, 1
            return None
        self.run += 1
        held = ts - self.since
        if self.count is not None and self.run < self.count:
            return None
        if self.duration is not None and held < self.duration:
            return None
        return Finding(
            float(self.run),
            float(self.count or 0),
            f"stuck at {self.reference:g} for {self.run} readings ({held:g}s)",
            {"readings": float(self.run), "seconds": held, "reference": self.reference},
        )


class SpikeScorer:
    """A single-point outlier: far from the rolling median, and the next reading is back.

    Needs one reading of look-ahead, so the finding comes with the next reading but carries
    the spike's own event time and value.
    """

    __slots__ = ("limit", "min_count", "pending", "window")

    def __init__(self, window: int, limit: float, min_count: int) -> None:
        self.window = OrderedWindow(window)
        self.limit, self.min_count = limit, min_count
        self.pending: tuple[float, float, float, float, float] | None = None
        """(ts, value, z, median, scale) of a candidate spike."""

    def _z(self, value: float) -> tuple[float, float, float]:
        median = self.window.quantile(0.5)
        scale = self.window.robust_scale()
        diff = value - median
        z = diff / scale if scale > 0 else (0.0 if diff == 0 else math.inf)
        return z, median, scale

    def observe(self, ts: float, value: float) -> Finding | None:
        window = self.window
        finding = None
        if len(window) >= self.min_count:
            z, median, scale = self._z(value)
            pending = self.pending
            self.pending = None
            if pending is not None:
                spike_ts, spike_value, spike_z, median, scale = pending
                if abs(z) <= self.limit:
                    finding = Finding(
                        abs(spike_z),
                        self.limit,
                        f"single-point spike, robust z-score {spike_z:+.2f}",
                        {"median": median, "scale": scale, "z": spike_z, "next": value},
                        spike_ts,
                        spike_value,
                    )
                window.add(spike_value)
            elif abs(z) > self.limit:
                self.pending = (ts, value, z, median, scale)
                return None
        window.add(value)
        return finding


class AnomalyScorer:
    """The default detector for signals nothing is known about: a small robust ensemble.

    Two robust z-scores, the larger one decides:

    * **level**: distance of the value from the median of the last ``window`` readings;
    * **seasonal**: distance of the value from what this time of day (``period`` seconds,
      ``buckets`` slots) usually looks like, an EWMA per slot, relative to the typical size of
      that seasonal residual over the last ``window`` readings. It catches a missing daily
      cycle or a flattened signal that stays inside the level's usual range.

    Each z-score is the deviation over a robust sigma (MAD estimated from the inter-quartile
    range) floored at ``floor`` times the window's 1%-99% spread, so quantized or nearly
    constant signals do not turn every small step into an infinite score. Memory is bounded
    (two windows and ``buckets`` floats per key), each reading costs O(log window).
    """

    __slots__ = (
        "alpha",
        "bucket_count",
        "bucket_seen",
        "buckets",
        "floor",
        "level",
        "limit",
        "min_count",
        "period",
        "residuals",
    )

    def __init__(
        self,
        window: int = 600,
        limit: float = 6.0,
        min_count: int = 300,
        period: float = 86400.0,
        buckets: int = 288,
        alpha: float = 0.3,
        floor: float = 0.02,
    ) -> None:
        self.level = OrderedWindow(window)
        self.residuals = OrderedWindow(window)
        self.limit, self.min_count = limit, min_count
        self.period, self.bucket_count, self.alpha, self.floor = period, buckets, alpha, floor
        self.buckets = array("d", [0.0]) * buckets
        self.bucket_seen = bytearray(buckets)

    def _z(self, window: OrderedWindow, diff: float) -> tuple[float, float]:
        spread = window.quantile(0.99) - window.quantile(0.01)
        scale = max(window.robust_scale(), self.floor * spread)
        if scale > 0:
            return diff / scale, scale
        return (0.0 if diff == 0 else math.inf), scale

    def observe(self, ts: float, value: float) -> Finding | None:
        level, residuals = self.level, self.residuals
        slot = int(ts % self.period * self.bucket_count / self.period)
        seasonal: float | None = None
        if self.bucket_seen[slot]:
            seasonal = value - self.buckets[slot]
            self.buckets[slot] += self.alpha * seasonal
        else:
            self.bucket_seen[slot] = 1
            self.buckets[slot] = value
        finding = None
        if len(level) >= self.min_count:
            median = level.quantile(0.5)
            z_level, level_scale = self._z(level, value - median)
            z_seasonal = 0.0
            if seasonal is not None and len(residuals) >= self.min_count:
                z_seasonal, _ = self._z(residuals, seasonal - residuals.quantile(0.5))
            score = max(abs(z_level), abs(z_seasonal))
            if score > self.limit:
                which = "level" if abs(z_level) >= abs(z_seasonal) else "seasonal"
                finding = Finding(
                    score,
                    self.limit,
                    f"anomalous {which}: robust z {z_level:+.1f} (level), "
                    f"{z_seasonal:+.1f} (time of day)",
                    {
                        "median": median,
                        "scale": level_scale,
                        "z_level": z_level,
                        "z_seasonal": z_seasonal,
                    },
                )
        level.add(value)
        if seasonal is not None:
            residuals.add(seasonal)
        return finding
