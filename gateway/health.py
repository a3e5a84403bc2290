"""Is the gateway making progress? One periodic check feeds the systemd watchdog, ``/readyz``
and the metrics.

Progress means: the event loop runs this check at all (a blocked loop sends nothing, so
systemd restarts the process); the store's writer thread answers and its pending items get
committed; each sink's outbox is empty, or drains, or the sink is trying (failures counted),
or its circuit breaker is deliberately open. A part that shows no progress for
``stall_after`` seconds is *stalled*, and the watchdog stops being pinged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from gateway.counters import Counters
from gateway.sinks.resilience import BreakerState

log = logging.getLogger("gateway.health")

STORE_PROGRESS_COUNTERS = ("readings_written", "duplicates", "dead_letters", "rejected")


class StoreView(Protocol):
    """What the check needs from the store."""

    @property
    def pending(self) -> int: ...

    async def query(self, sql: str, params: tuple[object, ...] = ()) -> list[dict[str, object]]: ...

    def memory_depths(self) -> dict[str, int]: ...

    def memory_ages(self) -> dict[str, float]: ...


@dataclass(frozen=True, slots=True)
class SinkState:
    """One sink as seen by a check."""

    depth: int
    oldest_age: float
    breaker: BreakerState
    connected: bool


@dataclass(slots=True)
class Verdict:
    """The outcome of one check."""

    store_open: bool = False
    store_pending: int = 0
    store_probe_seconds: float = 0.0
    loop_lag: float = 0.0
    sinks: dict[str, SinkState] = field(default_factory=dict)
    stalled: list[str] = field(default_factory=list)

    @property
    def alive(self) -> bool:
        return not self.stalled


class Monitor:
    """Runs the progress check; remembers the last verdict for ``/readyz`` and metrics."""

    def __init__(
        self,
        store: StoreView,
        breakers: Callable[[], Mapping[str, tuple[BreakerState, int]]],
        counters: Counters,
        *,
        stall_after: float,
        probe_timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._breakers = breakers
        self._counters = counters
        self._stall_after = stall_after
        self._probe_timeout = probe_timeout
        self._clock = clock
        self._wall = wall_clock
        self._progress_at: dict[str, float] = {}
        self._marks: dict[str, int] = {}
        self.last = Verdict()

    def _mark(self, part: str, progressing: bool, now: float, verdict: Verdict) -> None:
        if progressing or part not in self._progress_at:
            self._progress_at[part] = now
        elif now - self._progress_at[part] > self._stall_after:
            verdict.stalled.append(part)

    def _advanced(self, key: str, value: int) -> bool:
        before = self._marks.get(key)
        self._marks[key] = value
        return before is not None and value > before

    async def check(self, loop_lag: float = 0.0) -> Verdict:
        """Look at every part once; ``loop_lag`` is how late the caller woke up."""
        now = self._clock()
        verdict = Verdict(loop_lag=loop_lag)
        started = time.perf_counter()
        try:
            rows = await asyncio.wait_for(
                self._store.query(
                    "SELECT sink, count(*) AS n, min(created) AS oldest FROM outbox GROUP BY sink"
                ),
                self._probe_timeout,
            )
        except (TimeoutError, RuntimeError, OSError) as exc:  # hung or closed writer thread
            log.warning("health: the store did not answer: %r", exc)
            rows = None
        except Exception as exc:  # a database error is a failed probe, not a crash
            log.warning("health: store probe failed: %r", exc)
            rows = None
        verdict.store_probe_seconds = time.perf_counter() - started
        verdict.store_open = rows is not None
        verdict.store_pending = self._store.pending
        committed = sum(self._counters.get("store", n) for n in STORE_PROGRESS_COUNTERS)
        store_moves = self._advanced("store", committed)
        self._mark(
            "store", rows is not None and (verdict.store_pending == 0 or store_moves), now, verdict
        )
        depths = {str(r["sink"]): (int(str(r["n"])), r["oldest"]) for r in rows or ()}
        wall = self._wall()
        ages = self._store.memory_ages()
        for sink, n in self._store.memory_depths().items():  # sinks with ``outbox: memory``
            committed_n, oldest = depths.get(sink, (0, None))
            if n:
                waiting_since = wall - ages.get(sink, 0.0)
                if oldest is None or waiting_since < float(str(oldest)):
                    oldest = waiting_since
            depths[sink] = (committed_n + n, oldest)
        for sink, (breaker, consecutive_failures) in self._breakers().items():
            depth, oldest = depths.get(sink, (0, None))
            age = max(0.0, wall - float(str(oldest))) if oldest is not None else 0.0
            verdict.sinks[sink] = SinkState(
                depth, age, breaker, breaker is BreakerState.CLOSED and consecutive_failures == 0
            )
            acked = self._advanced(f"{sink}/acked", self._counters.get(sink, "acked"))
            trying = self._advanced(f"{sink}/failures", self._counters.get(sink, "failures"))
            deliberately_open = breaker is not BreakerState.CLOSED
            if rows is not None:
                self._mark(
                    f"sink:{sink}", depth == 0 or acked or trying or deliberately_open, now, verdict
                )
        self.last = verdict
        return verdict

    def ready(self, max_outbox: int) -> tuple[bool, dict[str, object]]:
        """``/readyz``: store open, and each sink connected or its outbox below ``max_outbox``."""
        v = self.last
        sinks = {
            sink: {
                "connected": s.connected,
                "breaker": s.breaker.value,
                "outbox": s.depth,
                "oldest_age_s": round(s.oldest_age, 3),
                "ready": s.connected or s.depth < max_outbox,
            }
            for sink, s in v.sinks.items()
        }
        ok = v.store_open and not v.stalled and all(s["ready"] for s in sinks.values())
        body: dict[str, object] = {
            "ready": ok,
            "store": {"open": v.store_open, "pending": v.store_pending},
            "sinks": sinks,
            "stalled": v.stalled,
        }
        return ok, body


async def watch(
    monitor: Monitor,
    interval: float,
    on_alive: Callable[[Verdict], None],
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Check every ``interval`` seconds until cancelled; call ``on_alive`` only when nothing
    is stalled (that is where the watchdog is pinged). A stall is logged when it starts."""
    reported: set[str] = set()
    while True:
        started = clock()
        await asyncio.sleep(interval)
        verdict = await monitor.check(loop_lag=max(0.0, clock() - started - interval))
        stalled = set(verdict.stalled)
        if stalled - reported:
            log.error(
                "no progress for a while in: %s; not pinging the watchdog",
                ", ".join(sorted(stalled)),
            )
        reported = stalled
        if verdict.alive:
            on_alive(verdict)
