"""The soak's verdict: a leak shows as a positive slope, a warm-up alone does not."""

from __future__ import annotations

import pytest

from gateway.bench.soak import rss_trend, slope


def test_slope_of_a_line_and_of_too_few_points() -> None:
    assert slope([(0, 1), (1, 3), (2, 5)]) == pytest.approx(2)
    assert slope([(0, 7)]) == 0
    assert slope([(1, 7), (1, 9)]) == 0  # no spread in x: no slope


def test_a_warm_up_then_flat_rss_is_no_growth() -> None:
    # 40 MB -> 80 MB over the first 5 minutes, then flat at 80 MB (with jitter) for 5 more
    warm = [(t, 40 + 40 * t / 300) for t in range(0, 300, 5)]
    flat = [(t, 80 + (0.2 if t % 10 else -0.2)) for t in range(300, 600, 5)]
    trend = rss_trend(warm + flat)
    assert trend is not None
    assert abs(trend.slope_mb_per_hour) < 0.5
    assert trend.first_mb == 40
    assert trend.final_mb == pytest.approx(80.2)
    assert trend.samples == 120


def test_a_steady_leak_is_reported_per_hour() -> None:
    leak = [(t, 50 + 0.01 * t) for t in range(0, 600, 2)]  # 0.01 MB/s = 36 MB/hour
    trend = rss_trend(leak)
    assert trend is not None
    assert trend.slope_mb_per_hour == pytest.approx(36)
    assert trend.half_mb == pytest.approx(53)


def test_no_samples_no_trend() -> None:
    assert rss_trend([]) is None
