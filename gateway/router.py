"""What happens to a pipeline's output: stored locally and queued in the outbox per sink."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Protocol

import orjson

from gateway.model import Aggregate, Alert, Message, Reading, Record
from gateway.sinks.payloads import MessageIds, encode
from gateway.sinks.topics import render
from gateway.store.store import PRIORITY_AGGREGATE, PRIORITY_ALERT, PRIORITY_READING


class Outputs(Protocol):
    """Where routed records go: the ``Store`` live, stdout in ``replay``."""

    def add_aggregate(self, agg: Aggregate) -> None: ...

    def add_alert(self, alert: Alert) -> None: ...

    def add_outbox(
        self, sink: str, msg_id: str, topic: str, payload: bytes, qos: int, priority: int = ...
    ) -> None: ...

    def add_dead_letter(
        self, source: str, reason: str, detail: str, raw: bytes, ts: float
    ) -> None: ...


@dataclass(frozen=True, slots=True)
class Target:
    """One sink a pipeline forwards to: its id, topic templates per kind and QoS."""

    sink: str
    reading_topic: str
    aggregate_topic: str
    alert_topic: str
    qos: int


class Router:
    """The terminal observer of one pipeline."""

    def __init__(
        self,
        gateway: str,
        pipeline: str,
        store: Outputs,
        targets: Sequence[Target],
        ids: MessageIds,
        forward: Collection[str],
    ) -> None:
        self._gateway = gateway
        self._pipeline = pipeline
        self._store = store
        self._targets = tuple(targets)
        self._ids = ids
        self._forward_readings = "readings" in forward
        self._forward_aggregates = "aggregates" in forward
        self._forward_alerts = "alerts" in forward

    def __call__(self, record: Record) -> None:
        if isinstance(record, Aggregate):
            self._store.add_aggregate(record)
        elif isinstance(record, Alert):
            self._store.add_alert(record)
        if isinstance(record, Message):
            if record.kind == "late":  # a reading a window refused: kept for inspection
                detail = f"{record.pipeline}/{record.step}: older than the watermark"
                raw = orjson.dumps({**record.body, "device": record.device, "ts": record.ts})
                self._store.add_dead_letter(
                    str(record.body.get("source", "")), "late", detail, raw, record.ts
                )
            if record.topic is None:
                return  # kept locally only
            # else: a step named the topic (an action, a late topic): sent whatever `forward` says
        elif isinstance(record, Reading):
            if not self._forward_readings:
                return
        elif isinstance(record, Aggregate):
            if not self._forward_aggregates:
                return
        elif not self._forward_alerts:
            return
        for target in self._targets:
            if isinstance(record, Reading):
                template, source, priority = target.reading_topic, record.source, PRIORITY_READING
            elif isinstance(record, Aggregate):
                template, source, priority = target.aggregate_topic, "", PRIORITY_AGGREGATE
            elif isinstance(record, Message):
                template, source, priority = record.topic or "", "", PRIORITY_ALERT
            else:
                template, source, priority = target.alert_topic, "", PRIORITY_ALERT
            topic = render(
                template,
                {
                    "gateway": self._gateway,
                    "pipeline": self._pipeline,
                    "step": getattr(record, "step", ""),
                    "source": source,
                    "device": record.device,
                    "metric": record.metric,
                    "kind": record.kind
                    if isinstance(record, Message)
                    else type(record).__name__.lower(),
                },
            )
            msg_id = self._ids.for_record(record, self._pipeline, target.sink)
            payload = encode(record, msg_id, self._gateway, self._pipeline)
            self._store.add_outbox(target.sink, msg_id, topic, payload, target.qos, priority)
