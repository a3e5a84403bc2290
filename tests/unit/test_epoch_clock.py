"""epoch_clock: the cheap per-reading clock tells the time epoch_seconds tells."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import pytest
from reactivex.scheduler import HistoricalScheduler
from reactivex.scheduler.eventloop import AsyncIOScheduler
from reactivex.testing import TestScheduler

from gateway.pipeline.context import epoch_clock, epoch_seconds, timer_clock
from gateway.replay import ReplayScheduler


def test_the_replay_clock_follows_advances_and_the_timers_it_runs() -> None:
    scheduler = ReplayScheduler(datetime.fromtimestamp(1_700_000_000.5, UTC))
    clock = epoch_clock(scheduler)
    seen: list[tuple[float, float]] = []
    scheduler.schedule_relative(2.25, lambda *_: seen.append((clock(), epoch_seconds(scheduler))))
    assert clock() == epoch_seconds(scheduler) == 1_700_000_000.5
    scheduler.advance_to(datetime.fromtimestamp(1_700_000_010.0, UTC))
    assert seen == [(1_700_000_002.75, 1_700_000_002.75)]  # the timer ran at its own time
    assert clock() == epoch_seconds(scheduler) == 1_700_000_010.0


@pytest.mark.parametrize("make", [TestScheduler, lambda: HistoricalScheduler(datetime.now(UTC))])
def test_other_virtual_clocks_are_read_through_now(make: type) -> None:
    scheduler = make()
    clock = epoch_clock(scheduler)
    scheduler.advance_by(210.0)
    assert clock() == epoch_seconds(scheduler)


async def test_the_asyncio_scheduler_is_the_wall_clock() -> None:
    scheduler = AsyncIOScheduler(asyncio.get_running_loop())
    before = epoch_seconds(scheduler)
    now = epoch_clock(scheduler)()
    assert before <= now <= epoch_seconds(scheduler)


async def test_deadlines_on_the_asyncio_scheduler_run_by_the_monotonic_clock() -> None:
    """The clock asyncio's timers run by: setting the wall clock moves no deadline."""
    scheduler = AsyncIOScheduler(asyncio.get_running_loop())
    clock = timer_clock(scheduler)
    assert clock is time.monotonic
    assert abs(clock() - asyncio.get_running_loop().time()) < 1.0


def test_deadlines_on_a_virtual_scheduler_run_by_its_virtual_time() -> None:
    scheduler = ReplayScheduler(datetime.fromtimestamp(1_700_000_000.5, UTC))
    assert timer_clock(scheduler)() == 1_700_000_000.5
    test = TestScheduler()
    test.advance_by(210.0)
    assert timer_clock(test)() == epoch_seconds(test) == 210.0
