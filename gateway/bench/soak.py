"""The soak's verdict: does the gateway's RSS keep growing under a steady load?

RSS climbs while windows, caches and SQLite's page cache fill, then should stay flat. The
trend is a least-squares line through the second half of the samples only, so that the
warm-up does not pass for a leak.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


def slope(samples: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of (x, y) samples; 0 with fewer than two distinct x."""
    n = len(samples)
    if n < 2:
        return 0.0
    mx = sum(x for x, _ in samples) / n
    my = sum(y for _, y in samples) / n
    sxx = sum((x - mx) ** 2 for x, _ in samples)
    sxy = sum((x - mx) * (y - my) for x, y in samples)
    return sxy / sxx if sxx else 0.0


@dataclass(frozen=True)
class Trend:
    slope_mb_per_hour: float
    """Of the second half of the samples."""
    first_mb: float
    half_mb: float
    """RSS at the start of the second half."""
    final_mb: float
    samples: int


def rss_trend(samples: Sequence[tuple[float, float]]) -> Trend | None:
    """The trend of (seconds, RSS MB) samples; None without any."""
    if not samples:
        return None
    second = samples[len(samples) // 2 :]
    hourly = [(t / 3600, mb) for t, mb in second]
    return Trend(slope(hourly), samples[0][1], second[0][1], samples[-1][1], len(samples))
