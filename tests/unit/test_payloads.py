"""The upstream documents as the outbox keeps them."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable

import orjson

from gateway.model import Aggregate
from gateway.sinks import payloads
from gateway.sinks.payloads import encode, json_bytes


def _held(make: Callable[[], bytes]) -> tuple[bytes, int]:
    """What ``make()`` returns, and the bytes that the payloads module still holds for it."""
    tracemalloc.start()
    try:
        result = make()
        snapshot = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    mine = snapshot.filter_traces([tracemalloc.Filter(True, payloads.__file__)])
    return result, sum(stat.size for stat in mine.statistics("filename"))


def test_a_queued_aggregate_holds_its_own_size_not_the_encoders_buffer() -> None:
    agg = Aggregate("stats", "window", "dev-1", "temp", 0.0, 10.0, 2, {"mean": 1.5, "max": 2.0})
    payload, held = _held(lambda: encode(agg, "boot-1", "gw", "stats"))
    assert orjson.loads(payload)["stats"] == {"mean": 1.5, "max": 2.0}
    # 10,000 aggregates wait in the outbox after each window: at orjson's 4 KB a document
    # they held 40 MB.
    assert len(payload) <= held < len(payload) + 64


def test_json_bytes_is_orjson_output() -> None:
    doc = {"device": "d", "values": [1, 2.5, None], "nested": {"ok": True}}
    assert json_bytes(doc) == orjson.dumps(doc)
