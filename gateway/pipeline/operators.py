"""Per-reading operators: filter, map, scale, rename, dedupe, distinct, throttle, sample.

Shared semantics: only ``Reading``s are processed, other records pass through untouched; an
exception while processing one reading is counted as ``error`` on ``{pipeline}/{step}`` and the
reading is dropped (operators are total, they never turn into ``on_error``). Per-key state is
keyed by ``(device, metric)``. Marble diagrams show reading values; ``#`` is a per-item error.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from reactivex import Observable, abc
from reactivex.disposable import CompositeDisposable

from gateway.model import Reading, Record
from gateway.pipeline.context import Operator, StepContext, epoch_clock, every

Handler = Callable[[Reading], Reading | None]
"""Per-reading logic: the reading to emit, or None to drop it."""


def per_reading(handler: Handler, ctx: StepContext) -> Operator:
    """Lift ``handler`` into a total operator: other records pass, exceptions count and drop."""
    counters, component = ctx.counters, ctx.component

    def operator(source: Observable[Record]) -> Observable[Record]:
        def subscribe(
            observer: abc.ObserverBase[Record], scheduler: abc.SchedulerBase | None = None
        ) -> abc.DisposableBase:
            emit = observer.on_next

            def on_next(item: Record) -> None:
                if type(item) is Reading:
                    try:
                        out = handler(item)
                    except Exception:  # the per-item boundary: count, drop, carry on
                        counters.inc(component, "error")
                        return
                    if out is not None:
                        emit(out)
                else:
                    emit(item)

            return source.subscribe(
                on_next, observer.on_error, observer.on_completed, scheduler=scheduler
            )

        return Observable(subscribe)

    return operator


def filter_readings(predicate: Callable[[Reading], Any], ctx: StepContext) -> Operator:
    """Keep readings for which ``predicate`` is truthy (drops are normal, not counted).

    ``value > 2``::

        -1--3--#--5--|
        ----3-----5--|
    """
    counters, component = ctx.counters, ctx.component

    def operator(source: Observable[Record]) -> Observable[Record]:
        def subscribe(
            observer: abc.ObserverBase[Record], scheduler: abc.SchedulerBase | None = None
        ) -> abc.DisposableBase:
            emit = observer.on_next

            def on_next(item: Record) -> None:
                if type(item) is Reading:
                    try:
                        keep = predicate(item)
                    except Exception:  # the per-item boundary: count, drop, carry on
                        counters.inc(component, "error")
                        return
                    if keep:
                        emit(item)
                else:
                    emit(item)

            return source.subscribe(
                on_next, observer.on_error, observer.on_completed, scheduler=scheduler
            )

        return Observable(subscribe)

    return operator


def map_value(function: Callable[[Reading], Any], ctx: StepContext) -> Operator:
    """Replace each reading's value with ``float(function(reading))``.

    ``value / 1000``::

        -1000--2500--#--|
        -1.0---2.5------|
    """

    def handler(r: Reading) -> Reading:
        return Reading(r.source, r.device, r.metric, float(function(r)), r.ts, r.seq)

    return per_reading(handler, ctx)


def scale(factor: float, offset: float, metric: str | None, ctx: StepContext) -> Operator:
    """``value * factor + offset``, optionally renaming the metric.

    ``factor=1.8, offset=32``::

        -0----100--|
        -32---212--|
    """

    def handler(r: Reading) -> Reading:
        return Reading(
            r.source, r.device, metric or r.metric, r.value * factor + offset, r.ts, r.seq
        )

    return per_reading(handler, ctx)


def rename(mapping: Mapping[str, str], ctx: StepContext) -> Operator:
    """Rename metrics: a reading whose metric is a key gets the mapped name, others pass.

    ``{temp: temperature}``, shown as ``metric:value`` (``t`` = temp, ``T`` = temperature)::

        -t:1--h:2--|
        -T:1--h:2--|
    """
    names = dict(mapping)

    def handler(r: Reading) -> Reading:
        new = names.get(r.metric)
        if new is None:
            return r
        return Reading(r.source, r.device, new, r.value, r.ts, r.seq)

    return per_reading(handler, ctx)


def dedupe(size: int, ctx: StepContext) -> Operator:
    """Drop a reading whose ``(source, device, metric, seq)`` was among the last ``size`` keys.

    Readings without ``seq`` are keyed by ``ts`` instead. Drops count as ``duplicate``.
    The memory is an LRU of at most ``size`` keys. Items shown as ``seq``::

        -1--2--1--3--2--|
        -1--2-----3-----|
    """
    seen: OrderedDict[tuple[str, str, str, int | None, float | None], None] = OrderedDict()
    counters, component = ctx.counters, ctx.component

    def handler(r: Reading) -> Reading | None:
        key = (r.source, r.device, r.metric, r.seq, None if r.seq is not None else r.ts)
        if key in seen:
            seen.move_to_end(key)
            counters.inc(component, "duplicate")
            return None
        seen[key] = None
        if len(seen) > size:
            seen.popitem(last=False)
        return r

    return per_reading(handler, ctx)


def distinct_until_changed(epsilon: float, ctx: StepContext) -> Operator:
    """Per key, drop a reading within ``epsilon`` of the last value emitted for that key.

    ``epsilon=0.5``::

        -1--1.2--2--2.4--1--|
        -1-------2-------1--|
    """
    last: dict[tuple[str, str], float] = {}
    ctx.track_keys(last.__len__)

    def handler(r: Reading) -> Reading | None:
        key = (r.device, r.metric)
        previous = last.get(key)
        if previous is not None and abs(r.value - previous) <= epsilon:
            return None
        last[key] = r.value
        return r

    return per_reading(handler, ctx)


def throttle(duration: float, ctx: StepContext) -> Operator:
    """Per key, emit the first reading, then drop that key's readings for ``duration`` seconds.

    Time is processing time (``ctx.scheduler``). ``duration=3``, one character per second::

        -abcde-|
        -a--d--|
    """
    until: dict[tuple[str, str], float] = {}
    ctx.track_keys(until.__len__)
    clock_now = epoch_clock(ctx.scheduler)

    def handler(r: Reading) -> Reading | None:
        key = (r.device, r.metric)
        now = clock_now()
        if now < until.get(key, -1.0):
            return None
        until[key] = now + duration
        return r

    return per_reading(handler, ctx)


def sample(interval: float, ctx: StepContext) -> Operator:
    """Per key, emit the latest reading of each ``interval`` on a periodic tick.

    Keys with no reading in an interval emit nothing; pending readings are flushed on
    completion. ``interval=4``, one character per second (ticks at 4, 8, 12)::

        -a-b-c-----d-|
        ----b---c---d|
    """
    scheduler = ctx.scheduler

    def operator(source: Observable[Record]) -> Observable[Record]:
        def subscribe(
            observer: abc.ObserverBase[Record], scheduler_: abc.SchedulerBase | None = None
        ) -> abc.DisposableBase:
            latest: dict[tuple[str, str], Reading] = {}

            def flush() -> None:
                pending = list(latest.values())
                latest.clear()
                for reading in pending:
                    observer.on_next(reading)

            def on_next(item: Record) -> None:
                if type(item) is Reading:
                    latest[(item.device, item.metric)] = item
                else:
                    observer.on_next(item)

            def on_error(error: Exception) -> None:
                ticker.dispose()
                observer.on_error(error)

            def on_completed() -> None:
                ticker.dispose()
                flush()
                observer.on_completed()

            ticker = every(scheduler, interval, flush)
            subscription = source.subscribe(on_next, on_error, on_completed, scheduler=scheduler_)
            return CompositeDisposable(ticker, subscription)

        return Observable(subscribe)

    return operator
