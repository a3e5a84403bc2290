"""The JSON documents published upstream, one schema per record kind (see README).

Every document carries ``id``: unique per message and kept across resends, so subscribers
de-duplicate by it. A forwarded reading's id is derived from its idempotency key (source,
device, metric and seq, or ts and value without a seq) plus pipeline and sink, so a reading
the local broker redelivers after a crash is published again under the same id.
"""

from __future__ import annotations

import hashlib
import itertools
import os

import orjson

from gateway.model import Aggregate, Alert, Message, Reading, Record

SCHEMA_VERSION = 1


class MessageIds:
    """``<boot>-<n>``: a random 64-bit boot id and a counter; unique without coordination."""

    def __init__(self) -> None:
        self._boot = os.urandom(8).hex()
        self._counter = itertools.count(1)

    def next(self) -> str:
        return f"{self._boot}-{next(self._counter)}"

    def for_record(self, record: Record, pipeline: str, sink: str) -> str:
        """A reading's id is a function of its idempotency key; other records get ``next``."""
        if not isinstance(record, Reading):
            return self.next()
        tail = str(record.seq) if record.seq is not None else f"{record.ts!r}/{record.value!r}"
        key = f"{pipeline}\0{sink}\0{record.source}\0{record.device}\0{record.metric}\0{tail}"
        return "r-" + hashlib.blake2b(key.encode(), digest_size=16).hexdigest()


def json_bytes(doc: object) -> bytes:
    """``orjson.dumps(doc)`` in bytes of its own size, for a document that is kept.

    orjson 3.12 and later return bytes whose buffer stays at least 4 KB (it sets the length
    and never shrinks the allocation): 10,000 queued aggregates of 250 bytes held 40 MB.
    The copy costs about 0.13 µs.
    """
    return memoryview(orjson.dumps(doc)).tobytes()


def kind_of(record: Record) -> str:
    if isinstance(record, Reading):
        return "reading"
    if isinstance(record, Aggregate):
        return "aggregate"
    if isinstance(record, Message):
        return record.kind
    return "alert"


def encode(record: Record, msg_id: str, gateway: str, pipeline: str) -> bytes:
    """Serialize one record as its upstream JSON document."""
    if isinstance(record, Reading):
        doc: dict[str, object] = {
            "id": msg_id,
            "v": SCHEMA_VERSION,
            "kind": "reading",
            "gateway": gateway,
            "pipeline": pipeline,
            "source": record.source,
            "device": record.device,
            "metric": record.metric,
            "ts": record.ts,
            "value": record.value,
            "seq": record.seq,
        }
    elif isinstance(record, Aggregate):
        doc = {
            "id": msg_id,
            "v": SCHEMA_VERSION,
            "kind": "aggregate",
            "gateway": gateway,
            "pipeline": record.pipeline,
            "step": record.step,
            "device": record.device,
            "metric": record.metric,
            "start": record.start,
            "end": record.end,
            "count": record.count,
            "stats": record.stats,
        }
    elif isinstance(record, Message):
        doc = {
            **record.body,
            "id": msg_id,
            "v": SCHEMA_VERSION,
            "kind": record.kind,
            "gateway": gateway,
            "pipeline": record.pipeline,
            "step": record.step,
            "device": record.device,
            "metric": record.metric,
            "ts": record.ts,
        }
    else:
        assert isinstance(record, Alert)
        doc = {
            "id": msg_id,
            "v": SCHEMA_VERSION,
            "kind": "alert",
            "gateway": gateway,
            "pipeline": record.pipeline,
            "step": record.step,
            "device": record.device,
            "metric": record.metric,
            "detector": record.kind,
            "state": record.state,
            "severity": record.severity,
            "ts": record.ts,
            "value": record.value,
            "threshold": record.threshold,
            "message": record.message,
            "score": record.score,
            "evidence": record.evidence,
        }
    return json_bytes(doc)
