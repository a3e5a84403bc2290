"""Where sources deliver: check input limits, store raw readings, feed pipelines, dead-letter
bad input.

Limits (``limits`` in the config): a message or line with more than
``max_metrics_per_message`` readings is rejected whole (``too_many_metrics``); a device id
that does not match ``device_pattern`` is rejected (``bad_device``); once ``max_devices``
distinct ids were accepted, readings of further devices are rejected
(``too_many_devices``), and once ``max_series`` distinct device+metric pairs were, readings
of further pairs (``too_many_series``): so a rogue publisher inventing device ids or metric
names cannot grow the pipelines' per-key state. A known series costs a dict lookup and a
string comparison (a set lookup for a device of several metrics) per reading; the pattern
runs once per new device.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence

from gateway.config.limits import LimitsConfig
from gateway.counters import Counters
from gateway.logs import RateLimitedLog
from gateway.model import Reading
from gateway.sinks.payloads import json_bytes
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
        limits: LimitsConfig | None = None,
    ) -> None:
        self._store = store
        self.routes = routes
        """Source id -> pipeline inputs; replaced as a whole on reload."""
        self._counters = counters
        self._clock = clock
        self._warn = RateLimitedLog(log, warn_interval)
        self.open = True
        self._devices: dict[str, str | set[str]] = {}
        """The metrics of each accepted device, the series accepted: its metric while it has
        one (a set takes 216 bytes: 2 MB for 10,000 devices of one metric), then a set."""
        self._series = 0
        self.set_limits(limits or LimitsConfig())

    def set_limits(self, limits: LimitsConfig) -> None:
        """Apply (new) limits; devices and series already accepted stay accepted."""
        self._limits = limits
        self._device_ok = re.compile(limits.device_pattern).match
        self.last_seen: dict[str, float] = {}
        """When each source last delivered readings (for the silence watchdog)."""

    def accept(self, readings: list[Reading]) -> None:
        if not readings:
            return
        if not self.open:  # shutting down: MQTT redelivers (never acked); serial lines are lost
            self._counters.inc(readings[0].source, "dropped_at_shutdown", len(readings))
            return
        source = readings[0].source
        self._counters.inc(source, "messages")
        if len(readings) > self._limits.max_metrics_per_message:
            self._refuse(
                source,
                "too_many_metrics",
                f"{len(readings)} readings > {self._limits.max_metrics_per_message}",
                readings,
            )
            return
        devices = self._devices
        for reading in readings:
            known = devices.get(reading.device)
            if type(known) is str:
                if known == reading.metric:
                    continue
            elif known is not None and reading.metric in known:
                continue
            readings = [r for r in readings if self._admit(r)]  # rare: a new series
            if not readings:
                return
            break
        self._store.add_readings(readings)
        self.last_seen[source] = self._clock()
        self._counters.inc(source, "readings", len(readings))
        for push in self.routes.get(source, ()):
            for reading in readings:
                push(reading)

    def _admit(self, reading: Reading) -> bool:
        """Whether a reading's series is accepted; a new one is checked against the limits."""
        device, metric = reading.device, reading.metric
        known = self._devices.get(device)
        if known == metric or (isinstance(known, set) and metric in known):
            return True
        if known is None and not self._admit_device(reading):
            return False
        if self._series >= self._limits.max_series:
            self._refuse(
                reading.source,
                "too_many_series",
                f"{device!r} {metric[:64]!r} is beyond max_series={self._limits.max_series}",
                [reading],
            )
            return False
        if known is None:
            self._devices[device] = metric
        elif isinstance(known, str):
            self._devices[device] = {known, metric}
        else:
            known.add(metric)
        self._series += 1
        return True

    def _admit_device(self, reading: Reading) -> bool:
        """A device seen for the first time: check its id and the device cap."""
        device = reading.device
        if not self._device_ok(device):
            self._refuse(
                reading.source,
                "bad_device",
                f"device id {device[:64]!r} does not match {self._limits.device_pattern}",
                [reading],
            )
            return False
        if len(self._devices) >= self._limits.max_devices:
            self._refuse(
                reading.source,
                "too_many_devices",
                f"device {device!r} is beyond max_devices={self._limits.max_devices}",
                [reading],
            )
            return False
        return True

    def _refuse(self, source: str, reason: str, detail: str, readings: list[Reading]) -> None:
        raw = json_bytes([[r.device, r.metric, r.value, r.ts] for r in readings[:100]])
        self._dead_letter(source, reason, detail, raw)

    def when_committed(self, callback: Callable[[], None]) -> None:
        if self.open:
            self._store.when_committed(callback)

    def reject(self, source: str, reason: str, detail: str, raw: bytes) -> None:
        self._counters.inc(source, "messages")
        self._dead_letter(source, reason, detail, raw)

    def _dead_letter(self, source: str, reason: str, detail: str, raw: bytes) -> None:
        self._counters.inc(source, f"rejected_{reason}")
        self._store.add_dead_letter(source, reason, detail, raw, self._clock())
        self._warn.warning(
            f"{source}/{reason}",
            "source %s: %s: %s (kept in dead_letters)",
            source,
            reason,
            detail[:200],
        )
