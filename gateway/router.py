"""What happens to a pipeline's output: stored locally and queued in the outbox per sink."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from gateway.model import Aggregate, Alert, Reading, Record
from gateway.sinks.payloads import MessageIds, encode
from gateway.sinks.topics import render
from gateway.store.store import PRIORITY_AGGREGATE, PRIORITY_ALERT, PRIORITY_READING, Store


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
        store: Store,
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
        if isinstance(record, Reading):
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
                    "kind": type(record).__name__.lower(),
                },
            )
            msg_id = self._ids.for_record(record, self._pipeline, target.sink)
            payload = encode(record, msg_id, self._gateway, self._pipeline)
            self._store.add_outbox(target.sink, msg_id, topic, payload, target.qos, priority)
