"""``edge-gateway bench --quick`` runs every scenario end to end and writes the JSON shape
users and later changes rely on. Figures are not checked here: they are measurements."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import MOSQUITTO

REQUIRED = {"name", "readings_per_s", "ratio_to_ceiling", "p50_ms", "p99_ms", "cpu_pct", "rss_mb"}


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_quick_bench_measures_every_scenario_and_writes_json(tmp_path: Path) -> None:
    if not Path(MOSQUITTO).exists():
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "bench", "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "readings/s" in proc.stdout  # the table

    results = json.loads(out.read_text())
    assert isinstance(results, list)
    by_name = {r["name"]: r for r in results}
    for r in results:
        assert r.keys() >= REQUIRED, r
        assert not any(n.startswith("failed") for n in r["notes"]), r

    measured = [
        "ceiling: paho subscribe q0",
        "ceiling: paho forward q0",
        "ceiling: paho forward q1",
        "gateway: forward q0",
        "gateway: forward q1",
        "gateway: forward q0, memory outbox",
        "gateway: forward q1, memory outbox",
        "gateway: full, sync normal",
        "gateway: full, sync FULL",
        "gateway: serial pty",
    ]
    for name in measured:
        assert by_name[name]["readings_per_s"] > 0, by_name[name]
        assert by_name[name]["rss_mb"] > 0, by_name[name]
    for name in measured[3:]:
        assert by_name[name]["ratio_to_ceiling"] > 0, by_name[name]
    forwarded = ("gateway: forward q0", "gateway: forward q1", "ceiling: paho forward q0")
    for name in (*forwarded, "gateway: forward q0, memory outbox"):
        assert 0 < by_name[name]["p50_ms"] <= by_name[name]["p99_ms"], by_name[name]
    full = by_name["gateway: full, sync normal"]
    assert full["rss_10k_devices_mb"] > 0
    assert any(n.startswith("delivered: all aggregates") for n in full["notes"]), full

    for name in ("replay: window aggregate", "replay: default detector"):
        r = by_name[name]
        assert r["readings_per_s"] is not None or any("skipped" in n for n in r["notes"]), r

    micro = [r for r in results if r["kind"] == "micro"]
    assert {"Rx step: window 10s", "Rx step: filter"} <= {r["name"][7:] for r in micro}
    assert all(r["us_per_reading"] >= 0 for r in micro)


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_soak_samples_rss_and_reports_its_slope_and_final_value(tmp_path: Path) -> None:
    if not Path(MOSQUITTO).exists():
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    out = tmp_path / "soak.json"
    cmd = [sys.executable, "-m", "gateway.cli", "bench", "--quick", "--only", "soak"]
    cmd += ["--soak", "4", "--soak-rate", "500", "--json", str(out)]
    cmd += ["--soak-devices", "20", "--soak-fill", "50"]  # 50 readings per device first
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=100, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "MB/hour" in proc.stdout

    (soak,) = json.loads(out.read_text())
    assert soak["name"] == "gateway: soak, full pipeline"
    assert soak["readings_per_s"] == 500
    assert len(soak["steps"]) >= 3  # one RSS sample a second
    assert soak["rss_final_mb"] == soak["steps"][-1]["rss_mb"] > 0
    assert soak["steps"][0]["behind"] >= 0  # readings not stored yet, every 10 samples
    assert isinstance(soak["rss_slope_mb_per_hour"], float)
    assert not any(n.startswith(("failed", "lost")) for n in soak["notes"]), soak["notes"]
    assert any(n.startswith("filled first: 50 readings per device (1000 ") for n in soak["notes"])
    (trend,) = [n for n in soak["notes"] if "MB/hour" in n]
    per_device = int(trend.split(" per device")[0].rsplit(" ", 1)[1])
    assert "(20 devices" in trend
    assert per_device >= 50 + 4 * 500 // 20 - 1, trend
