"""Retry timing and the circuit breaker: pure state machines with an injected clock."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from enum import StrEnum


class Backoff:
    """Capped exponential backoff with full jitter (AWS architecture blog's "full jitter")."""

    def __init__(self, initial: float, maximum: float, rng: random.Random | None = None) -> None:
        self.initial = initial
        self.maximum = maximum
        self.attempt = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        """Seconds to wait before the next attempt; grows until ``maximum``."""
        cap = min(self.maximum, self.initial * (2 ** min(self.attempt, 32)))
        self.attempt += 1
        return self._rng.uniform(0, cap)

    def reset(self) -> None:
        self.attempt = 0


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Closed -> open after ``failures`` consecutive failures -> half-open after ``cooldown``.

    In half-open exactly one probe is allowed; its success closes the breaker, its failure
    opens it again for another cool-down. ``on_change(old, new)`` is told of every transition.
    """

    def __init__(
        self,
        failures: int,
        cooldown: float,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[BreakerState, BreakerState], None] | None = None,
    ) -> None:
        self.threshold = failures
        self.cooldown = cooldown
        self._clock = clock
        self._on_change = on_change
        self.state = BreakerState.CLOSED
        self.consecutive_failures = 0
        self._opened_at = 0.0
        self._probing = False

    def _move(self, new: BreakerState) -> None:
        old, self.state = self.state, new
        if old is not new and self._on_change is not None:
            self._on_change(old, new)

    def allow(self) -> bool:
        """May a call go through now? In half-open, only the single probe may."""
        if self.state is BreakerState.OPEN and self._clock() - self._opened_at >= self.cooldown:
            self._move(BreakerState.HALF_OPEN)
            self._probing = False
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.HALF_OPEN and not self._probing:
            self._probing = True
            return True
        return False

    def retry_in(self) -> float:
        """Seconds until the breaker would let a probe through (0 when closed)."""
        if self.state is BreakerState.OPEN:
            return max(0.0, self.cooldown - (self._clock() - self._opened_at))
        return 0.0

    def record_success(self) -> None:
        self.consecutive_failures = 0
        self._probing = False
        self._move(BreakerState.CLOSED)

    def record_failure(self) -> None:
        self.consecutive_failures += 1
        self._probing = False
        if self.state is BreakerState.HALF_OPEN or self.consecutive_failures >= self.threshold:
            self._opened_at = self._clock()
            self._move(BreakerState.OPEN)
