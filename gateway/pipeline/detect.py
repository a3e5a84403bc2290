"""Detector steps: a scorer per (device, metric) plus the alert lifecycle, as an Rx operator.

Lifecycle, per key, in event time (the readings' own ``ts``):

* **raise** when the scorer has found every reading anomalous for at least ``for_s``
  seconds (``0``: at the first anomalous reading);
* **clear** after ``clear_after`` consecutive normal readings while raised;
* **cooldown**: no new raise until ``cooldown`` seconds after the previous raise, so a
  failing sensor produces one alert, not thousands (the anomalous readings in between are
  counted as ``suppressed``).

The alert carries the detector id (the step id), its kind, severity, the event time and value
of the triggering reading, the score against its limit and the evidence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from math import isfinite

from gateway.counters import Counters
from gateway.model import Aggregate, Alert, Reading
from gateway.pipeline.context import Operator, StepContext, tap
from gateway.pipeline.scorers import Finding, Scorer, ScorerFactory


@dataclass(frozen=True, slots=True)
class Lifecycle:
    """When a run of anomalous readings raises, and when it clears."""

    for_s: float = 0.0
    clear_after: int = 1
    cooldown: float = 0.0


@dataclass(slots=True)
class _KeyState:
    scorer: Scorer
    raised: Finding | None = None
    anomalous_since: float | None = None
    normal_run: int = 0
    next_raise: float = -math.inf


class Detector:
    """Scorers and lifecycle for every (device, metric) one step sees: ``feed`` one item.

    Usable without Rx (the evaluation scripts drive it directly).
    """

    def __init__(
        self,
        kind: str,
        factory: ScorerFactory,
        severity: str,
        lifecycle: Lifecycle,
        pipeline: str,
        step: str,
        stat: str = "mean",
        counters: Counters | None = None,
        max_keys: int | None = None,
    ) -> None:
        self.kind, self.factory, self.severity = kind, factory, severity
        self.lifecycle, self.pipeline, self.step, self.stat = lifecycle, pipeline, step, stat
        self.counters = counters if counters is not None else Counters()
        self.component = f"{pipeline}/{step}"
        self.keys: dict[tuple[str, str], _KeyState] = {}
        """Per key; with ``max_keys``, in the order last seen (the least recent first)."""
        self.max_keys = max_keys

    def feed(self, item: Reading | Aggregate) -> Alert | None:
        """Score one reading (or an aggregate's ``stat`` at its end); a transition or None.

        Non-finite values are counted as ``non_finite`` and skipped: they carry no evidence.
        """
        if type(item) is Reading:
            value, ts = item.value, item.ts
        else:
            assert isinstance(item, Aggregate)
            value, ts = item.stats[self.stat], item.end
        if not isfinite(value):
            self.counters.inc(self.component, "non_finite")
            return None
        key = (item.device, item.metric)
        keys = self.keys
        state = keys.get(key)
        if state is None:
            if self.max_keys is not None and len(keys) >= self.max_keys:
                del keys[next(iter(keys))]  # the least recently seen key starts over
                self.counters.inc(self.component, "evicted")
            state = keys[key] = _KeyState(self.factory())
        elif self.max_keys is not None:
            del keys[key]  # to the end: the most recently seen
            keys[key] = state
        finding = state.scorer.observe(ts, value)
        life = self.lifecycle
        if finding is None:
            state.anomalous_since = None
            if state.raised is not None:
                state.normal_run += 1
                if state.normal_run >= life.clear_after:
                    raised, state.raised = state.raised, None
                    return self._alert(item, "cleared", ts, value, raised, "back to normal")
            return None
        state.normal_run = 0
        if state.raised is not None:
            return None
        event_ts = finding.ts if finding.ts is not None else ts
        if state.anomalous_since is None:
            state.anomalous_since = event_ts
        if ts - state.anomalous_since < life.for_s:
            return None
        if event_ts < state.next_raise:
            self.counters.inc(self.component, "suppressed")
            return None
        state.raised = finding
        state.next_raise = event_ts + life.cooldown
        event_value = finding.value if finding.value is not None else value
        return self._alert(item, "raised", event_ts, event_value, finding, finding.reason)

    def _alert(
        self,
        item: Reading | Aggregate,
        state: str,
        ts: float,
        value: float,
        finding: Finding,
        reason: str,
    ) -> Alert:
        return Alert(
            self.pipeline,
            self.step,
            item.device,
            item.metric,
            self.kind,
            "raised" if state == "raised" else "cleared",
            self.severity,
            ts,
            value,
            finding.limit,
            f"{item.device} {item.metric} = {value:g}: {reason}",
            finding.score,
            finding.evidence,
        )


def detect(detector: Detector, ctx: StepContext) -> Operator:
    """Run ``detector`` on every reading (and aggregate); alerts follow their trigger.

    Every input passes through unchanged. An item whose scoring fails is counted as
    ``error`` and still passes. E.g. a ``range`` of ``[0, 100]``, clear after 1::

        -50--120--130--60--|
        -50--120R-130--60C-|     R = raised after 120, C = cleared after 60
    """
    return tap(detector.feed, ctx)
