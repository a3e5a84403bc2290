"""The records that flow through the gateway.

One time convention everywhere: ``ts`` is UTC epoch seconds as a float.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, NamedTuple

AlertState = Literal["raised", "cleared"]


class Reading(NamedTuple):
    """One decoded sensor value.

    A ``NamedTuple`` rather than a frozen dataclass: it is built once or more per reading on
    the hot path, and a frozen dataclass's ``__init__`` (one ``object.__setattr__`` per
    field) costs about three times as much. It is just as immutable; unlike a dataclass it
    is also a tuple (iterable, equal to a tuple with the same fields), which no code relies on.
    """

    source: str
    device: str
    metric: str
    value: float
    ts: float
    seq: int | None = None


@dataclass(frozen=True, slots=True)
class Aggregate:
    """Statistics of one device+metric over one window ``[start, end)``."""

    pipeline: str
    step: str
    device: str
    metric: str
    start: float
    end: float
    count: int
    stats: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Alert:
    """A raise or clear transition of one detector for one device+metric."""

    pipeline: str
    step: str
    device: str
    metric: str
    kind: str
    state: AlertState
    severity: str
    ts: float
    value: float
    threshold: float
    message: str


Record = Reading | Aggregate | Alert
"""Anything a pipeline may emit."""
