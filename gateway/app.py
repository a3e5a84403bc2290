"""Composition root: build every part from a Config, run them in one TaskGroup, stop cleanly."""

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
from reactivex.subject import Subject

from gateway import status
from gateway.config.model import Config
from gateway.counters import Counters
from gateway.intake import Intake
from gateway.model import Alert, Reading, Record
from gateway.pipeline.steps import compile_steps
from gateway.router import Router, Target
from gateway.sinks.forwarder import Forwarder
from gateway.sinks.mqtt import MqttPublisher, MqttSinkConfig
from gateway.sinks.payloads import MessageIds
from gateway.sinks.resilience import Backoff
from gateway.sources.base import Source
from gateway.sources.mqtt import MqttSource
from gateway.sources.serial import SerialSource
from gateway.sources.silence import SilenceWatch
from gateway.store.store import Store

log = logging.getLogger("gateway.app")


@dataclass
class Pipeline:
    """A running pipeline: the subject sources push into, and its subscription."""

    id: str
    subject: Subject[Record]
    subscription: reactivex.abc.DisposableBase


@dataclass
class Gateway:
    """Everything built from one Config; ``run`` owns the tasks."""

    config: Config
    counters: Counters = field(default_factory=Counters)
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.store = Store(self.config.store, self.counters)
        self.sources: list[Source] = []
        for src in self.config.sources:
            if src.type == "mqtt":
                self.sources.append(MqttSource(src, self.config.gateway.id))
            else:
                self.sources.append(SerialSource(src))
        self.forwarders: list[Forwarder] = [self._forwarder(s) for s in self.config.sinks]
        self.pipelines: list[Pipeline] = []

    def _forwarder(self, sink: MqttSinkConfig) -> Forwarder:
        client_id = sink.broker.client_id or f"{self.config.gateway.id}-{sink.id}"
        return Forwarder(
            sink.id,
            self.store,
            MqttPublisher(sink, client_id),
            self.counters,
            batch=sink.batch,
            backoff=Backoff(sink.broker.reconnect.initial, sink.broker.reconnect.max),
            breaker_failures=sink.breaker.failures,
            breaker_cooldown=sink.breaker.cooldown,
            max_message_bytes=sink.max_message_bytes,
            max_attempts=sink.max_attempts,
            drain_rate=sink.drain_rate,
        )

    def _build_pipelines(self) -> dict[str, list[Callable[[Reading], None]]]:
        scheduler = AsyncIOScheduler(asyncio.get_running_loop())
        sinks = {s.id: s for s in self.config.sinks}
        ids = MessageIds()
        routes: dict[str, list[Callable[[Reading], None]]] = {}
        for p in self.config.pipelines:
            targets = [
                Target(s.id, s.topics.reading, s.topics.aggregate, s.topics.alert, s.qos)
                for s in (sinks[name] for name in p.to)
            ]
            router = Router(self.config.gateway.id, p.id, self.store, targets, ids, p.forward)
            subject: Subject[Record] = Subject()
            operator = compile_steps(p.id, p.steps, scheduler, self.counters)
            subscription = subject.pipe(operator).subscribe(
                on_next=router, on_error=functools.partial(_pipeline_failed, p.id)
            )
            self.pipelines.append(Pipeline(p.id, subject, subscription))
            for source_id in p.from_:
                routes.setdefault(source_id, []).append(subject.on_next)
        self._gateway_alerts = self._gateway_alert_router(ids)
        return routes

    def _gateway_alert_router(self, ids: MessageIds) -> Router:
        """A router for the gateway's own alerts (overflow, silence) to every sink; the first
        drop by an overflow policy raises one (alerts go first and are dropped last)."""
        gateway = self.config.gateway.id
        targets = [
            Target(s.id, s.topics.reading, s.topics.aggregate, s.topics.alert, s.qos)
            for s in self.config.sinks
        ]
        router = Router(gateway, "gateway", self.store, targets, ids, ["alerts"])

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

        self.store.on_first_drop = raise_alert
        return router

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set, then drain and return."""
        await self.store.open()
        intake = Intake(self.store, self._build_pipelines(), self.counters, time.time)
        async with asyncio.TaskGroup() as tg:
            store_task = tg.create_task(self.store.run(), name="store")
            source_tasks = [
                tg.create_task(
                    _supervised(f"source:{s.id}", functools.partial(s.run, intake)),
                    name=f"source:{s.id}",
                )
                for s in self.sources
            ]
            sink_tasks = [
                tg.create_task(_supervised(f"sink:{f.sink_id}", f.run), name=f"sink:{f.sink_id}")
                for f in self.forwarders
            ]
            timeouts = {
                s.id: s.silent_after for s in self.config.sources if s.silent_after is not None
            }
            watch = SilenceWatch(timeouts, intake.last_seen, self._gateway_alerts, time.time)
            silence_task = tg.create_task(watch.run(), name="silence")
            status_task = tg.create_task(
                status.report(
                    self.counters,
                    self.store,
                    [f.sink_id for f in self.forwarders],
                    self.config.gateway.status_interval,
                ),
                name="status",
            )
            log.info(
                "gateway %s running: %d sources, %d pipelines, %d sinks",
                self.config.gateway.id,
                len(self.sources),
                len(self.pipelines),
                len(self.forwarders),
            )
            self.ready.set()
            await stop.wait()
            log.info("stopping: closing sources, flushing pipelines and store")
            intake.open = False
            await _cancel([status_task, silence_task, *source_tasks])
            for p in self.pipelines:
                p.subject.on_completed()  # flushes open windows into the store and outbox
            await self.store.flush()
            for f in self.forwarders:
                timeout = next(s.drain_timeout for s in self.config.sinks if s.id == f.sink_id)
                if not await f.drain(timeout):
                    log.warning(
                        "sink %s: %d messages stay in the outbox for the next start",
                        f.sink_id,
                        await self.store.outbox_depth(f.sink_id),
                    )
            await _cancel(sink_tasks)
            for f in self.forwarders:
                await f.close()
            depths = {f.sink_id: await self.store.outbox_depth(f.sink_id) for f in self.forwarders}
            await _cancel([store_task])
        await self.store.close()
        log.info("stopped; totals: %s", status.status_line(self.counters.snapshot(), depths))


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
