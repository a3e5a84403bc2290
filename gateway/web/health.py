"""Gateway health for the page: per-source counts and rates, per-sink outbox and breaker.

The sources and sinks are asked for at each snapshot, so a reload that adds, removes or
replaces one shows on the page at once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from gateway.counters import Counters

RATE_WINDOW = 1.0
"""Rates are per second over at least this many seconds, however often snapshots are taken."""


class Health:
    """Builds the health snapshot; rates are counted between two successive snapshots."""

    def __init__(
        self,
        gateway: str,
        counters: Counters,
        sources: Callable[[], Sequence[str]],
        breakers: Callable[[], Mapping[str, str]],
        clock: Callable[[], float],
        memory: Callable[[], Mapping[str, int]] = dict,
    ) -> None:
        """``sources`` gives the running source ids, ``breakers`` each running sink's breaker
        state, ``memory`` the rows in each memory outbox; all are called at every snapshot."""
        self._gateway = gateway
        self._counters = counters
        self._sources = sources
        self._breakers = breakers
        self._memory = memory
        self._clock = clock
        self._started = clock()
        self._base: tuple[float, dict[tuple[str, str], int]] = (self._started, {})
        self._rates: dict[tuple[str, str], float] = {}
        self._seen: dict[str, tuple[int, float]] = {}  # source -> (readings, when it last grew)

    def snapshot(self, outbox: Mapping[str, int]) -> dict[str, Any]:
        """What the page's health panel shows; ``outbox`` is the depth per sink."""
        now = self._clock()
        counts = self._counters.snapshot()
        memory = self._memory()
        then, before = self._base
        fresh = now - then >= RATE_WINDOW
        if fresh:
            self._base = (now, counts)

        def rate(component: str, name: str) -> float:
            key = (component, name)
            if fresh:
                delta = counts.get(key, 0) - before.get(key, 0)
                self._rates[key] = round(delta / (now - then), 2)
            return self._rates.get(key, 0.0)

        sources = []
        for source in self._sources():
            readings = counts.get((source, "readings"), 0)
            last_count, last_grew = self._seen.get(source, (0, None))
            if readings > last_count:
                last_count, last_grew = readings, now
                self._seen[source] = (last_count, last_grew)
            rejected = {
                name.removeprefix("rejected_"): n
                for (comp, name), n in counts.items()
                if comp == source and name.startswith("rejected_")
            }
            sources.append(
                {
                    "id": source,
                    "readings": readings,
                    "rate": rate(source, "readings"),
                    "idle": None if last_grew is None else round(now - last_grew, 1),
                    "rejected": sum(rejected.values()),
                    "rejected_by_reason": rejected,
                }
            )
        sinks = [
            {
                "id": sink,
                "breaker": state,
                "outbox": outbox.get(sink, 0) + memory.get(sink, 0),
                "acked": counts.get((sink, "acked"), 0),
                "rate": rate(sink, "acked"),
                "failures": counts.get((sink, "failures"), 0),
            }
            for sink, state in self._breakers().items()
        ]
        return {
            "gateway": self._gateway,
            "ts": now,
            "uptime": round(now - self._started, 1),
            "sources": sources,
            "sinks": sinks,
        }
