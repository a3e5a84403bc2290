"""Backoff and circuit breaker, on a fake clock."""

from __future__ import annotations

import random

from gateway.sinks.resilience import Backoff, BreakerState, CircuitBreaker


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_backoff_grows_to_its_cap_with_full_jitter() -> None:
    backoff = Backoff(0.5, 8.0, random.Random(1))
    caps = [0.5, 1, 2, 4, 8, 8, 8]
    delays = [backoff.next_delay() for _ in caps]
    assert all(0 <= d <= cap for d, cap in zip(delays, caps, strict=True))
    assert max(Backoff(0.5, 8.0, random.Random(2)).next_delay() for _ in range(50)) <= 0.5
    backoff.reset()
    assert backoff.next_delay() <= 0.5


def test_breaker_opens_after_consecutive_failures_and_half_opens_with_one_probe() -> None:
    clock = FakeClock()
    changes: list[tuple[BreakerState, BreakerState]] = []
    breaker = CircuitBreaker(3, 30.0, clock, on_change=lambda a, b: changes.append((a, b)))
    for _ in range(2):
        assert breaker.allow()
        breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    assert not breaker.allow()
    clock.now = 29.0
    assert not breaker.allow()
    assert breaker.retry_in() == 1.0
    clock.now = 30.0
    assert breaker.allow()  # the single probe
    assert not breaker.allow()  # no second call while the probe is out
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    clock.now = 60.0
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED
    assert breaker.allow()
    assert [new for _, new in changes] == [
        BreakerState.OPEN,
        BreakerState.HALF_OPEN,
        BreakerState.OPEN,
        BreakerState.HALF_OPEN,
        BreakerState.CLOSED,
    ]


def test_success_resets_the_failure_count() -> None:
    breaker = CircuitBreaker(2, 1.0, FakeClock())
    breaker.record_failure()
    breaker.record_success()
    breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED
