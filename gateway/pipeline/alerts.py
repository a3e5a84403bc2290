"""Threshold detection: a tap that raises and clears ``Alert``s on transitions, per key."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.model import Aggregate, Alert, AlertState, Reading
from gateway.pipeline.context import Operator, StepContext, tap


@dataclass(slots=True)
class _KeyState:
    """Detector state of one (device, metric)."""

    beyond_since: float | None = None
    """Event time since which the value has been beyond a limit (while not raised)."""
    raised_limit: float | None = None
    """The limit that raised the alert; None while clear."""


def threshold(
    above: float | None,
    below: float | None,
    hysteresis: float,
    for_s: float,
    severity: str,
    stat: str,
    ctx: StepContext,
) -> Operator:
    """Raise when a value stays beyond a limit for ``for_s`` of event time; clear with hysteresis.

    Beyond means ``value > above`` or ``value < below``. Clear when back inside by more than
    ``hysteresis``: ``value <= above - hysteresis`` (and ``value >= below + hysteresis``).
    Readings use ``value`` at ``ts``; aggregates use ``stats[stat]`` at ``end``. Every input
    passes through unchanged; an alert follows the item that caused it, on transitions only.
    If evaluating one item fails it is counted as ``error`` and still passes through.

    ``above=80, hysteresis=2, for_s=0``::

        -70--81--85--79--77--|
        -70--81R-85--79--77C-|     R = raised after 81, C = cleared after 77
    """
    states: dict[tuple[str, str], _KeyState] = {}
    ctx.track_keys(states.__len__)
    pipeline, step = ctx.pipeline, ctx.step
    high = above if above is not None else float("inf")
    low = below if below is not None else float("-inf")
    clear_high = high - hysteresis
    clear_low = low + hysteresis

    def alert(
        item: Reading | Aggregate, state: AlertState, ts: float, value: float, limit: float
    ) -> Alert:
        side = "above" if limit == above else "below"
        if state == "raised":
            message = f"{item.device} {item.metric} = {value:g}, {side} {limit:g}"
            if for_s:
                message += f" for {for_s:g}s"
        else:
            message = f"{item.device} {item.metric} = {value:g}, back within {limit:g}"
        return Alert(
            pipeline,
            step,
            item.device,
            item.metric,
            "threshold",
            state,
            severity,
            ts,
            value,
            limit,
            message,
        )

    def evaluate(item: Reading | Aggregate) -> Alert | None:
        if isinstance(item, Reading):
            value, ts = item.value, item.ts
        else:
            value, ts = item.stats[stat], item.end
        key = (item.device, item.metric)
        state = states.get(key)
        if state is None:
            state = states[key] = _KeyState()
        if state.raised_limit is not None:
            if clear_low <= value <= clear_high:
                limit, state.raised_limit, state.beyond_since = state.raised_limit, None, None
                return alert(item, "cleared", ts, value, limit)
            return None
        if value > high or value < low:
            if state.beyond_since is None:
                state.beyond_since = ts
            if ts - state.beyond_since >= for_s:
                state.raised_limit = high if value > high else low
                return alert(item, "raised", ts, value, state.raised_limit)
        else:
            state.beyond_since = None
        return None

    return tap(evaluate, ctx)
