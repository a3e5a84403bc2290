"""Logging setup and a rate limiter for repeated warnings."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable


def setup(level: str = "info") -> None:
    """Human-readable lines on stderr; no timestamp under journald (it adds its own)."""
    under_journald = "JOURNAL_STREAM" in os.environ or "INVOCATION_ID" in os.environ
    fmt = "%(levelname)s %(name)s: %(message)s"
    if not under_journald:
        fmt = "%(asctime)s " + fmt
    logging.basicConfig(level=level.upper(), format=fmt, stream=sys.stderr, force=True)


class RateLimitedLog:
    """At most one line per key per ``interval``; the next line tells how many were held back."""

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._interval = interval
        self._clock = clock
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def warning(self, key: str, msg: str, *args: object) -> None:
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            self._held[key] = self._held.get(key, 0) + 1
            return
        self._last[key] = now
        held = self._held.pop(key, 0)
        if held:
            self._logger.warning(
                msg + " (and %d more like it in the last %.0fs)", *args, held, self._interval
            )
        else:
            self._logger.warning(msg, *args)
