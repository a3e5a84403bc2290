"""Where sources deliver: store raw readings, feed pipelines, dead-letter bad input."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

from gateway.counters import Counters
from gateway.logs import RateLimitedLog
from gateway.model import Reading
from gateway.store.store import Store

log = logging.getLogger("gateway.intake")


class Intake:
    """Implements the sources' ``Intake`` protocol on the event loop thread."""

    def __init__(
        self,
        store: Store,
        routes: Mapping[str, Sequence[Callable[[Reading], None]]],
        counters: Counters,
        clock: Callable[[], float],
        warn_interval: float = 10.0,
    ) -> None:
        self._store = store
        self._routes = routes
        self._counters = counters
        self._clock = clock
        self._warn = RateLimitedLog(log, warn_interval)
        self.open = True
        self.last_seen: dict[str, float] = {}
        """When each source last delivered readings (for the silence watchdog)."""

    def accept(self, readings: list[Reading]) -> None:
        if not readings:
            return
        if not self.open:  # shutting down: MQTT redelivers (never acked); serial lines are lost
            self._counters.inc(readings[0].source, "dropped_at_shutdown", len(readings))
            return
        self._store.add_readings(readings)
        source = readings[0].source
        self.last_seen[source] = self._clock()
        self._counters.inc(source, "readings", len(readings))
        for push in self._routes.get(source, ()):
            for reading in readings:
                push(reading)

    def when_committed(self, callback: Callable[[], None]) -> None:
        if self.open:
            self._store.when_committed(callback)

    def reject(self, source: str, reason: str, detail: str, raw: bytes) -> None:
        self._counters.inc(source, f"rejected_{reason}")
        self._store.add_dead_letter(source, reason, detail, raw, self._clock())
        self._warn.warning(
            f"{source}/{reason}",
            "source %s: %s: %s (kept in dead_letters)",
            source,
            reason,
            detail[:200],
        )
