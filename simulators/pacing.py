"""A monotonic send schedule: slot ``k`` is due at ``anchor + k / rate``.

Sleeping a fixed interval after each message drifts (the send time adds up); a schedule
does not. When the sender falls behind, due slots go out at once until it has caught up.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["Pacer"]


class Pacer:
    """Hands out send slots at ``rate`` per second (``None``: as fast as possible).

    ``clock`` and ``sleep`` are injectable so tests run in virtual time; pass
    ``threading.Event.wait`` as ``sleep`` to make waits interruptible.
    """

    def __init__(
        self,
        rate: float | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        if rate is not None and rate <= 0:
            raise ValueError(f"rate must be positive, got {rate}")
        self.rate = rate
        self._clock = clock
        self._sleep = sleep
        self._t0 = self._anchor = clock()
        self._k = 0

    @property
    def elapsed(self) -> float:
        """Seconds since the pacer was created."""
        return self._clock() - self._t0

    def next_offset(self) -> float:
        """When the next slot is due, in seconds since creation (now, if unpaced)."""
        if self.rate is None:
            return self.elapsed
        return self._anchor + self._k / self.rate - self._t0

    def wait(self) -> float:
        """Sleep until the next slot is due, take it, and return its offset."""
        due = self.next_offset()
        delay = due - self.elapsed
        if delay > 0:
            self._sleep(delay)
        self._k += 1
        return due

    def reanchor(self) -> None:
        """Restart the schedule from now, so a pause is not followed by a catch-up burst."""
        self._anchor = self._clock()
        self._k = 0
