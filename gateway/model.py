"""The records that flow through the gateway.

One time convention everywhere: ``ts`` is UTC epoch seconds as a float.
"""

from __future__ import annotations

import math
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


class Aggregate(NamedTuple):
    """Statistics of one device+metric over one window ``[start, end)``.

    A ``NamedTuple``, as ``Reading``: 1,000 devices' windows closing together build 1,000 of
    them in one burst, whose length is how late the last aggregate leaves."""

    pipeline: str
    step: str
    device: str
    metric: str
    start: float
    end: float
    count: int  # type: ignore[assignment]  # shadows tuple.count, which no code calls
    stats: dict[str, float] = {}  # never mutated: each window passes a dict of its own


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
    score: float = math.nan
    """The detector's measure of how anomalous the value is (compare with ``threshold``)."""
    evidence: dict[str, float] = field(default_factory=dict)
    """What the verdict rests on, e.g. the window ``mean`` and ``std``."""


@dataclass(frozen=True, slots=True)
class Message:
    """A message a step asks to publish on a topic of its own: an action, a late reading.

    ``topic`` is a template (same placeholders as the sinks' topics), or None for a message
    that is only kept locally; ``body`` holds the payload fields besides the envelope (``id``,
    ``v``, ``kind``, ``gateway``, ``pipeline``, ...). ``late`` messages are also stored as
    dead letters (reason ``late``).
    """

    pipeline: str
    step: str
    device: str
    metric: str
    kind: str
    topic: str | None
    ts: float
    body: dict[str, object] = field(default_factory=dict)


Record = Reading | Aggregate | Alert | Message
"""Anything a pipeline may emit."""
