"""Missing heartbeat: a device+metric that has sent nothing for ``after`` seconds.

In event time the clock is a watermark: the newest reading ``ts`` the step has seen, moved on
by the processing time elapsed since that reading arrived (so a whole fleet falling silent is
still noticed live, and a replay on a virtual clock gives the same alerts). In processing
time the clock is the scheduler's and readings count at their arrival.

Deadlines sit in a heap with one entry per key (stale entries are re-pushed when popped), so
a reading costs O(1) and each expiry O(log keys).
"""

from __future__ import annotations

import heapq

from reactivex import Observable, abc
from reactivex.disposable import CompositeDisposable

from gateway.model import Alert, Reading, Record
from gateway.pipeline.context import Operator, StepContext, epoch_clock, epoch_seconds, every


def silence(after: float, severity: str, event_time: bool, ctx: StepContext) -> Operator:
    """Raise ``silence`` when a key is quiet for ``after``; clear on its next reading.

    Only readings count (aggregates and alerts pass through untouched).

    ``after=3``, event time, readings shown as ``key@ts`` (one per second)::

        -a@0--b@1--b@2--b@3--b@4--a@5--|
        --------------------R(a)--C(a)-|   R at ts 3 (a's last 0 + 3), C when a is back
    """
    scheduler = ctx.scheduler
    clock_now = epoch_clock(scheduler)
    pipeline, step = ctx.pipeline, ctx.step
    period = max(min(after / 4.0, 60.0), 0.05)

    def operator(source: Observable[Record]) -> Observable[Record]:
        def subscribe(
            observer: abc.ObserverBase[Record], scheduler_: abc.SchedulerBase | None = None
        ) -> abc.DisposableBase:
            last: dict[tuple[str, str], float] = {}
            last_ts: dict[tuple[str, str], float] = {}
            ctx.track_keys(last.__len__)
            silent: set[tuple[str, str]] = set()
            deadlines: list[tuple[float, tuple[str, str]]] = []
            newest = -float("inf")
            newest_arrival = epoch_seconds(scheduler)
            emit = observer.on_next

            def alert(key: tuple[str, str], state: str, ts: float, quiet: float) -> Alert:
                device, metric = key
                if state == "raised":
                    message = f"{device} {metric}: no reading for {quiet:g}s"
                else:
                    message = f"{device} {metric}: readings resumed after {quiet:g}s"
                return Alert(
                    pipeline,
                    step,
                    device,
                    metric,
                    "silence",
                    "raised" if state == "raised" else "cleared",
                    severity,
                    ts,
                    last[key],
                    after,
                    message,
                    quiet,
                    {"last_seen": last_ts[key] if state == "raised" else ts - quiet},
                )

            def expire(watermark: float) -> None:
                while deadlines and deadlines[0][0] <= watermark:
                    deadline, key = heapq.heappop(deadlines)
                    current = last_ts[key] + after
                    if current > deadline:
                        heapq.heappush(deadlines, (current, key))
                        continue
                    silent.add(key)
                    emit(alert(key, "raised", deadline, after))

            def on_next(item: Record) -> None:
                nonlocal newest, newest_arrival
                emit(item)
                if type(item) is not Reading:
                    return
                key = (item.device, item.metric)
                now = clock_now()
                ts = item.ts if event_time else now
                last[key] = item.value
                previous = last_ts.get(key)
                if previous is not None and ts <= previous:
                    return  # out of order: it says nothing about the key being alive now
                last_ts[key] = ts
                if previous is None:
                    heapq.heappush(deadlines, (ts + after, key))
                elif key in silent:
                    silent.discard(key)
                    heapq.heappush(deadlines, (ts + after, key))
                    emit(alert(key, "cleared", ts, ts - previous))
                if ts > newest:
                    newest, newest_arrival = ts, now
                expire(newest)

            def on_tick() -> None:
                now = epoch_seconds(scheduler)
                expire(newest + (now - newest_arrival) if event_time else now)

            def on_error(error: Exception) -> None:
                ticker.dispose()
                observer.on_error(error)

            def on_completed() -> None:
                ticker.dispose()
                observer.on_completed()

            ticker = every(scheduler, period, on_tick)
            subscription = source.subscribe(on_next, on_error, on_completed, scheduler=scheduler_)
            return CompositeDisposable(ticker, subscription)

        return Observable(subscribe)

    return operator
