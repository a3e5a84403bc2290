"""Actions: when an alert passes, publish a templated message to a configured topic.

The headline use: a maintenance request or a spare-part order when a detector raises.
Templates use ``{name}`` fields of the alert (``device metric kind step severity state value
score threshold ts message pipeline``); they are checked at load, and values are inserted as
text (no attribute access, no code).
"""

from __future__ import annotations

import string
from collections.abc import Collection, Mapping

from reactivex import Observable, abc

from gateway.model import Alert, Message, Record
from gateway.pipeline.context import Operator, StepContext

FIELDS = frozenset(
    {
        "device",
        "metric",
        "kind",
        "step",
        "severity",
        "state",
        "value",
        "score",
        "threshold",
        "ts",
        "message",
        "pipeline",
    }
)


def check_template(template: str) -> str:
    """Raise ValueError unless ``template`` only uses plain ``{field}`` names from FIELDS."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"bad template {template!r}: {exc}") from exc
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if name not in FIELDS or spec or conversion:
            raise ValueError(
                f"template {template!r}: use plain fields from {sorted(FIELDS)}, got {{{name}}}"
            )
    return template


def _fields(alert: Alert) -> dict[str, str]:
    return {
        "device": alert.device,
        "metric": alert.metric,
        "kind": alert.kind,
        "step": alert.step,
        "severity": alert.severity,
        "state": alert.state,
        "value": f"{alert.value:g}",
        "score": f"{alert.score:.3g}",
        "threshold": f"{alert.threshold:g}",
        "ts": f"{alert.ts:.3f}",
        "message": alert.message,
        "pipeline": alert.pipeline,
    }


def action(
    topic: str,
    body: Mapping[str, str],
    kinds: Collection[str] | None,
    severities: Collection[str] | None,
    states: Collection[str],
    ctx: StepContext,
) -> Operator:
    """After each matching alert, a ``Message`` (kind ``action``) with ``body`` filled in.

    Matching: alert kind in ``kinds`` (None: any), severity in ``severities`` (None: any),
    state in ``states``. Everything passes through. ``A`` = raised alert, ``M`` = message::

        -r--A--r--|
        -r--AM-r--|
    """
    counters, component = ctx.counters, ctx.component
    pipeline, step = ctx.pipeline, ctx.step
    templates = dict(body)

    def message(alert: Alert) -> Message:
        fields = _fields(alert)
        rendered: dict[str, object] = {k: t.format_map(fields) for k, t in templates.items()}
        rendered["trigger"] = {
            "step": alert.step,
            "kind": alert.kind,
            "severity": alert.severity,
            "state": alert.state,
            "ts": alert.ts,
            "value": alert.value,
        }
        return Message(
            pipeline, step, alert.device, alert.metric, "action", topic, alert.ts, rendered
        )

    def operator(source: Observable[Record]) -> Observable[Record]:
        def subscribe(
            observer: abc.ObserverBase[Record], scheduler: abc.SchedulerBase | None = None
        ) -> abc.DisposableBase:
            emit = observer.on_next

            def on_next(item: Record) -> None:
                emit(item)
                if type(item) is not Alert:
                    return
                if item.state not in states:
                    return
                if kinds is not None and item.kind not in kinds:
                    return
                if severities is not None and item.severity not in severities:
                    return
                try:
                    out = message(item)
                except Exception:  # the per-item boundary: count, carry on
                    counters.inc(component, "error")
                    return
                counters.inc(component, "sent")
                emit(out)

            return source.subscribe(
                on_next, observer.on_error, observer.on_completed, scheduler=scheduler
            )

        return Observable(subscribe)

    return operator
