"""``edge-gateway replay``: the configured pipelines over a recording, in event time, no broker.

Readings come from a CSV or JSON-lines file, or from the gateway's own store; the pipelines'
clock is a virtual one set to each reading's event time, so windows, throttles and detectors
see time pass as the recording says, as fast as the machine goes. Every message the sinks
would publish is written to stdout as one JSON line ``{"topic": ..., "payload": {...}}``.
"""

from __future__ import annotations

import csv
import io
import itertools
import math
import os
import sqlite3
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Annotated, Literal, cast

import msgspec
import orjson
from reactivex import Observable, abc
from reactivex.disposable import Disposable
from reactivex.scheduler import HistoricalScheduler

from gateway.config.model import Config
from gateway.counters import Counters
from gateway.errors import DecodeError
from gateway.model import Aggregate, Alert, Reading, Record
from gateway.pipeline.steps import compile_steps
from gateway.router import Router, Target
from gateway.sinks.payloads import MessageIds
from gateway.sources.codecs import _MAX_ID as MAX_ID
from gateway.sources.codecs import _MS_ABOVE as MS_ABOVE
from gateway.sources.codecs import JsonFormat, build_decoder

InputFormat = Literal["csv", "jsonl"]
TIMESTAMP_COLUMNS = ("timestamp", "ts", "time")
MIN_TS, MAX_TS = 0.0, 253402300799.0
"""Event times a replay accepts: 1970 to the end of year 9999 (what datetime can hold)."""
RESERVED_COLUMNS = {*TIMESTAMP_COLUMNS, "device", "metric", "value", "seq"}
HEADS_MAX = 100_000
"""Topics whose encoded start of line the stdout writer remembers before starting afresh."""


@dataclass
class Rejects:
    """Input that could not be replayed, by reason (never fatal)."""

    reasons: Counter[str] = field(default_factory=Counter)

    def add(self, reason: str) -> None:
        self.reasons[reason] += 1

    def total(self) -> int:
        return sum(self.reasons.values())


def parse_ts(text: str) -> float:
    """Epoch seconds from epoch seconds/milliseconds or ISO 8601 (naive means UTC)."""
    try:
        ts = float(text)
    except ValueError:
        parsed = datetime.fromisoformat(text.strip())
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.timestamp()
    if not math.isfinite(ts):
        raise ValueError("not finite")
    return ts / 1000.0 if ts > 1e11 else ts


def read_csv(
    stream: IO[str], device: str, metric: str | None, source: str, rejects: Rejects
) -> Iterator[Reading]:
    """Readings from a CSV with a header row.

    A ``timestamp`` (or ``ts``/``time``) column is required. ``device`` and ``metric`` columns
    are optional (defaults: ``device``, and ``metric`` or ``value``); a ``value`` column holds
    the value, any other column is a metric of its own. NAB files (``timestamp,value``) fit.
    """
    reader = csv.reader(stream)
    try:
        header = next(reader, None)
    except csv.Error:
        header = None
    if header is None:
        return
    names = [h.strip() for h in header]
    ts_col = next((names.index(c) for c in TIMESTAMP_COLUMNS if c in names), None)
    if ts_col is None:
        rejects.add("no_timestamp_column")
        return
    dev_col = names.index("device") if "device" in names else None
    met_col = names.index("metric") if "metric" in names else None
    seq_col = names.index("seq") if "seq" in names else None
    value_metric = metric or "value"
    metric_cols = [
        (i, value_metric if name == "value" else name)
        for i, name in enumerate(names)
        if name not in RESERVED_COLUMNS or name == "value"
    ]
    width = len(names)
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error:  # e.g. a field beyond csv.field_size_limit(): skip that record
            rejects.add("bad_csv")
            continue
        if not row:
            continue
        if len(row) != width:
            rejects.add("bad_columns")
            continue
        try:
            ts = parse_ts(row[ts_col])
            seq = int(row[seq_col]) if seq_col is not None and row[seq_col] else None
        except (ValueError, OverflowError):
            rejects.add("bad_timestamp")
            continue
        dev = row[dev_col] if dev_col is not None else device
        for i, name in metric_cols:
            cell = row[i].strip()
            if not cell:
                continue
            try:
                value = float(cell)
            except ValueError:
                rejects.add("non_numeric")
                continue
            if not math.isfinite(value):
                rejects.add("non_numeric")
                continue
            met = row[met_col] if met_col is not None and name == value_metric else name
            yield Reading(source, dev, met, value, ts, seq)


Name = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID)]


class UsualLine(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """The usual JSON line, ``{"device", "metric", "value", "ts"}`` in epoch seconds, no seq.

    Decoded and checked in C (msgspec: about 0.3 µs against 1.2 µs for ``orjson.loads`` and
    the general decoder's checks in Python), giving what the general decoder gives for such
    a line. Any other line (another field, a seq, milliseconds, a bad value) fails here and
    takes the general decoder.
    """

    device: Name
    metric: Name
    value: float
    ts: Annotated[float, msgspec.Meta(le=MS_ABOVE)]
    seq: None = None


def read_jsonl(
    stream: IO[bytes], device: str, metric: str | None, source: str, rejects: Rejects
) -> Iterator[Reading]:
    """Readings from JSON lines in the gateway's JSON payload format (README, ``json``).

    ``device`` is used for lines that name none; ``metric`` is not needed (JSON names it).
    """
    decode = build_decoder(JsonFormat())
    usual = msgspec.json.Decoder(UsualLine).decode
    new = tuple.__new__
    for line in stream:
        try:
            row = usual(line)
        except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError):
            pass  # not the usual line: the general decoder below says what it is
        else:
            yield new(Reading, (source, row.device, row.metric, row.value, row.ts, None))
            continue
        if not line.strip():
            continue
        try:
            try:
                readings = decode(line, source, None, None, math.nan)
            except DecodeError as exc:
                if exc.reason != "no_device":
                    raise
                readings = decode(line, source, device, None, math.nan)  # the default device
        except DecodeError as exc:
            rejects.add(exc.reason)
            continue
        for r in readings:
            if math.isnan(r.ts):
                rejects.add("no_timestamp")
            else:
                yield r


def read_store(
    path: str, since: float, until: float, device: str | None, metric: str | None
) -> Iterator[Reading]:
    """Readings recorded by the gateway in its SQLite store, in event-time order."""
    sql = "SELECT source, device, metric, value, ts, seq FROM readings WHERE ts >= ? AND ts < ?"
    params: list[object] = [since, until]
    if device is not None:
        sql += " AND device = ?"
        params.append(device)
    if metric is not None:
        sql += " AND metric = ?"
        params.append(metric)
    sql += " ORDER BY ts"
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        for row in conn.execute(sql, params):
            yield Reading(*row)
    finally:
        conn.close()


class StdoutOutputs:
    """The router's outputs in a replay: outbox messages become JSON lines, nothing is kept."""

    def __init__(self, out: IO[bytes]) -> None:
        self.out = out
        self._heads: dict[str, bytes] = {}
        """Each topic's line up to its payload (a topic repeats per device and kind)."""
        self.messages = 0
        self.alerts = 0
        self.aggregates = 0
        self.dead_letters = 0

    def add_aggregate(self, agg: Aggregate) -> None:
        self.aggregates += 1

    def add_alert(self, alert: Alert) -> None:
        self.alerts += 1

    def add_dead_letter(self, source: str, reason: str, detail: str, raw: bytes, ts: float) -> None:
        self.dead_letters += 1

    def add_outbox(
        self, sink: str, msg_id: str, topic: str, payload: bytes, qos: int, priority: int = 0
    ) -> None:
        self.messages += 1
        head = self._heads.get(topic)
        if head is None:
            if len(self._heads) >= HEADS_MAX:
                self._heads.clear()
            head = self._heads[topic] = b'{"topic":' + orjson.dumps(topic) + b',"payload":'
        self.out.write(head + payload + b"}\n")


class ReplayScheduler(HistoricalScheduler):
    """The virtual clock of a replay; it also tells its time as epoch seconds, cheaply.

    Steps read the time once per reading (``epoch_clock``): a float kept up to date whenever
    the clock moves costs far less than building a datetime on every read.
    """

    def __init__(self, initial_clock: datetime) -> None:
        self._epoch = initial_clock.timestamp()
        super().__init__(initial_clock)

    @property
    def _clock(self) -> datetime:
        return self._datetime

    @_clock.setter
    def _clock(self, value: datetime) -> None:
        self._datetime = value
        self._epoch = value.timestamp()

    def epoch_now(self) -> float:
        return self._epoch


class Feed(Observable[Record]):
    """The head of a replayed pipeline: readings go straight to its first step's ``on_next``.

    What a ``Subject`` does per item (a lock, a copy of the observer list, three calls) is
    about a microsecond; a replay pushes from one thread and never unsubscribes midway. It
    keeps the callbacks a step subscribes with as they are, not wrapped in the
    ``AutoDetachObserver`` that ``Observable.subscribe`` puts around them: one call less per
    reading.
    """

    def __init__(self) -> None:
        super().__init__()
        self.pushes: list[Callable[[Record], None]] = []
        self.completions: list[Callable[[], None]] = []

    def subscribe(
        self,
        on_next: abc.ObserverBase[Record] | abc.OnNext[Record] | None = None,
        on_error: abc.OnError | None = None,
        on_completed: abc.OnCompleted | None = None,
        *,
        scheduler: abc.SchedulerBase | None = None,
    ) -> abc.DisposableBase:
        if isinstance(on_next, abc.ObserverBase):
            observer = on_next
            on_next, on_completed = observer.on_next, observer.on_completed
        push = on_next if on_next is not None else _ignore
        complete = on_completed if on_completed is not None else _nothing
        self.pushes.append(push)
        self.completions.append(complete)

        def unsubscribe() -> None:
            self.pushes.remove(push)
            self.completions.remove(complete)

        return Disposable(unsubscribe)

    def _subscribe_core(
        self, observer: abc.ObserverBase[Record], scheduler: abc.SchedulerBase | None = None
    ) -> abc.DisposableBase:
        """A pipeline without steps: the router is subscribed to the feed itself."""
        return self.subscribe(observer.on_next, observer.on_error, observer.on_completed)


def _ignore(_record: Record) -> None:
    pass


def _nothing() -> None:
    pass


class Terminal:
    """The router as a pipeline's last observer: its ``on_next`` is the router itself."""

    __slots__ = ("on_next",)

    def __init__(self, router: Router) -> None:
        self.on_next = router

    def on_error(self, error: Exception) -> None:
        raise error

    def on_completed(self) -> None:
        pass


def attach(records: Observable[Record], router: Router) -> abc.DisposableBase:
    """Subscribe ``router`` to a replayed pipeline's output without the ``AutoDetachObserver``
    ``subscribe`` would wrap it in (a call less per record out): the replay never disposes
    midway, and its steps send nothing after completing."""
    return records._subscribe_core(cast(abc.ObserverBase[Record], Terminal(router)))


@dataclass
class Summary:
    readings: int
    seconds: float
    rejects: Rejects
    outputs: StdoutOutputs
    counters: Counters

    def text(self) -> str:
        rate = self.readings / self.seconds if self.seconds > 0 else 0.0
        lines = [
            f"replayed {self.readings} readings in {self.seconds:.2f}s ({rate:,.0f} readings/s): "
            f"{self.outputs.messages} messages, {self.outputs.alerts} alert transitions, "
            f"{self.outputs.aggregates} aggregates, {self.outputs.dead_letters} late readings"
        ]
        if self.rejects.total():
            reasons = ", ".join(f"{k} {n}" for k, n in sorted(self.rejects.reasons.items()))
            lines.append(f"skipped {self.rejects.total()} input records: {reasons}")
        counts = self.counters.snapshot()
        if counts:
            lines.append(
                "step counters: "
                + ", ".join(f"{comp} {name} {n}" for (comp, name), n in sorted(counts.items()))
            )
        return "\n".join(lines)


class Progress:
    """A progress bar on a terminal (by input bytes consumed), nothing otherwise."""

    def __init__(self, stream: IO[str], position: Callable[[], float], total: float) -> None:
        self.stream, self.position, self.total = stream, position, total
        self.enabled = total > 0 and stream.isatty()
        self.next_update = 0.0

    def update(self, readings: int) -> None:
        now = time.monotonic()
        if not self.enabled or now < self.next_update:
            return
        self.next_update = now + 0.2
        fraction = min(self.position() / self.total, 1.0)
        bar = "#" * int(fraction * 30)
        self.stream.write(f"\r[{bar:<30}] {fraction:6.1%} {readings} readings")
        self.stream.flush()

    def done(self) -> None:
        if self.enabled:
            self.stream.write("\r" + " " * 60 + "\r")
            self.stream.flush()


def replay(
    config: Config,
    readings: Iterator[Reading],
    out: IO[bytes],
    source: str | None = None,
    rejects: Rejects | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> Summary:
    """Push ``readings`` through the pipelines (those fed by ``source``, or all) in event time."""
    started = time.perf_counter()
    first = next(readings, None)
    if first is not None:
        readings = itertools.chain((first,), readings)
    # the virtual clock starts at the first reading: periodic ticks begin there, not in 1970
    origin = first.ts if first is not None and MIN_TS <= first.ts <= MAX_TS else 0.0
    scheduler = ReplayScheduler(datetime.fromtimestamp(origin, UTC))
    counters = Counters()
    outputs = StdoutOutputs(out)
    sinks = {s.id: s for s in config.sinks}
    ids = MessageIds()
    feeds: list[Feed] = []
    for p in config.pipelines:
        if source is not None and source not in p.from_:
            continue
        targets = [
            Target(s.id, s.topics.reading, s.topics.aggregate, s.topics.alert, s.qos)
            for s in (sinks[name] for name in p.to)
        ]
        router = Router(config.gateway.id, p.id, outputs, targets, ids, p.forward)
        feed = Feed()
        attach(feed.pipe(compile_steps(p.id, p.steps, scheduler, counters)), router)
        feeds.append(feed)
    pushes = [push for feed in feeds for push in feed.pushes]
    now = origin
    count = 0
    advance = scheduler.advance_to
    rejects = rejects if rejects is not None else Rejects()
    push = pushes[0] if len(pushes) == 1 else _push_to_all(pushes)
    for reading in readings:
        ts = reading.ts
        if not MIN_TS <= ts <= MAX_TS:
            rejects.add("bad_timestamp")
            continue
        if ts > now:
            now = ts
            advance(datetime.fromtimestamp(ts, UTC))
        push(reading)
        count += 1
        if not count & 4095 and on_progress is not None:
            on_progress(count)
    for complete in [c for feed in feeds for c in feed.completions]:
        complete()
    out.flush()
    seconds = time.perf_counter() - started
    return Summary(count, seconds, rejects, outputs, counters)


def _push_to_all(pushes: list[Callable[[Record], None]]) -> Callable[[Record], None]:
    def push(record: Record) -> None:
        for each in pushes:
            each(record)

    return push


def open_input(
    path: str, fmt: InputFormat | None, device: str | None, metric: str | None, source: str
) -> tuple[Iterator[Reading], Rejects, Callable[[], float], float]:
    """A recording's readings, the rejects they count, the bytes read so far, and the size."""
    rejects = Rejects()
    chosen = fmt or ("jsonl" if path.endswith((".jsonl", ".ndjson", ".json")) else "csv")
    raw = sys.stdin.buffer if path == "-" else open(path, "rb")  # noqa: SIM115
    size = float(os.fstat(raw.fileno()).st_size) if path != "-" else 0.0

    def position() -> float:
        try:
            return float(raw.tell())
        except (OSError, ValueError):
            return 0.0

    default_device = device or (Path(path).stem if path != "-" else "stdin")
    if chosen == "csv":
        text = io.TextIOWrapper(raw, encoding="utf-8", errors="replace", newline="")
        readings = read_csv(text, default_device, metric, source, rejects)
    else:
        readings = read_jsonl(raw, default_device, metric, source, rejects)
    if device is not None or metric is not None:
        readings = _only(readings, device, metric)
    return readings, rejects, position, size


def _only(readings: Iterator[Reading], device: str | None, metric: str | None) -> Iterator[Reading]:
    for r in readings:
        if (device is None or r.device == device) and (metric is None or r.metric == metric):
            yield r


def run(
    config: Config,
    input_path: str | None,
    fmt: InputFormat | None,
    device: str | None,
    metric: str | None,
    source: str | None,
    from_store: str | None,
    since: str | None,
    until: str | None,
) -> int:
    """The ``replay`` command: exit 0, or 2 for unusable arguments (said on stderr)."""
    err = sys.stderr
    if (input_path is None) == (from_store is None):
        print("replay: give exactly one of --input or --from-store", file=err)
        return 2
    if from_store is not None:
        try:
            start = parse_ts(since) if since else -math.inf
            end = parse_ts(until) if until else math.inf
        except ValueError as exc:
            print(f"replay: bad --since/--until: {exc}", file=err)
            return 2
        if not Path(from_store).is_file():
            print(f"replay: no such store: {from_store}", file=err)
            return 2
        readings = read_store(from_store, start, end, device, metric)
        rejects, progress = Rejects(), Progress(err, lambda: 0.0, 0.0)
    else:
        assert input_path is not None
        try:
            readings, rejects, position, size = open_input(
                input_path, fmt, device, metric, source or "replay"
            )
        except OSError as exc:
            print(f"replay: cannot read {input_path}: {exc}", file=err)
            return 2
        progress = Progress(err, position, size)
    try:
        summary = replay(config, readings, sys.stdout.buffer, source, rejects, progress.update)
    except sqlite3.Error as exc:
        print(f"replay: cannot read the store {from_store}: {exc}", file=err)
        return 2
    progress.done()
    print(summary.text(), file=err)
    return 0
