"""The memory tool measures the full pipeline's state per device+metric, by heap or by RSS."""

from __future__ import annotations

import re

import pytest

from gateway.tools import mem_per_key


def test_readings_cycle_through_the_devices_one_interval_apart() -> None:
    fed = list(mem_per_key.readings(devices=3, per_device=2, interval=300.0))
    assert [r.device for r in fed] == ["dev-00000", "dev-00001", "dev-00002"] * 2
    assert fed[3].ts - fed[0].ts == 300.0


@pytest.mark.parametrize("mode", [[], ["--rss"]])
def test_it_prints_the_bytes_per_device_metric(
    mode: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert mem_per_key.main([*mode, "--devices", "50", "--readings", "3"]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert line.startswith("50 devices x 3 readings, 1s apart:")
    assert re.search(r"[\d,]+ bytes per device\+metric", line)
