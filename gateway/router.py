"""What happens to a pipeline's output: stored locally and queued in the outbox per sink."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Protocol

from gateway.model import Aggregate, Alert, Message, Reading, Record
from gateway.sinks.payloads import MessageIds, encode, json_bytes
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


TOPIC_CACHE_MAX = 100_000
"""Rendered topics a router remembers (about 200 bytes each) before starting afresh."""

_TopicKey = tuple[str, str, str, str, str, str]
"""(template, kind, step, source, device, metric)"""


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
        self._topics: dict[_TopicKey, str] = {}

    def __call__(self, record: Record) -> None:
        if isinstance(record, Reading):
            if not self._forward_readings:
                return
            kind, step, source, priority = "reading", "", record.source, PRIORITY_READING
        elif isinstance(record, Aggregate):
            self._store.add_aggregate(record)
            if not self._forward_aggregates:
                return
            kind, step, source, priority = "aggregate", record.step, "", PRIORITY_AGGREGATE
        elif isinstance(record, Alert):
            self._store.add_alert(record)
            if not self._forward_alerts:
                return
            kind, step, source, priority = "alert", record.step, "", PRIORITY_ALERT
        else:  # a Message: a step named the topic (an action, a late topic)
            if record.kind == "late":  # a reading a window refused: kept for inspection
                detail = f"{record.pipeline}/{record.step}: older than the watermark"
                raw = json_bytes({**record.body, "device": record.device, "ts": record.ts})
                self._store.add_dead_letter(
                    str(record.body.get("source", "")), "late", detail, raw, record.ts
                )
            if record.topic is None:
                return  # kept locally only; else sent whatever `forward` says
            kind, step, source, priority = record.kind, record.step, "", PRIORITY_ALERT
        for target in self._targets:
            if isinstance(record, Message):
                template = record.topic or ""
            elif kind == "reading":
                template = target.reading_topic
            elif kind == "aggregate":
                template = target.aggregate_topic
            else:
                template = target.alert_topic
            key = (template, kind, step, source, record.device, record.metric)
            topic = self._topics.get(key)
            if topic is None:
                topic = self._topic(key)
            msg_id = self._ids.for_record(record, self._pipeline, target.sink)
            payload = encode(record, msg_id, self._gateway, self._pipeline)
            self._store.add_outbox(target.sink, msg_id, topic, payload, target.qos, priority)

    def _topic(self, key: _TopicKey) -> str:
        """Render and remember one topic (sanitizing costs microseconds; a lookup does not)."""
        template, kind, step, source, device, metric = key
        topic = render(
            template,
            {
                "gateway": self._gateway,
                "pipeline": self._pipeline,
                "step": step,
                "source": source,
                "device": device,
                "metric": metric,
                "kind": kind,
            },
        )
        if len(self._topics) >= TOPIC_CACHE_MAX:
            self._topics.clear()  # bounded memory whatever the number of devices
        self._topics[key] = topic
        return topic
