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
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from sortedcontainers import SortedList

FLAT_MAX = 4096
"""Windows up to this size keep their sorted copy in a plain list (see OrderedWindow)."""
NOVELTY_BLOCK = 32
"""``anomaly``: the novelty memory beyond the level window keeps the range of each block of
this many readings (see BlockMemory): 1.25 bytes a reading (2 with blocks of 8, which gave
the same NAB detections and ``sim_eval`` verdicts)."""
MEMORY_GROWTH = 32
"""A BlockMemory grows by this many blocks at a time."""
SPARSE_SLOTS = 16
"""A seasonal profile keeps up to this many slots in a dict before it takes an array."""
CLIP = 3.0
"""Seasonal profile updates are clipped at this many residual sigmas (Huber-style)."""
TAIL = 4.0
"""``anomaly``: a level sigma is at least the median's distance to the 1st (or 99th)
percentile, on the reading's side, over this: with the default limit of 5 a point anomaly
reaches 1.25 times farther than the usual 1% tail, however heavy that tail is."""
SIGMAS_10_90 = 2.5631
"""A normal distribution's 10%-90% range is 2.5631 sigmas."""
PH_CLIP = 5.0
"""Page-Hinkley clips each standardized reading to this many sigmas (a robust test)."""
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
    """The last ``size`` values, kept sorted: median and quantiles by rank.

    Up to ``FLAT_MAX`` values the sorted values are a flat array updated with ``bisect``: the
    search is O(log n) and the insert/delete a memmove of at most ``FLAT_MAX`` slots in C,
    several times cheaper than a tree walked in Python at these sizes, with O(1) rank
    access. Beside each sorted value, ``low`` and ``high`` keep the two bytes of its arrival
    number (modulo 2**16) instead of a second, arrival-ordered copy of the values: the
    oldest value is found by searching ``low`` for its low byte (``memchr``, in C), a few
    candidates at most. The values are an array of ``typecode``: doubles (``"d"``, 10 bytes
    per value with its number) or floats (``"f"``, 6 bytes; values are rounded to float32
    as they are added). Larger windows keep a ``sortedcontainers.SortedList`` (O(log n)
    throughout) and an arrival-ordered ring.
    """

    __slots__ = ("added", "high", "low", "ring", "size", "sorted")

    def __init__(self, size: int, typecode: Literal["d", "f"] = "d") -> None:
        self.size = size
        self.added = 0
        """Values added so far: the next value's arrival number."""
        self.sorted: array[float] | SortedList
        # Flat: the low and high byte of the arrival number of each value of ``sorted``, one
        # place on: a byte at the start, never deleted (a deletion at a bytearray's start
        # moves its start, and the next insertion grows it by an eighth).
        self.low, self.high = bytearray(1), bytearray(1)
        self.ring: array[float] | None = None
        """Tree: the values in arrival order, the oldest at ``added % size`` once full."""
        if size <= FLAT_MAX:
            self.sorted = array(typecode)
        else:
            self.sorted, self.ring = SortedList(), array(typecode)

    def __len__(self) -> int:
        return len(self.sorted)

    def latest(self, n: int) -> list[float]:
        """The ``n`` most recent values, oldest first."""
        ring, count = self.ring, len(self.sorted)
        if ring is not None:
            oldest = self.added % self.size if count == self.size else 0
            in_order = list(ring[oldest:]) + list(ring[:oldest])
        else:
            first, low, high = self.added - count, self.low, self.high
            by_age = sorted(
                range(count), key=lambda i: ((low[i + 1] | high[i + 1] << 8) - first) & 0xFFFF
            )
            in_order = [self.sorted[i] for i in by_age]
        return in_order[count - n :] if n > 0 else []

    def add(self, value: float) -> float | None:
        """Add ``value``; return the value it evicts (as stored), if the window was full."""
        if self.ring is not None:
            return self._add_tree(value)
        ordered: array[float] = self.sorted
        added, low, high = self.added, self.low, self.high
        self.added = added + 1
        evicted = None
        if len(ordered) == self.size:
            oldest = added - self.size
            byte, top = oldest & 0xFF, (oldest >> 8) & 0xFF
            gone = low.find(byte, 1)
            while high[gone] != top:  # another number with the same low byte
                gone = low.find(byte, gone + 1)
            evicted = ordered.pop(gone - 1)
            del low[gone], high[gone]
        at = bisect_right(ordered, value)
        ordered.insert(at, value)
        low.insert(at + 1, added & 0xFF)
        high.insert(at + 1, (added >> 8) & 0xFF)
        if evicted is None and len(ordered) == self.size:  # full from now on: no more room
            self.sorted, self.low, self.high = array(ordered.typecode, ordered), low[:], high[:]
        return evicted

    def _add_tree(self, value: float) -> float | None:
        ordered: SortedList = self.sorted
        ring = self.ring
        assert ring is not None
        full = len(ordered) == self.size
        self.added += 1
        evicted: float | None = None
        if not full:
            ring.append(value)
        else:
            oldest = (self.added - 1) % self.size
            evicted = ring[oldest]
            ring[oldest] = value
            ordered.remove(evicted)
        ordered.add(ring[(self.added - 1) % self.size])  # as stored: rounded if float32
        return evicted

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


class BlockMemory:
    """A long memory of values for one question, :meth:`near`: did any of them lie within
    ``gap`` of a given value?

    Values are kept in blocks of ``block`` consecutive ones: each block's min and max
    (float32), and each value as a byte, its place between them in 255 steps. ``blocks``
    blocks remember ``blocks * block`` values in ``blocks * (block + 8)`` bytes, where the
    sorted float32 ring it replaces took 8 bytes a value; a value is off by at most half a
    step (1/510 of its block's range), and the extremes (a past spike is its block's max)
    are exact. The question scans the blocks' ranges (O(blocks)), then the bytes of the
    blocks whose range comes within ``gap``: it is asked for rare readings only.

    Storage grows ``MEMORY_GROWTH`` blocks at a time, each time to its exact size (an
    array grown by appending keeps up to a sixteenth more); the block being filled keeps
    its values as they are, in an array of ``typecode`` (``"f"`` holds float32 values
    exactly, in half the room).
    """

    __slots__ = ("block", "blocks", "codes", "filled", "held", "next", "pending", "ranges")

    def __init__(self, blocks: int, block: int, typecode: Literal["d", "f"] = "d") -> None:
        self.blocks, self.block = blocks, block
        self.ranges = array("f")
        """Each block's min and max, in turn."""
        self.codes = bytearray()
        self.filled = 0
        """Blocks holding values (the storage may have room for more)."""
        self.next = 0
        """Index of the next block to overwrite, once ``blocks`` are full."""
        self.pending = array(typecode, [0.0]) * block
        """The values of the block being filled, its first ``held``."""
        self.held = 0

    def add(self, value: float) -> None:
        pending, held = self.pending, self.held + 1
        pending[held - 1] = value
        if held < self.block:
            self.held = held
            return
        self.held = 0
        low, high = min(pending), max(pending)
        per_step = 255.0 / (high - low) if high > low else 0.0
        codes = bytes([round((x - low) * per_step) for x in pending])
        block, filled = self.block, self.filled
        if filled < self.blocks:
            self.filled, i = filled + 1, filled
            if 2 * filled == len(self.ranges):  # full: grow, to the exact size
                more = min(MEMORY_GROWTH, self.blocks - filled)
                self.ranges = self.ranges + array("f", bytes(8 * more))
                self.codes = self.codes + bytes(block * more)
        else:
            i = self.next
            self.next = i + 1 if i + 1 < self.blocks else 0
        self.ranges[2 * i], self.ranges[2 * i + 1] = low, high
        self.codes[i * block : (i + 1) * block] = codes

    def near(self, value: float, gap: float) -> bool:
        """Whether a remembered value lies within ``gap`` (give or take half a step)."""
        if any(abs(x - value) <= gap for x in self.pending[: self.held]):
            return True
        above, below, block, codes = value - gap, value + gap, self.block, self.codes
        ranges = self.ranges[: 2 * self.filled]
        for i, (low, high) in enumerate(zip(ranges[0::2], ranges[1::2], strict=True)):
            if low > below or high < above:
                continue
            step = (high - low) / 255.0
            start = i * block
            if any(above <= low + c * step <= below for c in codes[start : start + block]):
                return True
        return False


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


class SeasonalProfile:
    """What each slot of a ``period`` (e.g. the time of day) usually looks like.

    ``buckets`` slots, each an EWMA of the values seen in it. ``alpha`` is the weight of one
    pass of the period over a slot: readings closer together than a slot's width share it,
    so sampling faster than the slots does not make the profile chase the signal (and absorb
    a slow drift). An update can be clipped (Huber-style) so that one wild reading does not
    distort its slot for days. O(1) per reading.

    Memory: the first ``SPARSE_SLOTS`` slots seen are kept in a small dict, so that a
    device+metric seen a few times costs a few hundred bytes; beyond that, ``buckets``
    doubles (NaN: a slot never seen).
    """

    __slots__ = ("alpha", "count", "last_dt", "last_ts", "period", "step", "typecode", "values")

    def __init__(
        self, period: float, buckets: int, alpha: float, typecode: Literal["d", "f"] = "d"
    ) -> None:
        self.period, self.count, self.alpha, self.typecode = period, buckets, alpha, typecode
        self.values: dict[int, float] | array[float] = {}
        self.last_ts = -math.inf
        self.last_dt = math.inf
        self.step = alpha
        """The weight of one reading ``last_dt`` after the previous one (cached: steady rates)."""

    def slot(self, ts: float) -> int:
        return int(ts % self.period * self.count / self.period)

    def residual(self, slot: int, value: float) -> float | None:
        """``value`` minus its slot's profile; None if the slot has never been seen."""
        values = self.values
        if type(values) is dict:
            usual = values.get(slot)
            return None if usual is None else value - usual
        usual = values[slot]
        return None if usual != usual else value - usual  # NaN: never seen

    def learn(
        self, ts: float, slot: int, value: float, residual: float | None, clip: float = math.inf
    ) -> None:
        """Fold ``value`` (whose ``residual`` was just computed) into its slot."""
        dt = ts - self.last_ts
        self.last_ts = ts
        if dt != self.last_dt:
            self.last_dt = dt
            visit = dt * self.count / self.period
            alpha = self.alpha
            self.step = alpha if visit >= 1.0 else 1.0 - (1.0 - alpha) ** max(visit, 0.0)
        values = self.values
        if residual is None:
            values[slot] = value
            if type(values) is dict and len(values) > SPARSE_SLOTS:
                dense = array(self.typecode, [math.nan]) * self.count  # 8 B a slot, or 4
                for i, usual in values.items():
                    dense[i] = usual
                self.values = dense
            return
        values[slot] += self.step * max(-clip, min(clip, residual))


class PageHinkleyScorer:
    """Two-sided Page-Hinkley test: a lasting shift of the mean away from its running mean.

    The first ``warmup`` readings learn the scale (std); from then on each reading is
    standardized against the running mean of every reading since the last reset,
    ``m+ += z - delta`` and ``m- += -z - delta``, and the test statistic is how far each sum
    has climbed above its own minimum; beyond ``threshold`` is drift. Each z is clipped to
    ``PH_CLIP``, so a lone outlier cannot pass for a drift. Unlike ``cusum`` the
    reference follows the signal, so only a change that outpaces the mean's own learning is
    reported. After a finding the test restarts (the new regime is learnt afresh). O(1).

    With a ``profile`` the test runs on the residual from that seasonal profile (a signal
    with a daily cycle drifts away from what its time of day usually looks like), and starts
    once the profile has seen the slot.
    """

    __slots__ = (
        "count",
        "delta",
        "low",
        "low_min",
        "m2",
        "mean",
        "profile",
        "threshold",
        "up",
        "up_min",
        "warmup",
    )

    def __init__(
        self, delta: float, threshold: float, warmup: int, profile: SeasonalProfile | None = None
    ) -> None:
        self.delta, self.threshold, self.warmup = delta, threshold, warmup
        self.profile = profile
        self._reset()

    def _reset(self) -> None:
        self.count = 0
        self.mean = self.m2 = 0.0
        self.up = self.up_min = self.low = self.low_min = 0.0

    def observe(self, ts: float, value: float) -> Finding | None:
        x = value
        profile = self.profile
        if profile is not None:
            slot = profile.slot(ts)
            residual = profile.residual(slot, value)
            profile.learn(ts, slot, value, residual)
            if residual is None:
                return None
            x = residual
        self.count += 1
        delta = x - self.mean
        self.mean += delta / self.count
        if self.count <= self.warmup:
            self.m2 += delta * (x - self.mean)
            return None
        std = math.sqrt(self.m2 / (self.warmup - 1))
        z = (x - self.mean) / std if std > 0 else 0.0
        z = max(-PH_CLIP, min(PH_CLIP, z))
        self.up += z - self.delta
        self.low -= z + self.delta
        self.up_min = min(self.up_min, self.up)
        self.low_min = min(self.low_min, self.low)
        rise, fall = self.up - self.up_min, self.low - self.low_min
        statistic = max(rise, fall)
        if statistic <= self.threshold:
            return None
        direction = "up" if rise >= fall else "down"
        mean = self.mean
        self._reset()
        what = "the usual time-of-period profile" if self.profile is not None else "the mean"
        return Finding(
            statistic,
            self.threshold,
            f"drifting {direction} from {what} (Page-Hinkley {statistic:.1f})",
            {"mean": mean, "std": std, "page_hinkley": statistic},
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

    * **point**: the distance of the value from the median of the last ``window`` readings,
      in robust sigmas, counts only if the value is also *new*: farther than ``novelty``
      times that distance from every value of the last ``memory`` readings. A daily burst,
      a recurring spike or a level visited before is not news, however far from the median;
      a value beyond anything seen lately is.
    * **seasonal**: the residual from what this time of the ``period`` usually looks like
      (:class:`SeasonalProfile`, ``buckets`` slots, weight ``alpha``, updates clipped at
      ``CLIP`` residual sigmas), relative to the typical residual of the last ``window``
      readings. It counts once it has stayed beyond ``limit`` for ``persist`` readings in a
      row: a missing or deformed daily cycle, not one odd reading (the point score's job).
    * **regime change**: when ``persist`` readings in a row lie beyond ``limit`` on the same
      side of the median, the level has moved: the level window restarts from them and the
      point score waits for ``min_count`` readings of the new regime, so the old level does
      not inflate the scale of the new one.

    The larger score decides, against ``limit``. A sigma is the largest of the robust
    estimates from the inter-quartile and the 10%-90% range (so quantized signals keep a
    sensible scale) and ``floor`` times the window's 1%-99% spread; for the level, also the
    distance from the median to the 1% tail on the reading's side over ``TAIL`` (so a
    heavy-tailed, spiky signal needs a spike beyond its usual ones). Memory is bounded and
    grows to ``12 * window + (1 + 8 / block) * (memory - window) + 4 * buckets`` bytes per
    key: the level and residual windows (sorted float32, each value with a 2-byte arrival
    number), the novelty memory beyond the level window in :class:`BlockMemory` (a byte a
    reading, off by at most 1/510 of its block's range), the profile in float32: about 10 KB
    with the defaults.
    Each reading costs O(log window); a point anomaly's novelty check O(memory / block).
    """

    __slots__ = (
        "block",
        "floor",
        "level",
        "limit",
        "min_count",
        "novelty",
        "older",
        "older_blocks",
        "persist",
        "profile",
        "recent",
        "residuals",
        "run_level",
        "run_seasonal",
        "window",
    )

    def __init__(
        self,
        window: int = 600,
        limit: float = 5.0,
        min_count: int = 300,
        period: float = 86400.0,
        buckets: int = 288,
        alpha: float = 0.3,
        floor: float = 0.02,
        memory: int = 2016,
        novelty: float = 0.05,
        persist: int = 6,
        block: int = NOVELTY_BLOCK,
    ) -> None:
        self.window = window
        # float32: a value's 7 significant digits are more than a sensor gives, and half
        # the memory. The novelty memory is the level window's exact values, then the
        # ranges of blocks of the older readings (the level's evictions), up to ``memory``.
        self.level = OrderedWindow(window, "f")
        self.recent = OrderedWindow(memory, "f") if memory < window else None
        """The novelty memory when it is shorter than the level window."""
        self.older: BlockMemory | None = None
        """The novelty memory beyond the level window, from the first reading it evicts
        (unused when ``recent`` is)."""
        self.older_blocks, self.block = max(1, -(-(memory - window) // block)), block
        self.residuals = OrderedWindow(window, "f")
        self.profile = SeasonalProfile(period, buckets, alpha, "f")
        self.limit, self.min_count, self.floor = limit, min_count, floor
        self.novelty, self.persist = novelty, persist
        self.run_level = 0
        """Readings in a row beyond the limit on one side of the median (+ above, - below)."""
        self.run_seasonal = 0

    def _scale(self, window: OrderedWindow, lower: float) -> float:
        """The window's sigma, given ``lower`` (its 10%-90% estimate, computed already)."""
        q = window.quantile
        return max(
            MAD_PER_SIGMA * (q(0.75) - q(0.25)) / 2.0, lower, self.floor * (q(0.99) - q(0.01))
        )

    def _novel(self, value: float, distance: float) -> bool:
        """Whether every recent value is farther than ``novelty`` * ``distance`` away."""
        recent = self.level if self.recent is None else self.recent
        ordered = recent.sorted
        i = bisect_left(ordered, value)
        gap = self.novelty * distance
        if i < len(ordered) and ordered[i] - value <= gap:
            return False
        if i > 0 and value - ordered[i - 1] <= gap:
            return False
        return self.older is None or not self.older.near(value, gap)

    def observe(self, ts: float, value: float) -> Finding | None:
        # Each sigma is a max of estimates: the 10%-90% one alone is a lower bound, and a
        # reading well inside it (the common case) needs none of the others.
        level, residuals, limit = self.level, self.residuals, self.limit
        ready = len(residuals) >= self.min_count
        profile, slot = self.profile, self.profile.slot(ts)
        seasonal = profile.residual(slot, value)
        z_seasonal = deviation = 0.0
        clip = math.inf
        if ready:
            q = residuals.quantile
            lower = (q(0.9) - q(0.1)) / SIGMAS_10_90
            deviation = 0.0 if seasonal is None else seasonal - q(0.5)
            bound = max(abs(deviation) / limit, abs(seasonal or 0.0) / CLIP)
            scale = self._scale(residuals, lower) if bound > lower else lower
            clip = CLIP * scale
            if scale > 0:
                z_seasonal = deviation / scale
        profile.learn(ts, slot, value, seasonal, clip)
        self.run_seasonal = self.run_seasonal + 1 if abs(z_seasonal) > limit else 0
        finding = None
        if len(level) >= self.min_count:
            q = level.quantile
            median = q(0.5)
            diff = value - median
            lower = (q(0.9) - q(0.1)) / SIGMAS_10_90
            side = 0
            if abs(diff) > limit * lower:
                tail = q(0.99) - median if diff > 0 else median - q(0.01)
                scale = max(self._scale(level, lower), tail / TAIL)
                if abs(diff) > limit * scale:
                    side = 1 if diff > 0 else -1
            run = self.run_level
            self.run_level = run + side if side and run * side >= 0 else side
            pattern = abs(z_seasonal) if self.run_seasonal >= self.persist else 0.0
            point = 0.0
            if side and self._novel(value, abs(diff)):
                point = abs(diff) / scale if scale > 0 else math.inf
            if point > limit or pattern > limit:
                finding = self._finding(median, diff, deviation, point >= pattern)
            if abs(self.run_level) >= self.persist:
                self._rebase()
        evicted = level.add(value)
        if self.recent is not None:
            self.recent.add(value)
        elif evicted is not None:
            self._remember(evicted)
        if seasonal is not None:
            residuals.add(seasonal)
        return finding

    def _finding(self, median: float, diff: float, deviation: float, point: bool) -> Finding:
        """The finding with both z-scores exact (``observe`` skips what it can)."""
        q = self.level.quantile
        tail = q(0.99) - median if diff > 0 else median - q(0.01)
        lower = (q(0.9) - q(0.1)) / SIGMAS_10_90
        scale = max(self._scale(self.level, lower), tail / TAIL)
        z_level = diff / scale if scale > 0 else (0.0 if diff == 0 else math.inf)
        z_seasonal = 0.0
        if deviation:
            q = self.residuals.quantile
            residual_scale = self._scale(self.residuals, (q(0.9) - q(0.1)) / SIGMAS_10_90)
            z_seasonal = deviation / residual_scale if residual_scale > 0 else 0.0
        which = "level" if point else "time-of-day pattern"
        return Finding(
            abs(z_level) if point else abs(z_seasonal),
            self.limit,
            f"anomalous {which}: robust z {z_level:+.1f} (level), {z_seasonal:+.1f} (time of day)",
            {"median": median, "scale": scale, "z_level": z_level, "z_seasonal": z_seasonal},
        )

    def _remember(self, value: float) -> None:
        """Keep a reading the level window let go in the older novelty memory."""
        older = self.older
        if older is None:
            older = self.older = BlockMemory(self.older_blocks, self.block, "f")  # exact:
            # the level window's values are float32 already
        older.add(value)

    def _rebase(self) -> None:
        """The level has moved: keep only the readings of the new regime."""
        keep = abs(self.run_level) - 1  # the reading that ends the run is added by observe
        old = self.level.latest(len(self.level))
        self.level = level = OrderedWindow(self.window, "f")
        for x in old[len(old) - keep :]:
            level.add(x)
        if self.recent is None:
            for x in old[: len(old) - keep]:
                self._remember(x)  # still remembered, as older readings
        self.run_level = 0
