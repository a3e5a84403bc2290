"""Composition root: build every part from a Config, run them in one TaskGroup, reload on
demand, stop cleanly.

Reload (SIGHUP) swaps only what changed: the store and its outbox stay, unchanged sources
keep their connections, unchanged pipelines keep their open windows. A changed or removed
pipeline is completed first, so its open windows are flushed (emitted as they are) into the
store and outbox; the new pipeline starts with empty windows. The swap of the routes happens
synchronously on the event loop, so no reading can fall between the old and the new pipeline.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import reactivex
from reactivex.scheduler.eventloop import AsyncIOScheduler

from gateway import status
from gateway.config.model import Config, PipelineConfig
from gateway.counters import Counters
from gateway.health import Monitor, Verdict, watch
from gateway.intake import Intake
from gateway.metrics import MetricsServer
from gateway.model import Alert, Reading, Record
from gateway.pipeline.context import KeyCount
from gateway.pipeline.inlet import Inlet
from gateway.pipeline.metering import Meters
from gateway.pipeline.steps import compile_steps
from gateway.presence import Presence
from gateway.router import Router, Target
from gateway.sinks.forwarder import Forwarder, Outbox
from gateway.sinks.memory_outbox import MemoryOutbox
from gateway.sinks.mqtt import MqttPublisher, MqttSinkConfig
from gateway.sinks.payloads import MessageIds
from gateway.sinks.resilience import Backoff, BreakerState
from gateway.sources.base import Source
from gateway.sources.mqtt import MqttSource
from gateway.sources.serial import SerialSource
from gateway.sources.silence import SilenceWatch
from gateway.store.store import Store
from gateway.systemd import Notifier, watchdog_interval
from gateway.web.live import LiveFeed

log = logging.getLogger("gateway.app")

CHECK_INTERVAL = 5.0
"""Seconds between health checks when systemd asks for no watchdog."""
READY_TIMEOUT = 45.0
"""Seconds to wait for every source's first connect attempt before ``READY=1`` anyway (an
MQTT attempt ends within its 30 s CONNACK timeout; the unit's TimeoutStartSec is 60 s)."""


@dataclass
class Pipeline:
    """A running pipeline: its config, the inlet sources push into, and its subscription."""

    config: PipelineConfig
    subject: Inlet[Record]
    subscription: reactivex.abc.DisposableBase
    push: Callable[[Reading], None]
    """``subject.on_next``, timed for the metrics."""
    keys: dict[str, KeyCount]
    """How to count the device+metric keys of each stateful step, by step id."""


@dataclass(frozen=True, slots=True)
class Changes:
    """What a reload changed, by id."""

    sources: tuple[str, ...]
    pipelines: tuple[str, ...]
    sinks: tuple[str, ...]
    needs_restart: tuple[str, ...]

    def describe(self) -> str:
        parts = [
            f"{what} {', '.join(ids)}"
            for what, ids in (
                ("sources", self.sources),
                ("pipelines", self.pipelines),
                ("sinks", self.sinks),
            )
            if ids
        ]
        return "; ".join(parts) or "nothing changed"


def diff(old: Config, new: Config) -> Changes:
    """Ids of sources, pipelines and sinks that were added, removed or changed.

    A pipeline also counts as changed when the topics or QoS of a sink it forwards to changed.
    """

    def changed(a: dict[str, object], b: dict[str, object]) -> set[str]:
        return {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}

    sinks = changed({s.id: s for s in old.sinks}, {s.id: s for s in new.sinks})
    sources = changed({s.id: s for s in old.sources}, {s.id: s for s in new.sources})
    pipelines = changed({p.id: p for p in old.pipelines}, {p.id: p for p in new.pipelines})
    # What a pipeline's router needs from a sink: its topics and QoS (not its connection).
    targets = changed(
        {s.id: (s.topics, s.qos) for s in old.sinks}, {s.id: (s.topics, s.qos) for s in new.sinks}
    )
    pipelines |= {p.id for p in new.pipelines if targets & set(p.to)}
    restart = tuple(
        section
        for section in ("gateway", "store", "http")
        if getattr(old, section) != getattr(new, section)
    )
    return Changes(tuple(sorted(sources)), tuple(sorted(pipelines)), tuple(sorted(sinks)), restart)


@dataclass
class Gateway:
    """Everything built from one Config; ``run`` owns the tasks, ``reload`` swaps parts."""

    config: Config
    counters: Counters = field(default_factory=Counters)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    notifier: Notifier = field(default_factory=Notifier.from_environment)
    load_config: Callable[[], Config] | None = None
    """Reads the config file again on reload; None: reload is not possible."""

    def __post_init__(self) -> None:
        self.store = Store(self.config.store, self.counters)
        self.ids = MessageIds()
        self.meters = Meters()
        self.sources: dict[str, Source] = {}
        self.forwarders: dict[str, Forwarder] = {}
        self.memory_outboxes: dict[str, MemoryOutbox] = {}
        """Sinks with ``outbox: memory``."""
        self.pipelines: dict[str, Pipeline] = {}
        self.reloads = 0
        self.live = LiveFeed() if self.config.web.enabled else None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._tg: asyncio.TaskGroup | None = None
        self._intake: Intake | None = None
        self._scheduler: AsyncIOScheduler | None = None
        self._reload_requested = asyncio.Event()
        self._metrics: MetricsServer | None = None
        self._reloaded = asyncio.Condition()
        self.monitor = Monitor(
            self.store,
            self._breakers,
            self.counters,
            # A sink backing off between two attempts is not stalled: allow two full delays.
            stall_after=max(
                [self.config.gateway.stall_after]
                + [2 * s.broker.reconnect.max for s in self.config.sinks]
            ),
        )

    # ------------------------------------------------------------------ building parts

    def _breakers(self) -> dict[str, tuple[BreakerState, int]]:
        return {
            k: (f.breaker.state, f.breaker.consecutive_failures) for k, f in self.forwarders.items()
        }

    def _source(self, config: Config, source_id: str) -> Source:
        src = next(s for s in config.sources if s.id == source_id)
        if src.type == "mqtt":
            return MqttSource(src, config.gateway.id)
        return SerialSource(src)

    async def _outbox(self, sink: MqttSinkConfig) -> Outbox:
        """The store, or the sink's memory outbox (made, or kept from before a reload)."""
        memory = self.memory_outboxes.get(sink.id)
        if sink.outbox == "sqlite":
            if memory is not None:  # was memory before a reload: what is left goes to SQLite
                self._close_memory(sink.id)
            return self.store
        if memory is not None and memory.max_rows == sink.memory_max_rows:
            return memory
        if memory is not None:
            self._close_memory(sink.id)
        memory = MemoryOutbox(sink.id, self.store, self.counters, sink.memory_max_rows)
        self.memory_outboxes[sink.id] = memory
        await memory.open()
        return memory

    def _close_memory(self, sink_id: str) -> None:
        if (memory := self.memory_outboxes.pop(sink_id, None)) is not None:
            memory.close()

    def _forwarder(self, sink: MqttSinkConfig, outbox: Outbox) -> Forwarder:
        client_id = sink.broker.client_id or f"{self.config.gateway.id}-{sink.id}"
        return Forwarder(
            sink.id,
            outbox,
            MqttPublisher(sink, client_id),
            self.counters,
            batch=sink.batch,
            backoff=Backoff(sink.broker.reconnect.initial, sink.broker.reconnect.max),
            breaker_failures=sink.breaker.failures,
            breaker_cooldown=sink.breaker.cooldown,
            max_message_bytes=sink.max_message_bytes,
            max_attempts=sink.max_attempts,
            drain_rate=sink.drain_rate,
            # the connection's window, not the forwarder's, bounds what is in flight
            window=max(4 * sink.batch, sink.max_inflight),
        )

    def _pipeline(self, config: Config, p: PipelineConfig) -> Pipeline:
        assert self._scheduler is not None
        sinks = {s.id: s for s in config.sinks}
        targets = [
            Target(s.id, s.topics.reading, s.topics.aggregate, s.topics.alert, s.qos)
            for s in (sinks[name] for name in p.to)
        ]
        router = Router(config.gateway.id, p.id, self.store, targets, self.ids, p.forward)
        subject: Inlet[Record] = Inlet()
        keys: dict[str, KeyCount] = {}
        operator = compile_steps(p.id, p.steps, self._scheduler, self.counters, self.meters, keys)
        subscription = subject.pipe(operator).subscribe(
            on_next=router if self.live is None else self.live.observe(router),
            on_error=functools.partial(_pipeline_failed, p.id),
        )
        return Pipeline(p, subject, subscription, self.meters.timed(p.id, subject.on_next), keys)

    def step_keys(self) -> list[tuple[str, str, int]]:
        """``(pipeline, step, keys)`` of every stateful step of the running pipelines."""
        return [
            (pipeline_id, step, size())
            for pipeline_id, pipeline in list(self.pipelines.items())
            for step, size in list(pipeline.keys.items())
        ]

    def _routes(self) -> dict[str, list[Callable[[Reading], None]]]:
        routes: dict[str, list[Callable[[Reading], None]]] = {}
        for pipeline in self.pipelines.values():
            for source_id in pipeline.config.from_:
                routes.setdefault(source_id, []).append(pipeline.push)
        if self.live is not None:  # the web UI's latest-value tap: one dict store per reading
            for src in self.config.sources:
                routes.setdefault(src.id, []).append(self.live.tap)
        return routes

    def _gateway_alert_router(self) -> Router:
        """A router for the gateway's own alerts (overflow, silence, store writes failing) to
        every sink; the first drop by an overflow policy raises one (alerts go first and are
        dropped last), and so does each episode of failing commits (e.g. a full disk)."""
        gateway = self.config.gateway.id
        targets = [
            Target(s.id, s.topics.reading, s.topics.aggregate, s.topics.alert, s.qos)
            for s in self.config.sinks
        ]
        router = Router(gateway, "gateway", self.store, targets, self.ids, ["alerts"])

        def raise_alert(counter: str, n: int) -> None:
            router(
                Alert(
                    "gateway",
                    "store",
                    gateway,
                    counter,
                    "overflow",
                    "raised",
                    "critical",
                    time.time(),
                    float(n),
                    0.0,
                    f"{n} items dropped by the overflow policy ({counter}); more are counted",
                )
            )

        def write_state(failing: bool, detail: str) -> None:
            router(
                Alert(
                    "gateway",
                    "store",
                    gateway,
                    "store_writes",
                    "store_write",
                    "raised" if failing else "cleared",
                    "critical",
                    time.time(),
                    1.0 if failing else 0.0,
                    0.0,
                    f"the local store cannot commit ({detail}); readings wait in memory, "
                    "bounded by store.max_pending"
                    if failing
                    else "the local store commits again",
                )
            )

        self.store.on_first_drop = raise_alert
        self.store.on_write_state = write_state
        return router

    def _start(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        assert self._tg is not None
        self._tasks[name] = self._tg.create_task(_supervised(name, factory), name=name)

    def _start_source(self, source: Source) -> None:
        assert self._intake is not None
        self.sources[source.id] = source
        self._start(f"source:{source.id}", functools.partial(source.run, self._intake))

    def _start_sink(self, forwarder: Forwarder, sink: MqttSinkConfig) -> None:
        self.forwarders[forwarder.sink_id] = forwarder
        self._start(f"sink:{forwarder.sink_id}", forwarder.run)
        template = self.config.gateway.status_topic
        if template is not None:
            client_id = sink.broker.client_id or f"{self.config.gateway.id}-{sink.id}"
            presence = Presence(
                self.config.gateway.id, sink.id, sink.broker, f"{client_id}-status", template
            )
            self._start(f"status:{sink.id}", presence.run)

    async def _stop_tasks(self, names: list[str]) -> None:
        await _cancel([t for n in names if (t := self._tasks.pop(n, None)) is not None])

    # ------------------------------------------------------------------ running

    def request_reload(self) -> None:
        """Ask for a reload (a signal handler calls this); it runs as soon as possible."""
        self._reload_requested.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set, then drain and return."""
        await self.store.open()
        self._scheduler = AsyncIOScheduler(asyncio.get_running_loop())
        for p in self.config.pipelines:
            self.pipelines[p.id] = self._pipeline(self.config, p)
        self._intake = Intake(
            self.store, self._routes(), self.counters, time.time, limits=self.config.limits
        )
        wd = watchdog_interval()
        http = self.config.http
        server = (
            MetricsServer(
                http,
                self.counters,
                self.monitor,
                self.store,
                self.meters,
                [s.id for s in self.config.sources],
                str(self.config.store.path),
                self.step_keys,
            )
            if http.enabled
            else None
        )
        self._metrics = server
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            store_task = tg.create_task(self.store.run(), name="store")
            for s in self.config.sources:
                self._start_source(self._source(self.config, s.id))
            for sink in self.config.sinks:
                self._start_sink(self._forwarder(sink, await self._outbox(sink)), sink)
            timeouts = {
                s.id: s.silent_after for s in self.config.sources if s.silent_after is not None
            }
            silence = SilenceWatch(
                timeouts, self._intake.last_seen, self._gateway_alert_router(), time.time
            )
            silence_task = tg.create_task(silence.run(), name="silence")
            status_task = tg.create_task(
                status.report(
                    self.counters, self.store, self.forwarders, self.config.gateway.status_interval
                ),
                name="status",
            )
            health_task = tg.create_task(
                watch(
                    self.monitor,
                    wd / 2 if wd else CHECK_INTERVAL,
                    functools.partial(self._alive, wd is not None),
                ),
                name="health",
            )
            reload_task = tg.create_task(self._reloader(), name="reloader")
            web_tasks = (
                [tg.create_task(_supervised("web", self._web), name="web")] if self.live else []
            )
            if server is not None:
                await server.start()
            await self._sources_settled(stop)
            await self.monitor.check()
            log.info(
                "gateway %s running: %d sources, %d pipelines, %d sinks",
                self.config.gateway.id,
                len(self.sources),
                len(self.pipelines),
                len(self.forwarders),
            )
            self.notifier.ready(
                f"running: {len(self.sources)} sources, {len(self.pipelines)} pipelines"
            )
            if wd is not None:
                self.notifier.watchdog()
            self.ready.set()
            await stop.wait()
            self.notifier.stopping()
            log.info("stopping: closing sources, flushing pipelines and store")
            self._intake.open = False
            await _cancel([reload_task, status_task, health_task, silence_task, *web_tasks])
            await self._stop_tasks([n for n in self._tasks if n.startswith("source:")])
            for running in self.pipelines.values():
                running.subject.on_completed()  # flushes open windows into the store and outbox
            await self.store.flush()
            for f in self.forwarders.values():
                timeout = next(s.drain_timeout for s in self.config.sinks if s.id == f.sink_id)
                if not await f.drain(timeout):
                    log.warning(
                        "sink %s: %d messages stay in the outbox for the next start",
                        f.sink_id,
                        await self.store.outbox_depth(f.sink_id),
                    )
            await self._stop_tasks(list(self._tasks))
            for f in self.forwarders.values():
                await f.close()
            for sink_id in list(self.memory_outboxes):  # undelivered rows wait in SQLite
                self._close_memory(sink_id)
            if server is not None:
                await server.stop()
            depths = {sink: await self.store.outbox_depth(sink) for sink in self.forwarders}
            await _cancel([store_task])
        self._tg = None
        await self.store.close()
        self.notifier.close()
        log.info("stopped; totals: %s", status.status_line(self.counters.snapshot(), depths))

    async def _sources_settled(self, stop: asyncio.Event) -> None:
        """Return once every source's first connect attempt is over (connected, or failed
        and retrying), after ``READY_TIMEOUT`` seconds, or when asked to stop."""

        async def settled() -> None:
            for source in list(self.sources.values()):
                await source.settled.wait()

        waiter = asyncio.create_task(settled(), name="sources-settled")
        stopping = asyncio.create_task(stop.wait(), name="stop-while-starting")
        await asyncio.wait(
            (waiter, stopping), timeout=READY_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
        )
        waiter.cancel()
        stopping.cancel()
        await asyncio.gather(waiter, stopping, return_exceptions=True)
        late = [s.id for s in self.sources.values() if not s.settled.is_set()]
        if late and not stop.is_set():
            log.warning(
                "sources %s still on their first connect after %.0fs; ready anyway",
                ", ".join(late),
                READY_TIMEOUT,
            )

    def _alive(self, watchdog: bool, verdict: Verdict) -> None:
        if watchdog:
            self.notifier.watchdog()
        depths = {sink: s.depth for sink, s in verdict.sinks.items()}
        self.notifier.status(status.status_line(self.counters.snapshot(), depths))

    # ------------------------------------------------------------------ reloading

    async def _reloader(self) -> None:
        while True:
            await self._reload_requested.wait()
            self._reload_requested.clear()
            self.notifier.reloading()
            try:
                await self._reload_from_file()
            except Exception:  # documented boundary: a failed reload must not stop the daemon
                log.exception("reload failed; the gateway goes on with what is running")
            finally:
                self.notifier.ready(
                    f"running: {len(self.sources)} sources, {len(self.pipelines)} pipelines"
                )
            async with self._reloaded:
                self.reloads += 1
                self._reloaded.notify_all()

    async def _reload_from_file(self) -> None:
        from gateway.errors import ConfigError

        if self.load_config is None:
            log.warning("reload: no config file to read; ignored")
            return
        try:
            new = await asyncio.to_thread(self.load_config)
        except ConfigError as exc:
            log.error("reload: the new config is invalid; still running the old one:")
            for problem in exc.problems:
                log.error("reload: %s", problem)
            return
        await self.apply(new)

    async def apply(self, new: Config) -> Changes:
        """Swap to ``new``: only changed sources, pipelines and sinks are rebuilt."""
        old = self.config
        changes = diff(old, new)
        if changes.needs_restart:
            log.warning(
                "reload: changes to %s take effect only after a restart; kept the running values",
                ", ".join(changes.needs_restart),
            )
            new = new.model_copy(
                update={"gateway": old.gateway, "store": old.store, "http": old.http}
            )
        assert self._intake is not None
        # 1. Build the new pipelines before touching anything: if one cannot be built, the
        #    running config stays whole.
        try:
            built = {
                p.id: self._pipeline(new, p) for p in new.pipelines if p.id in changes.pipelines
            }
        except Exception as exc:  # a step that validates but cannot be built (a bug or a clash)
            log.error("reload: cannot build the new pipelines (%s); still running the old one", exc)
            return Changes((), (), (), ())
        # 2. Swap the routes and complete the retired pipelines (their open windows are
        #    flushed into the store and outbox), without yielding to the event loop, so no
        #    reading falls between the old and the new pipeline.
        retired = [self.pipelines.pop(p) for p in changes.pipelines if p in self.pipelines]
        self.pipelines.update(built)
        self._intake.routes = self._routes()
        self._intake.set_limits(new.limits)
        for pipeline in retired:
            pipeline.subject.on_completed()
            pipeline.subscription.dispose()
        # 3. Sinks: replace the changed forwarders; their outbox rows wait in the store.
        await self._stop_tasks(
            [f"{kind}:{s}" for s in changes.sinks for kind in ("sink", "status")]
        )
        for sink_id in changes.sinks:
            if (f := self.forwarders.pop(sink_id, None)) is not None:
                await f.close()
        for sink in new.sinks:
            if sink.id in changes.sinks:
                self._start_sink(self._forwarder(sink, await self._outbox(sink)), sink)
        for sink_id in (s for s in changes.sinks if s not in {k.id for k in new.sinks}):
            self._close_memory(sink_id)
            log.warning(
                "reload: sink %s removed; %d messages stay in its outbox",
                sink_id,
                await self.store.outbox_depth(sink_id),
            )
        # 4. Sources: restart only the changed ones.
        await self._stop_tasks([f"source:{s}" for s in changes.sources])
        for source_id in changes.sources:
            self.sources.pop(source_id, None)
        for s in new.sources:
            if s.id in changes.sources:
                self._start_source(self._source(new, s.id))
        self.config = new
        if self._metrics is not None:  # metrics by source id: the new ones count from now on
            self._metrics.collector.sources = [s.id for s in new.sources]
        log.info("reloaded: %s", changes.describe())
        return changes

    async def wait_reloaded(self, count: int) -> None:
        """Return once ``count`` reloads have finished (for tests and callers of reload)."""
        async with self._reloaded:
            await self._reloaded.wait_for(lambda: self.reloads >= count)

    async def _web(self) -> None:
        from gateway.web.server import run_web  # aiohttp is imported only when the UI is on

        assert self.live is not None
        await run_web(
            self.config,
            self.counters,
            self.live,
            lambda: [s.id for s in self.config.sources],
            lambda: {k: f.breaker.state.value for k, f in self.forwarders.items()},
            self.store.memory_depths,
        )


def _pipeline_failed(pipeline: str, exc: Exception) -> None:
    # Steps are total, so this means a bug in a step: say so loudly, the others go on.
    log.error("pipeline %s stopped by an error: %r", pipeline, exc)


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _supervised(name: str, factory: Callable[[], Awaitable[None]]) -> None:
    """Restart a long-running task that crashed on a bug, instead of taking the daemon down.

    This is the documented top-level boundary: the exception is logged with its traceback.
    """
    delay = 1.0
    while True:
        try:
            await factory()
            return
        except Exception:
            log.exception("task %s crashed; restarting in %.0fs", name, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 60.0)
