"""Property: the outbox behaves like per-sink FIFO queues, across flushes, acks and restarts;
a row is in it from the moment it is added, committed or not."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.counters import Counters
from gateway.store.config import StoreConfig
from gateway.store.store import Store

SINKS = ("a", "b")

Op = tuple[Any, ...]

ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.sampled_from(SINKS), st.integers(1, 3)),
        st.tuples(st.just("flush")),
        st.tuples(
            st.just("take"),
            st.sampled_from(SINKS),
            st.integers(1, 3),
            st.lists(st.booleans(), min_size=3, max_size=3).map(tuple),
        ),
        st.tuples(st.just("reopen")),
    ),
    max_size=20,
)


async def check(path: Path, script: list[Op]) -> None:
    config = StoreConfig(path=path)
    queues: dict[str, list[tuple[str, int]]] = {s: [] for s in SINKS}  # (msg_id, attempts)
    serial = 0
    store = Store(config, Counters())
    await store.open()
    try:
        for op in script:
            if op[0] == "add":
                _, sink, n = op
                for _ in range(n):
                    serial += 1
                    store.add_outbox(sink, f"m{serial}", f"t/{sink}", str(serial).encode(), 1)
                    queues[sink].append((f"m{serial}", 0))
            elif op[0] in ("flush", "reopen"):
                if op[0] == "flush":
                    await store.flush()
                else:  # close() flushes too; the new store sees exactly what was committed
                    await store.close()
                    store = Store(config, Counters())
                    await store.open()
            else:
                _, sink, limit, acks = op
                queue = queues[sink]
                rows = await store.outbox_take(sink, limit)
                expected = queue[:limit]
                assert [(r.msg_id, r.attempts) for r in rows] == expected
                assert [r.payload for r in rows] == [m[1:].encode() for m, _ in expected]
                outcome = list(zip(rows, acks, strict=False))
                await store.outbox_ack([r.id for r, ok in outcome if ok])
                await store.outbox_failed([r.id for r, ok in outcome if not ok])
                # acked rows leave; failed ones stay, in place, one attempt more
                queue[: len(rows)] = [(r.msg_id, r.attempts + 1) for r, ok in outcome if not ok]
            for sink in SINKS:  # after every step, the whole outbox matches the model
                everything = await store.outbox_take(sink, 1000)
                assert [(r.msg_id, r.attempts) for r in everything] == queues[sink]
        for sink in SINKS:
            assert await store.outbox_depth(sink) == len(queues[sink])
        assert await store.outbox_depth() == sum(map(len, queues.values()))
    finally:
        await store.close()


@settings(max_examples=100, deadline=None)
@given(ops)
def test_outbox_is_a_durable_fifo_per_sink(script: list[Op]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(check(Path(tmp) / "gw.db", script))
