"""Event-time windows: readings in, one ``Aggregate`` per (device, metric, window) out.

Windows are ``[start, start + size)`` with ``start`` a multiple of ``slide`` (epoch aligned);
``slide == size`` gives tumbling windows, ``slide < size`` sliding ones, and a reading joins
every window that contains its ``ts``.

``window`` (processing time): a window closes when processing time reaches ``end +
lateness``: a periodic tick on the step's scheduler (at most a second apart, with a period
that divides ``slide``) emits and forgets closed windows, and is also the clock readings are
judged by (a reading whose windows have all closed is ``late``). So a window is open exactly
until the tick that closes it, whatever the order of readings and ticks. Ticks are aligned to
the closing times (epoch multiples of the period, shifted by ``(size + lateness) mod
period``), so a window closes on time rather than up to a period late, and the phase does
not drift over a long run.

``event_window`` (event time, the default): each device+metric closes its windows by its own
watermark, and by a deadline timer between its readings; see there.
"""

from __future__ import annotations

import heapq
import math
import random
import re
from collections import deque
from collections.abc import Callable, Sequence
from time import perf_counter
from typing import Any

from reactivex import Observable, abc
from reactivex.disposable import (
    CompositeDisposable,
    MultipleAssignmentDisposable,
    SerialDisposable,
)

from gateway.model import Aggregate, Message, Reading, Record
from gateway.pipeline.context import Operator, StepContext, epoch_seconds, timer_clock

BASIC_STATS = ("count", "sum", "mean", "min", "max", "first", "last", "stddev")
PERCENTILE = re.compile(r"^p(100|\d{1,2}(?:\.\d+)?)$")
DEFAULT_STATS = ("count", "mean", "min", "max")
MAX_FUTURE_S = 300.0
"""Readings more than this ahead of processing time are dropped as ``future_ts``."""
MAX_SAMPLES = 10_000
"""Values kept per window for percentiles; beyond that a uniform reservoir sample."""


def is_stat_name(name: str) -> bool:
    """Whether ``name`` is a known aggregate: one of BASIC_STATS or ``pNN`` (``p50``, ``p99.9``)."""
    return name in BASIC_STATS or PERCENTILE.match(name) is not None


def percentile(ordered: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of sorted values, linear interpolation between ranks."""
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    fraction = rank - low
    return ordered[low] + (ordered[high] - ordered[low]) * fraction


class Accumulator:
    """Running statistics of one window: O(1) memory unless percentiles keep samples."""

    __slots__ = (
        "count",
        "first",
        "last",
        "m2",
        "maximum",
        "mean",
        "minimum",
        "samples",
        "spread",
        "total",
    )

    def __init__(self, keep_samples: bool, spread: bool = True) -> None:
        self.count = 0
        self.total = 0.0
        self.spread = spread  # track Welford's running mean and m2 (for stddev only)
        self.mean = 0.0
        self.m2 = 0.0
        self.minimum = math.inf
        self.maximum = -math.inf
        self.first = math.nan
        self.last = math.nan
        self.samples: list[float] | None = [] if keep_samples else None

    def add(self, value: float, rng: random.Random) -> None:
        count = self.count = self.count + 1
        self.total += value
        if self.spread:
            delta = value - self.mean
            self.mean += delta / count
            self.m2 += delta * (value - self.mean)
        if value < self.minimum:
            self.minimum = value
        if value > self.maximum:
            self.maximum = value
        if count == 1:
            self.first = value
        self.last = value
        samples = self.samples
        if samples is not None:
            if len(samples) < MAX_SAMPLES:
                samples.append(value)
            else:
                slot = rng.randrange(count)
                if slot < MAX_SAMPLES:
                    samples[slot] = value

    def stats(self, names: Sequence[str]) -> dict[str, float]:
        """The requested statistics (the window is never empty)."""
        ordered = sorted(self.samples) if self.samples is not None else []
        out: dict[str, float] = {}
        for name in names:
            if name == "count":
                out[name] = float(self.count)
            elif name == "sum":
                out[name] = self.total
            elif name == "mean":
                out[name] = self.total / self.count
            elif name == "min":
                out[name] = self.minimum
            elif name == "max":
                out[name] = self.maximum
            elif name == "first":
                out[name] = self.first
            elif name == "last":
                out[name] = self.last
            elif name == "stddev":
                out[name] = math.sqrt(self.m2 / (self.count - 1)) if self.count > 1 else 0.0
            else:
                out[name] = percentile(ordered, float(name[1:]))
        return out


TICK_SLACK_S = 1e-6
"""A tick closes the windows due within this after it: float rounding of the tick time
(``k * period + offset``) must not leave a window open until the next tick."""


def tick_period(slide: float) -> float:
    """The longest period of at most a second that divides ``slide``: ticks every period,
    shifted to the closing times, fall on every window's close (``1.5 s`` -> ``0.75 s``)."""
    return slide / math.ceil(slide) if slide > 1.0 else slide


def aligned_ticks(
    scheduler: abc.SchedulerBase, period: float, offset: float, action: Callable[[float], None]
) -> abc.DisposableBase:
    """Run ``action(tick)`` at every epoch time ``tick = k * period + offset`` until disposed.

    Each tick schedules the next from the current time, so lateness of one timer never
    accumulates into a drift. Works on any scheduler, virtual time included.
    """
    disposable = MultipleAssignmentDisposable()

    def schedule_next(after: float) -> None:
        now = epoch_seconds(scheduler)
        target = (math.floor((max(now, after) - offset) / period) + 1) * period + offset
        disposable.disposable = scheduler.schedule_relative(max(target - now, 0.0), tick, target)

    def tick(_scheduler: abc.SchedulerBase, target: float | None) -> None:
        if disposable.is_disposed:
            return
        when = target if target is not None else epoch_seconds(scheduler)
        schedule_next(when)  # before: see every()
        action(when)

    schedule_next(-math.inf)
    return disposable


WindowKey = tuple[str, str, float]
"""(device, metric, start)"""


def window(
    size: float,
    slide: float | None,
    aggregates: Sequence[str],
    lateness: float,
    ctx: StepContext,
) -> Operator:
    """Aggregate readings per (device, metric) over event-time windows.

    ``size=10, lateness=2`` (tumbling), readings shown as ``ts:value``::

        processing time:  1    3    9    11         13         |
        input:           -0:1-3:2--9:3--11:4--------8:5--------|
        output:          -----------------------A--------------B|

        A = Aggregate of [0, 10): count 3, mean 2, emitted by the tick at 12 (10 + lateness);
        8:5 arrives after that window closed: counted as ``late``, dropped;
        B = [10, 20): count 1, flushed when the source completes.
    """
    slide_s = size if slide is None else slide
    names = tuple(aggregates)
    keep_samples = any(PERCENTILE.match(name) for name in names)
    spread = "stddev" in names
    close_after = size + lateness
    tumbling = slide_s == size
    period = tick_period(slide_s)
    scheduler, counters, component = ctx.scheduler, ctx.counters, ctx.component
    pipeline, step = ctx.pipeline, ctx.step

    def operator(source: Observable[Record]) -> Observable[Record]:
        def subscribe(
            observer: abc.ObserverBase[Record], scheduler_: abc.SchedulerBase | None = None
        ) -> abc.DisposableBase:
            open_windows: dict[WindowKey, Accumulator] = {}
            ctx.track_keys(open_windows.__len__)  # open windows: size / slide a key
            deadlines: list[tuple[float, WindowKey]] = []
            rng = random.Random(0)
            now = epoch_seconds(scheduler)
            emit = observer.on_next

            def open_window(key: WindowKey) -> Accumulator:
                acc = open_windows[key] = Accumulator(keep_samples, spread)
                heapq.heappush(deadlines, (key[2] + close_after, key))
                return acc

            def on_next(item: Record) -> None:
                if type(item) is not Reading:
                    emit(item)
                    return
                try:
                    ts = item.ts
                    if ts > now + MAX_FUTURE_S:
                        counters.inc(component, "future_ts")
                        return
                    value = float(item.value)
                    if tumbling:
                        start = math.floor(ts / size) * size
                        if start + close_after <= now:
                            counters.inc(component, "late")
                            return
                        key = (item.device, item.metric, start)
                        acc = open_windows.get(key) or open_window(key)
                        acc.add(value, rng)
                        return
                    added = False
                    first = math.floor((ts - size) / slide_s) + 1
                    for k in range(math.floor(ts / slide_s), first - 1, -1):
                        start = k * slide_s
                        if start + close_after > now:
                            key = (item.device, item.metric, start)
                            acc = open_windows.get(key) or open_window(key)
                            acc.add(value, rng)
                            added = True
                    if not added:
                        counters.inc(component, "late")
                except Exception:  # the per-item boundary: count, drop, carry on
                    counters.inc(component, "error")

            def close(until: float) -> None:
                while deadlines and deadlines[0][0] <= until:
                    _, key = heapq.heappop(deadlines)
                    acc = open_windows.pop(key)
                    device, metric, start = key
                    try:
                        stats = acc.stats(names)
                    except Exception:  # a window that cannot be summarised is dropped
                        counters.inc(component, "error")
                        continue
                    emit(
                        Aggregate(
                            pipeline, step, device, metric, start, start + size, acc.count, stats
                        )
                    )

            def on_tick(tick: float) -> None:
                nonlocal now
                # the tick's own time, should the clock read a hair earlier than its timer
                now = max(epoch_seconds(scheduler), tick + TICK_SLACK_S)
                close(now)

            def on_error(error: Exception) -> None:
                ticker.dispose()
                observer.on_error(error)

            def on_completed() -> None:
                ticker.dispose()
                close(math.inf)
                observer.on_completed()

            ticker = aligned_ticks(scheduler, period, close_after % period, on_tick)
            subscription = source.subscribe(on_next, on_error, on_completed, scheduler=scheduler_)
            return CompositeDisposable(ticker, subscription)

        return Observable(subscribe)

    return operator


NOTHING_FLUSHED: tuple[float, ...] = ()
EMIT_BUDGET_S = 0.005
"""Processing time the deadline timer spends emitting closed windows in one turn of the
scheduler. Many keys close at once (every device's window shares its end): in turns of a few
ms, readings go on being taken and the first aggregates are sent while later ones are still
being made, and no turn holds the loop longer than this (plus one ``EMIT_CHUNK``)."""
EMIT_CHUNK = 50
"""Windows emitted between two looks at the clock (a few hundred µs of work)."""
DUE_GRID_S = 0.001
"""Closing deadlines are rounded up to this grid, and a key's deadline is moved earlier only
when it moves by more than one step of it: a window closes at most 2 ms after its deadline,
network jitter in each reading's arrival does not move a key per reading, and the keys whose
deadlines fall in one millisecond share one entry of the timer's heap (with 10,000 devices,
about five keys an entry instead of one)."""
DUE_STEPS = 1 / DUE_GRID_S


def on_grid(due: float) -> float:
    """``due`` rounded up to ``DUE_GRID_S``; within a microsecond past a step, down to it: the
    float noise of a deadline on the grid (as in a replay, whose clock is event time in epoch
    seconds) does not cost it a millisecond."""
    return math.ceil(due * DUE_STEPS - 1e-3) / DUE_STEPS


class _KeyClock:
    """Event-time progress of one (device, metric): its watermark and open windows."""

    __slots__ = ("arrival", "due", "flushed", "flushed_until", "newest", "starts", "windows")

    def __init__(self) -> None:
        self.newest = -math.inf
        """Newest event time seen: the watermark is this minus the lateness."""
        self.arrival = 0.0
        """Processing time at which ``newest`` was seen (by ``timer_clock``: monotonic live)."""
        self.starts: list[float] = []
        """Heap of the starts of this key's open windows."""
        self.windows: dict[float, Accumulator] = {}
        """This key's open windows by start."""
        self.flushed: tuple[float, ...] = NOTHING_FLUSHED
        """Starts of windows emitted early because the key fell idle (not yet watermarked):
        a tuple, as there are one or two (a frozenset of one takes 216 bytes, this 48)."""
        self.flushed_until = math.inf
        """Once ``newest`` reaches this, the watermark covers every flushed window."""
        self.due = math.inf
        """The deadline this key is entered at (``inf``: none)."""


def event_window(
    size: float,
    slide: float | None,
    aggregates: Sequence[str],
    lateness: float,
    late_topic: str | None,
    ctx: StepContext,
) -> Operator:
    """Aggregate readings per (device, metric) over event-time windows closed by a watermark.

    Each key has its own watermark: the newest ``ts`` it has sent, minus ``lateness``. A
    window ``[start, end)`` is emitted when its key's watermark passes ``end``, so the result
    depends only on each device's own readings, not on how devices interleave: a recording
    replayed at full speed gives the same aggregates as the same readings arriving live.

    Between two readings a key's event time is taken to run on with processing time: a window
    is also emitted at the processing time its key's watermark would pass ``end`` if the key
    went on sending in real time (``arrival + end + lateness - newest``, ``arrival`` being when
    the newest reading came). So a live device's window leaves as its ``end + lateness`` comes,
    not when its next reading happens to arrive, and an idle key's last window still comes
    out. One timer on the step's scheduler serves all keys: it is armed for the earliest such
    deadline (a heap of deadlines, each with the keys due then), and costs nothing per reading
    beyond comparing the key's deadline. Deadlines are kept on the clock the timers run by
    (monotonic, live), so setting the wall clock moves none of them.

    The watermark itself does not move with the clock, so a device that comes back with a
    backlog of older readings (store-and-forward) has them counted in their own windows,
    except in the windows already emitted. A reading older than its key's watermark allows,
    or for a window already emitted, is **late**: counted as ``late`` and sent on as a
    ``late`` message (the side output: the router keeps it as a dead letter and, with
    ``late_topic``, publishes it there).

    ``size=10, lateness=2``, readings shown as ``ts:value``::

        -0:1--3:2--9:3--11:4--12:5--8:6--25:7--|
        ------------------------A---L----B----C|

        A = [0, 10) count 3 (emitted when 12 arrives: watermark 10); L = 8:6 is late;
        B = [10, 20) emitted when 25 arrives; C = [20, 30) flushed at completion.

    A device stamping ``ts`` with the gateway's clock, then falling silent::

        processing time:  0    3    9    11   12                   22
        input:           -0:1-3:2--9:3--11:4-----------------------------
        output:          ---------------------A--------------------B-----

        A = [0, 10) at 12, B = [10, 20) at 22: each as its end + lateness comes round,
        with no further reading.
    """
    slide_s = size if slide is None else slide
    names = tuple(aggregates)
    keep_samples = any(PERCENTILE.match(name) for name in names)
    spread = "stddev" in names
    close_after = size + lateness
    tumbling = slide_s == size
    plain = not keep_samples and not spread
    """Windows keep no samples and no running spread: ``Accumulator.add`` is inlined."""
    scheduler, counters, component = ctx.scheduler, ctx.counters, ctx.component
    pipeline, step = ctx.pipeline, ctx.step
    clock_now = timer_clock(scheduler)
    floor, isfinite, heappush, heappop = math.floor, math.isfinite, heapq.heappush, heapq.heappop
    inf, tolerance = math.inf, DUE_GRID_S

    def operator(source: Observable[Record]) -> Observable[Record]:
        def subscribe(
            observer: abc.ObserverBase[Record], scheduler_: abc.SchedulerBase | None = None
        ) -> abc.DisposableBase:
            clocks: dict[tuple[str, str], _KeyClock] = {}
            ctx.track_keys(clocks.__len__)
            dues: list[float] = []
            """Heap of the distinct deadlines: processing times some key's oldest window
            closes by (all keys whose windows end together share one, in a replay)."""
            waiting: dict[float, list[tuple[str, str]]] = {}
            """The keys of each deadline, in the order they were entered."""
            armed = inf
            """Processing time the timer is set for (``inf``: not set; ``-inf``: to run at
            once, to enter the moved keys)."""
            moved: dict[tuple[str, str], _KeyClock] = {}
            """Keys whose deadline moved earlier than the one they are entered at, entered
            anew when the timer next runs: a key catching up on a backlog (its event time
            running ahead of the clock) moves its deadline with every reading, and this
            costs it one dict lookup, not a heap entry and a new timer each time."""
            timer = SerialDisposable()
            backlog: deque[tuple[str, str, float, Accumulator]] = deque()
            """Windows closed by the timer, not emitted yet (released ``EMIT_BUDGET_S`` a turn)."""
            releasing = SerialDisposable()
            rng = random.Random(0)
            emit = observer.on_next

            def add(clock: _KeyClock, start: float, value: float) -> None:
                acc = clock.windows.get(start)
                if acc is None:
                    acc = clock.windows[start] = Accumulator(keep_samples, spread)
                    heappush(clock.starts, start)
                acc.add(value, rng)

            def aggregate(device: str, metric: str, start: float, acc: Accumulator) -> None:
                """Emit a closed window now, or after those the timer is still releasing."""
                if backlog:
                    backlog.append((device, metric, start, acc))
                else:
                    summarise(device, metric, start, acc)

            def summarise(device: str, metric: str, start: float, acc: Accumulator) -> None:
                try:
                    stats = acc.stats(names)
                except Exception:  # a window that cannot be summarised is dropped
                    counters.inc(component, "error")
                    return
                emit(
                    Aggregate(pipeline, step, device, metric, start, start + size, acc.count, stats)
                )

            def close(device: str, metric: str, clock: _KeyClock, until: float) -> None:
                starts, windows = clock.starts, clock.windows
                while starts and starts[0] + close_after <= until:
                    start = heappop(starts)
                    aggregate(device, metric, start, windows.pop(start))

            def late(item: Reading, clock: _KeyClock) -> None:
                counters.inc(component, "late")
                body: dict[str, object] = {
                    "source": item.source,
                    "value": item.value,
                    "seq": item.seq,
                    "watermark": clock.newest - lateness,
                }
                emit(
                    Message(
                        pipeline, step, item.device, item.metric, "late", late_topic, item.ts, body
                    )
                )

            def arm() -> None:
                """Set the timer for the earliest deadline, if that is earlier than it is set."""
                nonlocal armed
                if dues and dues[0] < armed:
                    due = armed = dues[0]
                    delay = max(due - clock_now(), 0.0)
                    timer.disposable = scheduler.schedule_relative(delay, on_due, due)

            def enter(key: tuple[str, str], clock: _KeyClock, due: float) -> None:
                """Enter ``key`` at ``due`` (an older entry of it goes stale)."""
                clock.due = due
                keys = waiting.get(due)
                if keys is None:
                    waiting[due] = [key]
                    heappush(dues, due)
                else:
                    keys.append(key)

            def expect(key: tuple[str, str], clock: _KeyClock, due: float) -> None:
                """:func:`enter`, and set the timer earlier if this is the earliest deadline."""
                enter(key, clock, due)
                if due < armed:
                    arm()

            def move(key: tuple[str, str], clock: _KeyClock, due: float) -> None:
                """Bring an entered key's deadline earlier; the timer enters it anew, and
                runs at once to do so if it was set for later than ``due``."""
                nonlocal armed
                clock.due = due
                if key not in moved:
                    moved[key] = clock
                if due < armed:
                    armed = -inf
                    timer.disposable = scheduler.schedule_relative(0.0, on_due, None)

            def on_next(item: Record) -> None:
                if type(item) is not Reading:
                    emit(item)
                    return
                try:
                    _source, device, metric, value, ts, _seq = item
                    if type(value) is not float:
                        value = float(value)
                    if not isfinite(ts):
                        counters.inc(component, "error")
                        return
                    key = (device, metric)
                    clock = clocks.get(key)
                    if clock is None:
                        clock = clocks[key] = _KeyClock()
                    newest = clock.newest
                    if ts > newest:
                        clock.newest = newest = ts
                        arrival = clock.arrival = clock_now()
                        if ts >= clock.flushed_until:  # the watermark now covers them all
                            clock.flushed, clock.flushed_until = NOTHING_FLUSHED, inf
                    else:
                        arrival = clock.arrival
                    if tumbling:
                        start = floor(ts / size) * size
                        if start + close_after <= newest or (
                            clock.flushed and start in clock.flushed
                        ):
                            late(item, clock)
                            return
                        acc = clock.windows.get(start)  # add(), inlined for the usual case
                        if acc is None:
                            acc = clock.windows[start] = Accumulator(keep_samples, spread)
                            heappush(clock.starts, start)
                        if plain:  # Accumulator.add without samples or spread, inlined
                            count = acc.count = acc.count + 1
                            acc.total += value
                            if value < acc.minimum:
                                acc.minimum = value
                            if value > acc.maximum:
                                acc.maximum = value
                            if count == 1:
                                acc.first = value
                            acc.last = value
                        else:
                            acc.add(value, rng)
                    else:
                        added = False
                        flushed = clock.flushed
                        first = floor((ts - size) / slide_s) + 1
                        for k in range(floor(ts / slide_s), first - 1, -1):
                            start = k * slide_s
                            if start + close_after > newest and start not in flushed:
                                add(clock, start, value)
                                added = True
                        if not added:
                            late(item, clock)
                            return
                    closes = clock.starts[0] + close_after
                    if closes <= newest:
                        close(device, metric, clock, newest)
                        closes = clock.starts[0] + close_after  # this reading's window is open
                    if (due := arrival + (closes - newest)) < clock.due - tolerance:
                        due = on_grid(due)  # still earlier: clock.due is on the grid
                        if clock.due == inf:
                            expect(key, clock, due)
                        else:
                            move(key, clock, due)
                except Exception:  # the per-item boundary: count, drop, carry on
                    counters.inc(component, "error")

            def on_due(_scheduler: abc.SchedulerBase, target: float | None) -> None:
                """Emit the windows whose deadline has come; re-enter their keys' next ones."""
                nonlocal armed
                armed = inf
                # never before the deadline it was set for (a timer may run a hair early)
                now = max(clock_now(), target if target is not None else -inf)
                if moved:
                    for key, clock in moved.items():
                        enter(key, clock, clock.due)  # its older entry goes stale
                    moved.clear()
                due_now: list[tuple[str, str, float, Accumulator]] = []
                append = due_now.append
                while dues and dues[0] <= now:
                    due = heappop(dues)
                    for key in waiting.pop(due):
                        clock = clocks[key]
                        if clock.due != due:  # entered again since, at an earlier deadline
                            continue
                        clock.due = inf
                        starts, windows = clock.starts, clock.windows
                        arrival, newest = clock.arrival, clock.newest
                        device, metric = key
                        emitted: list[float] = []
                        ahead = arrival - newest + close_after  # start + this: its deadline
                        while starts and on_grid(starts[0] + ahead) <= now:
                            start = heappop(starts)
                            append((device, metric, start, windows.pop(start)))
                            emitted.append(start)
                        if emitted:  # starts came out in order: the last closes last
                            until = emitted[-1] + close_after
                            if clock.flushed:
                                clock.flushed += tuple(emitted)  # each start is flushed once
                                clock.flushed_until = max(clock.flushed_until, until)
                            else:
                                clock.flushed, clock.flushed_until = tuple(emitted), until
                        if starts:  # enter(), inlined
                            next_due = on_grid(starts[0] + ahead)
                            clock.due = next_due
                            keys = waiting.get(next_due)
                            if keys is None:
                                waiting[next_due] = [key]
                                heappush(dues, next_due)
                            else:
                                keys.append(key)
                arm()
                if due_now:
                    idle = not backlog
                    backlog.extend(due_now)
                    if idle:
                        release()

            def release(_scheduler: abc.SchedulerBase | None = None, _state: Any = None) -> None:
                """Emit closed windows for ``EMIT_BUDGET_S``; the rest on the scheduler's next
                turn, so readings and sends go on in between."""
                until = perf_counter() + EMIT_BUDGET_S
                try:
                    while backlog:
                        for _ in range(min(len(backlog), EMIT_CHUNK)):
                            summarise(*backlog.popleft())
                        if perf_counter() >= until:
                            break
                finally:  # also when downstream fails: it must not strand the rest
                    if backlog:
                        releasing.disposable = scheduler.schedule(release)

            def on_error(error: Exception) -> None:
                timer.dispose()
                releasing.dispose()
                observer.on_error(error)

            def on_completed() -> None:
                timer.dispose()
                releasing.dispose()
                while backlog:
                    summarise(*backlog.popleft())
                for (device, metric), clock in clocks.items():
                    close(device, metric, clock, math.inf)
                observer.on_completed()

            subscription = source.subscribe(on_next, on_error, on_completed, scheduler=scheduler_)
            return CompositeDisposable(timer, releasing, subscription)

        return Observable(subscribe)

    return operator
