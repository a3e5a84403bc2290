"""What every source shares: the intake it feeds and the decode-or-dead-letter step."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol

from gateway.errors import DecodeError
from gateway.model import Reading
from gateway.sources.codecs import Decoder


class Intake(Protocol):
    """Where sources deliver: good readings, and rejected raw input with a reason."""

    def accept(self, readings: list[Reading]) -> None: ...

    def reject(self, source: str, reason: str, detail: str, raw: bytes) -> None: ...

    def when_committed(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once everything delivered so far is durably stored (never, if
        the intake closes first)."""
        ...


class Source(Protocol):
    """A long-running producer of readings; ``run`` returns only when cancelled."""

    id: str
    settled: asyncio.Event
    """Set once the first attempt to connect is over: connected, or failed and retrying."""

    async def run(self, intake: Intake) -> None: ...


class Decoding:
    """Decode one raw payload and hand the result to the intake; never raises."""

    __slots__ = ("_clock", "_decoder", "_intake", "source_id")

    def __init__(
        self,
        source_id: str,
        decoder: Decoder,
        intake: Intake,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.source_id = source_id
        self._decoder = decoder
        self._intake = intake
        self._clock = clock

    def feed(self, payload: bytes, device: str | None = None, metric: str | None = None) -> None:
        try:
            readings = self._decoder(payload, self.source_id, device, metric, self._clock())
        except DecodeError as exc:
            self._intake.reject(self.source_id, exc.reason, exc.detail, payload)
        except Exception as exc:  # the per-item boundary: a decoder bug must not stop a source
            self._intake.reject(self.source_id, "decoder_error", repr(exc), payload)
        else:
            self._intake.accept(readings)
