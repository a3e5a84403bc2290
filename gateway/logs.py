"""Logging setup and a rate limiter for repeated warnings."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Mapping

import orjson

LOG_FORMATS = ("text", "json")


def under_journald(env: Mapping[str, str] | None = None) -> bool:
    """Is stderr connected to the journal? (``$JOURNAL_STREAM`` names stderr's device:inode.)"""
    env = os.environ if env is None else env
    stream = env.get("JOURNAL_STREAM", "")
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return stream == f"{st.st_dev}:{st.st_ino}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts`` (epoch seconds), ``level``, ``logger``, ``msg``,
    ``exc`` when there is a traceback; ``ts`` is left out under journald (it stamps lines)."""

    def __init__(self, with_time: bool = True) -> None:
        super().__init__()
        self._with_time = with_time

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {}
        if self._with_time:
            doc["ts"] = round(record.created, 6)
        doc["level"] = record.levelname.lower()
        doc["logger"] = record.name
        doc["msg"] = record.getMessage()
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc).decode()


class RepeatFilter(logging.Filter):
    """Lets an identical warning or error (same logger, level and text) through at most once
    per ``interval``; the next one that passes says how many were held back. Info lines are
    deliberate events (a reload, a connection) and always pass."""

    def __init__(
        self, interval: float = 10.0, clock: Callable[[], float] = time.monotonic, size: int = 1024
    ) -> None:
        super().__init__()
        self._interval = interval
        self._clock = clock
        self._size = size
        self._seen: dict[tuple[str, int, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, record.levelno, record.getMessage())
        now = self._clock()
        last = self._seen.get(key)
        if last is not None and now - last[0] < self._interval:
            self._seen[key] = (last[0], last[1] + 1)
            return False
        if len(self._seen) >= self._size:
            self._seen.clear()  # bounded: forgetting only lets a repeat through early
        self._seen[key] = (now, 0)
        if last is not None and last[1]:
            record.msg = f"{record.getMessage()} (repeated {last[1]} more times)"
            record.args = None
        return True


def setup(level: str = "info", fmt: str = "text") -> None:
    """Log to stderr, human-readable (``text``) or as JSON lines (``json``); no timestamp of
    our own under journald (it adds its own); identical repeats are rate-limited."""
    journald = under_journald()
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(with_time=not journald))
    else:
        text = "%(levelname)s %(name)s: %(message)s"
        handler.setFormatter(logging.Formatter(text if journald else "%(asctime)s " + text))
    handler.addFilter(RepeatFilter())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


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
