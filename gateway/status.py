"""A periodic one-line status for the log: what came in, what was rejected, what waits."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping

from gateway.counters import Counters
from gateway.store.store import Store

log = logging.getLogger("gateway.status")


def status_line(counts: Mapping[tuple[str, str], int], outbox: Mapping[str, int]) -> str:
    """``fleet: 1200 readings, 3 rejected (malformed_json 2, too_large 1); outbox up: 0``."""
    per_source: dict[str, dict[str, int]] = {}
    for (component, name), n in counts.items():
        if name == "readings" or name.startswith("rejected_"):
            per_source.setdefault(component, {})[name] = n
    parts = []
    for source, names in sorted(per_source.items()):
        rejected = {k.removeprefix("rejected_"): v for k, v in names.items() if k != "readings"}
        text = f"{source}: {names.get('readings', 0)} readings"
        if rejected:
            detail = ", ".join(f"{k} {v}" for k, v in sorted(rejected.items()))
            text += f", {sum(rejected.values())} rejected ({detail})"
        parts.append(text)
    parts += [f"outbox {sink}: {depth}" for sink, depth in sorted(outbox.items())]
    drops = {
        name: n
        for (component, name), n in counts.items()
        if component == "store" and name in ("pending_dropped", "outbox_dropped", "outbox_expired")
    }
    drops |= {  # memory outboxes (``outbox: memory``), per sink
        f"{component} {name}": n
        for (component, name), n in counts.items()
        if name == "memory_dropped"
    }
    if drops:
        parts.append(
            "dropped by policy: " + ", ".join(f"{k} {v}" for k, v in sorted(drops.items()))
        )
    return "; ".join(parts) or "idle"


async def report(counters: Counters, store: Store, sinks: Iterable[str], interval: float) -> None:
    """Log the status line every ``interval`` seconds, until cancelled; ``sinks`` is read
    each time (it changes on reload)."""
    while True:
        await asyncio.sleep(interval)
        depths = {sink: await store.outbox_depth(sink) for sink in list(sinks)}
        log.info("status: %s", status_line(counters.snapshot(), depths))
