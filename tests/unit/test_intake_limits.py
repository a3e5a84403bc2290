"""Input limits at intake: metrics per message, device id pattern, device cardinality cap.
A real store on a real file; every refusal is counted and dead-lettered."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.config.limits import LimitsConfig
from gateway.counters import Counters
from gateway.intake import Intake
from gateway.model import Reading
from gateway.store.config import StoreConfig
from gateway.store.store import Store


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with Store(StoreConfig(path=tmp_path / "gw.db"), Counters()) as s:
        yield s


def r(device: str, metric: str = "t", value: float = 1.0) -> Reading:
    return Reading("fleet", device, metric, value, 1_700_000_000.0)


async def first_dead_letter(store: Store, reason: str) -> dict[str, Any]:
    """The detail and raw bytes of the first dead letter kept for ``reason``."""
    [row] = await store.query(
        "SELECT detail, raw FROM dead_letters WHERE reason = ? ORDER BY rowid LIMIT 1", (reason,)
    )
    return row


async def test_device_cardinality_cap_rejects_new_devices_keeps_known_ones(store: Store) -> None:
    counters, seen = Counters(), []
    intake = Intake(
        store, {"fleet": [seen.append]}, counters, lambda: 0.0, limits=LimitsConfig(max_devices=3)
    )
    for i in range(1000):  # a rogue publisher inventing a device id per message
        intake.accept([r(f"rogue-{i}")])
    intake.accept([r("rogue-0", value=2.0)])  # an accepted device keeps flowing
    intake.accept([r("rogue-1"), r("rogue-5000"), r("rogue-2")])  # mixed: only the new one goes
    await store.flush()
    assert [x.device for x in seen] == [
        "rogue-0",
        "rogue-1",
        "rogue-2",
        "rogue-0",
        "rogue-1",
        "rogue-2",
    ]
    assert counters.get("fleet", "rejected_too_many_devices") == 998
    assert counters.get("fleet", "readings") == 6
    assert counters.get("fleet", "messages") == 1002
    [row] = await store.query("SELECT count(DISTINCT device) AS n FROM readings")
    assert row["n"] == 3
    dead = await first_dead_letter(store, "too_many_devices")
    assert "max_devices=3" in dead["detail"]
    assert b"rogue-3" in dead["raw"]


async def test_series_cap_rejects_invented_metric_names_keeps_known_series(store: Store) -> None:
    counters, seen = Counters(), []
    intake = Intake(
        store, {"fleet": [seen.append]}, counters, lambda: 0.0, limits=LimitsConfig(max_series=3)
    )
    intake.accept([r("pump-1", "temp"), r("pump-1", "flow")])
    for i in range(500):  # firmware putting a counter into its JSON keys
        intake.accept([r("pump-1", f"temp_{i}")])
    intake.accept([r("pump-1", "temp", 2.0), r("pump-1", "rpm"), r("pump-2", "temp")])
    intake.accept([r("pump-1", "rpm", 3.0)])
    await store.flush()
    assert [(x.device, x.metric) for x in seen] == [
        ("pump-1", "temp"),
        ("pump-1", "flow"),
        ("pump-1", "temp_0"),
        ("pump-1", "temp"),  # a known series goes on; the new ones around it are refused
    ]
    assert counters.get("fleet", "rejected_too_many_series") == 499 + 2 + 1
    [row] = await store.query("SELECT count(*) AS n FROM readings")
    assert row["n"] == 4
    dead = await first_dead_letter(store, "too_many_series")
    assert "max_series=3" in dead["detail"]
    assert b"temp_1" in dead["raw"]


async def test_a_metric_named_like_part_of_a_known_one_is_a_new_series(store: Store) -> None:
    counters, seen = Counters(), []
    intake = Intake(
        store, {"fleet": [seen.append]}, counters, lambda: 0.0, limits=LimitsConfig(max_series=2)
    )
    intake.accept([r("pump-1", "temperature")])
    intake.accept([r("pump-1", "temp")])  # not the same series, though a part of its name
    intake.accept([r("pump-1", "t")])  # a third series: beyond the cap
    intake.accept([r("pump-1", "temp", 2.0), r("pump-1", "temperature", 3.0)])
    await store.flush()
    assert [x.metric for x in seen] == ["temperature", "temp", "temp", "temperature"]
    assert counters.get("fleet", "rejected_too_many_series") == 1


async def test_too_many_metrics_in_one_message_is_rejected_whole(store: Store) -> None:
    counters = Counters()
    intake = Intake(
        store, {}, counters, lambda: 0.0, limits=LimitsConfig(max_metrics_per_message=4)
    )
    intake.accept([r("p1", f"m{i}") for i in range(4)])
    intake.accept([r("p1", f"m{i}") for i in range(5)])
    await store.flush()
    assert counters.get("fleet", "readings") == 4
    assert counters.get("fleet", "rejected_too_many_metrics") == 1
    [row] = await store.query("SELECT count(*) AS n FROM readings")
    assert row["n"] == 4


@pytest.mark.parametrize(
    "device", ["../etc", "dev ice", "dev\x00ice", "-leading-dash", "a" * 129, "déjà", "$SYS"]
)
async def test_device_ids_outside_the_pattern_are_rejected(store: Store, device: str) -> None:
    counters = Counters()
    intake = Intake(store, {}, counters, lambda: 0.0)
    intake.accept([r(device), r("pump-1")])
    await store.flush()
    assert counters.get("fleet", "rejected_bad_device") == 1
    assert counters.get("fleet", "readings") == 1
    [row] = await store.query("SELECT device FROM readings")
    assert row["device"] == "pump-1"


async def test_limits_apply_on_reload_and_known_devices_stay(store: Store) -> None:
    counters = Counters()
    intake = Intake(store, {}, counters, lambda: 0.0, limits=LimitsConfig(max_devices=2))
    intake.accept([r("a")])
    intake.accept([r("b")])
    intake.set_limits(LimitsConfig(max_devices=1))
    intake.accept([r("a"), r("b"), r("c")])
    assert counters.get("fleet", "readings") == 4
    assert counters.get("fleet", "rejected_too_many_devices") == 1
