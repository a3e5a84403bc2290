"""In-process event counters keyed by (component id, name), e.g. ("fleet", "malformed_json").

Incrementing is a dict update on the hot path: no locks (everything counting runs on the
event loop thread or, for the store, reports through it), no allocation beyond the key tuple.
"""

from __future__ import annotations

from collections import defaultdict


class Counters:
    """A flat table of monotonically increasing counts."""

    __slots__ = ("_counts",)

    def __init__(self) -> None:
        self._counts: defaultdict[tuple[str, str], int] = defaultdict(int)

    def inc(self, component: str, name: str, n: int = 1) -> None:
        self._counts[(component, name)] += n

    def get(self, component: str, name: str) -> int:
        return self._counts.get((component, name), 0)

    def snapshot(self) -> dict[tuple[str, str], int]:
        return dict(self._counts)

    def for_component(self, component: str) -> dict[str, int]:
        return {name: n for (comp, name), n in self._counts.items() if comp == component}
