"""The headline promise of event time: replaying what the gateway recorded gives what it
computed live, window for window and alert for alert."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from simulators.mqtt_fleet import run_fleet
from simulators.signals import parse_fault
from tests.conftest import Broker
from tests.integration.harness import GatewayProcess, gateway_config, wait_until

pytestmark = pytest.mark.integration


def test_replay_from_store_reproduces_the_live_windows_and_alerts(
    tmp_path: Path, broker: Broker, upstream_broker: Broker
) -> None:
    source = {
        "id": "fleet",
        "type": "mqtt",
        "broker": {"host": "127.0.0.1", "port": broker.port},
        "topics": ["sensors/{device}/{metric}"],
        "format": {"type": "json"},
    }
    pipelines = [
        {
            "id": "stats",
            "from": ["fleet"],
            "steps": [
                {"window": {"size": "1s", "lateness": "500ms", "aggregates": ["count", "mean"]}}
            ],
            "to": ["upstream"],
            "forward": ["aggregates"],
        },
        {
            "id": "faults",
            "from": ["fleet"],
            "steps": [
                {"stuck": {"count": 20}},
                {"spike": {"window": 30, "limit": 8, "min_count": 20}},
            ],
            "to": ["upstream"],
            "forward": ["alerts"],
        },
    ]
    config = gateway_config(
        tmp_path, sources=[source], pipelines=pipelines, upstream_port=upstream_broker.port
    )
    gw = GatewayProcess(tmp_path, config)
    gw.start()
    sent = run_fleet(
        broker.host,
        broker.port,
        devices=4,
        duration=6.0,
        rate=200,
        faults=[
            parse_fault("stuck:device=dev-2,at=2s,for=2s"),
            parse_fault("spike:device=dev-3,prob=0.02,mag=30"),
        ],
    )
    # Readings published before the gateway's subscription took hold are not the point
    # here: compare against what the gateway stored and computed, once the flow has settled.
    wait_until(lambda: gw.count("readings") > sent.sent // 2, 30, "readings stored")
    last = {"count": -1, "since": time.monotonic()}

    def unchanged() -> bool:
        now = gw.count("readings")
        if now != last["count"]:
            last.update(count=now, since=time.monotonic())
        return now >= sent.sent or time.monotonic() - last["since"] > 1.0

    wait_until(unchanged, 30, "the readings to settle")
    stored = gw.count("readings")
    assert gw.stop() == 0

    live_aggregates = {
        (d, m, start, n, round(json.loads(stats)["mean"], 9))
        for d, m, start, n, stats in gw.query(
            'SELECT device, metric, "start", count, stats FROM aggregates'
        )
    }
    live_alerts = set(gw.query("SELECT step, device, metric, state, ts FROM alerts"))
    assert live_aggregates
    assert any(step == "0:stuck" for step, *_ in live_alerts)

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "replay",
            "-c",
            str(gw.config_path),
            "--from-store",
            str(gw.db_path),
        ],
        capture_output=True,
        timeout=60,
        check=True,
    )
    payloads = [json.loads(line)["payload"] for line in proc.stdout.splitlines()]
    replay_aggregates = {
        (p["device"], p["metric"], p["start"], p["count"], round(p["stats"]["mean"], 9))
        for p in payloads
        if p["kind"] == "aggregate"
    }
    replay_alerts = {
        (p["step"], p["device"], p["metric"], p["state"], p["ts"])
        for p in payloads
        if p["kind"] == "alert"
    }
    assert replay_aggregates == live_aggregates
    assert replay_alerts == live_alerts
    assert sum(a[3] for a in replay_aggregates) == stored
