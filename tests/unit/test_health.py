"""The progress check behind the watchdog and /readyz, on a real store, with a fake clock."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.counters import Counters
from gateway.health import Monitor, watch
from gateway.model import Reading
from gateway.sinks.memory_outbox import MemoryOutbox
from gateway.sinks.resilience import BreakerState
from gateway.store.config import StoreConfig
from gateway.store.store import Store
from gateway.systemd import Notifier

STALL_AFTER = 60.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def counters() -> Counters:
    return Counters()


@pytest.fixture
async def store(tmp_path: Path, counters: Counters) -> AsyncIterator[Store]:
    # The store is open but its flusher (``run``) is not running: nothing gets committed
    # unless a test flushes, which is exactly a stalled writer.
    async with Store(StoreConfig(path=tmp_path / "gw.db"), counters) as s:
        yield s


def reading(i: int) -> Reading:
    return Reading("fleet", "p1", "t", 1.0, 1_700_000_000.0 + i, i)


async def test_a_store_that_stops_committing_stalls_then_recovers(
    store: Store, counters: Counters
) -> None:
    clock = Clock()
    monitor = Monitor(store, dict, counters, stall_after=STALL_AFTER, clock=clock)
    assert (await monitor.check()).alive
    store.add_readings([reading(1)])
    clock.now += STALL_AFTER - 1
    verdict = await monitor.check()
    assert verdict.alive
    assert verdict.store_pending == 1
    clock.now += 2
    verdict = await monitor.check()
    assert verdict.stalled == ["store"]
    assert monitor.ready(10)[0] is False
    await store.flush()  # the writer commits again
    clock.now += 1
    assert (await monitor.check()).alive


async def test_a_sink_stalls_only_when_rows_wait_and_nothing_moves(
    store: Store, counters: Counters
) -> None:
    clock = Clock()
    breaker = {"up": (BreakerState.CLOSED, 0)}
    monitor = Monitor(store, lambda: breaker, counters, stall_after=STALL_AFTER, clock=clock)
    store.add_outbox("up", "m1", "t", b"{}", 1)
    await store.flush()
    await monitor.check()
    # Acks keep it alive even with rows waiting.
    for _ in range(3):
        clock.now += STALL_AFTER
        counters.inc("up", "acked")
        verdict = await monitor.check()
        assert verdict.alive, verdict
        assert verdict.sinks["up"].depth == 1
    # Retrying (failures counted) is progress too: the sink is trying.
    clock.now += STALL_AFTER
    counters.inc("up", "failures")
    breaker["up"] = (BreakerState.CLOSED, 1)
    assert (await monitor.check()).alive
    # The breaker deliberately open while the upstream is down: not a stall...
    breaker["up"] = (BreakerState.OPEN, 5)
    clock.now += 10 * STALL_AFTER
    verdict = await monitor.check()
    assert verdict.alive
    ok, body = monitor.ready(max_outbox=1)
    assert not ok
    assert body["sinks"]["up"]["connected"] is False
    assert monitor.ready(max_outbox=100)[0]  # below the threshold: still ready
    # ... but rows waiting, breaker closed and nothing moving for stall_after is.
    breaker["up"] = (BreakerState.CLOSED, 0)
    clock.now += 1
    await monitor.check()
    clock.now += STALL_AFTER + 1
    assert (await monitor.check()).stalled == ["sink:up"]


async def test_watchdog_pings_stop_while_stalled_and_resume(
    store: Store, counters: Counters, tmp_path: Path
) -> None:
    manager = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    manager.bind(str(tmp_path / "notify.sock"))
    manager.setblocking(False)
    notifier = Notifier(str(tmp_path / "notify.sock"))
    clock = Clock()
    monitor = Monitor(store, dict, counters, stall_after=STALL_AFTER, clock=clock)
    loop = asyncio.get_running_loop()

    async def next_ping(within: float) -> bytes:
        return await asyncio.wait_for(loop.sock_recv(manager, 100), within)

    task = asyncio.create_task(watch(monitor, 0.01, lambda _v: notifier.watchdog()))
    try:
        assert await next_ping(5) == b"WATCHDOG=1"
        store.add_readings([reading(1)])
        clock.now += STALL_AFTER + 1
        await asyncio.sleep(0.05)  # let the check see the stall, then drop what was sent
        while True:
            try:
                manager.recv(100)
            except BlockingIOError:
                break
        with pytest.raises(TimeoutError):
            await next_ping(0.5)
        await store.flush()
        assert await next_ping(5) == b"WATCHDOG=1"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        notifier.close()
        manager.close()


async def test_a_memory_outbox_reports_the_age_of_its_oldest_row(
    store: Store, counters: Counters
) -> None:
    """As the SQLite outbox does through ``created``: an uplink down for minutes shows."""
    mono = Clock()
    memory = MemoryOutbox("up", store, counters, max_rows=100, monotonic=mono)
    await memory.open()
    monitor = Monitor(
        store, lambda: {"up": (BreakerState.OPEN, 5)}, counters, stall_after=STALL_AFTER
    )
    store.add_outbox("up", "m1", "t", b"{}", 1)
    await asyncio.sleep(0)  # handed over: its time noted
    mono.now += 90.0
    verdict = await monitor.check()
    assert verdict.sinks["up"].depth == 1
    assert verdict.sinks["up"].oldest_age == pytest.approx(90.0, abs=0.5)
    assert monitor.ready(max_outbox=100)[1]["sinks"]["up"]["oldest_age_s"] == pytest.approx(
        90.0, abs=0.5
    )
