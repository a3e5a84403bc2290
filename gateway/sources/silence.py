"""Silent devices: alert when a source has delivered nothing for its configured timeout.

The intake stamps the time of each delivery per source (one dict store per message); this
watchdog compares those stamps with the timeouts once a second and emits one ``raised``
alert per silence and one ``cleared`` alert when readings come back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

from gateway.model import Alert


class SilenceWatch:
    """Decides, from last-delivery stamps, which sources went silent or came back."""

    def __init__(
        self,
        timeouts: Mapping[str, float],
        last_seen: Mapping[str, float],
        emit: Callable[[Alert], None],
        clock: Callable[[], float],
    ) -> None:
        self._timeouts = dict(timeouts)
        self._last_seen = last_seen
        self._emit = emit
        self._clock = clock
        self._started = clock()
        self.silent: set[str] = set()

    def check(self) -> None:
        now = self._clock()
        for source, timeout in self._timeouts.items():
            last = self._last_seen.get(source, self._started)
            quiet = now - last
            if quiet >= timeout and source not in self.silent:
                self.silent.add(source)
                self._alert(source, "raised", now, quiet, timeout)
            elif quiet < timeout and source in self.silent:
                self.silent.discard(source)
                self._alert(source, "cleared", now, quiet, timeout)

    def _alert(self, source: str, state: str, now: float, quiet: float, timeout: float) -> None:
        message = (
            f"source {source} delivered nothing for {quiet:.0f}s (timeout {timeout:.0f}s)"
            if state == "raised"
            else f"source {source} delivers again"
        )
        self._emit(
            Alert(
                "gateway",
                f"source:{source}",
                source,
                "silence",
                "silence",
                "raised" if state == "raised" else "cleared",
                "warning",
                now,
                quiet,
                timeout,
                message,
            )
        )

    async def run(self, interval: float = 1.0) -> None:
        while True:
            await asyncio.sleep(interval)
            self.check()
