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


def test_a_window_tail_gives_about_the_same_bytes_per_device_metric(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The window pipeline's state is its latest readings' window: its last few will do."""
    args = ["--devices", "100", "--readings", "40", "--interval", "300"]
    per_key = []
    for tail in ([], ["--window-tail", "10"]):
        assert mem_per_key.main([*args, *tail]) == 0
        found = re.search(r"([\d,]+) bytes per device\+metric", capsys.readouterr().out)
        assert found is not None
        per_key.append(int(found[1].replace(",", "")))
    assert per_key[0] > 1_000  # the pipelines' state is held while it is measured
    assert per_key[1] == pytest.approx(per_key[0], rel=0.1)
