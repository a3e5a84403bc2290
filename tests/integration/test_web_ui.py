"""The live page in a real headless Chromium, while the simulated fleet runs.

simulators (MQTT fleet, one device overheating) -> mosquitto -> gateway (web UI on) ->
Chromium: the page is opened before the fleet starts, so the cards, their values and the
alert can only arrive live, without a reload; a screenshot is saved (the test's tmp dir
and ``artifacts/web-ui.png``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from simulators.mqtt_fleet import run_fleet
from tests.conftest import Broker, free_port
from tests.integration.harness import GatewayProcess, gateway_config, wait_until

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
HOT = "dev-002"


@pytest.fixture
def chromium() -> str:
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run installs it)")
    pytest.importorskip("playwright", reason="playwright is not installed (pip install playwright)")
    return CHROMIUM


@pytest.fixture
def start_fleet(broker: Broker, tmp_path: Path) -> Iterator[Callable[[], None]]:
    """3 devices x 2 metrics at 30 readings/s; dev-002's temperature climbs past 30 °C."""
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> None:
        with open(tmp_path / "fleet.log", "ab") as log:
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable, "-m", "simulators", "mqtt",
                        "--port", str(broker.port), "--devices", "3",
                        "--metrics", "temperature,humidity", "--rate", "30", "--duration", "5m",
                        "--bad-every", "100",
                        "--fault", f"drift:device={HOT},metric=temperature,at=3s,rate=14400",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )  # fmt: skip

    yield start
    for proc in procs:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def web_gateway(tmp_path: Path, broker: Broker, upstream: Broker) -> GatewayProcess:
    config: dict[str, Any] = gateway_config(
        tmp_path,
        sources=[
            {
                "id": "fleet",
                "type": "mqtt",
                "broker": {"host": "127.0.0.1", "port": broker.port},
                "topics": ["sensors/{device}/{metric}"],
            }
        ],
        pipelines=[
            {
                "id": "overheat",
                "from": ["fleet"],
                "steps": [
                    {"filter": "metric == 'temperature'"},
                    {"threshold": {"above": 30, "for": "1s", "severity": "critical"}},
                ],
                "to": ["upstream"],
                "forward": ["alerts"],
            }
        ],
        upstream_port=upstream.port,
    )
    config["web"] = {"enabled": True, "port": free_port(), "updates_per_second": 4}
    return GatewayProcess(tmp_path, config)


def test_live_page_shows_values_and_the_injected_alert(
    tmp_path: Path,
    chromium: str,
    broker: Broker,
    upstream_broker: Broker,
    start_fleet: Callable[[], None],
) -> None:
    from playwright.sync_api import expect, sync_playwright

    gw = web_gateway(tmp_path, broker, upstream_broker)
    gw.start()
    gw.wait_log("web UI on")
    url = re.findall(r"web UI on (\S+)", gw.log())[-1]
    shot = tmp_path / "web-ui.png"
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(url)
            expect(page.locator("#conn")).to_have_text("live", timeout=15_000)
            expect(page.locator("#devices")).to_have_text("no readings yet")
            start_fleet()  # everything from here on reaches the open page live

            # one card per device, each metric with a number taken from the store
            cards = page.locator("article.card")
            expect(cards).to_have_count(3, timeout=15_000)
            cool = page.locator('.card[data-device="dev-001"] .metric[data-metric="temperature"]')
            expect(cool.locator(".value")).to_have_text(re.compile(r"^-?\d+\.\d+$"), timeout=15_000)
            shown = float(cool.locator(".value").inner_text())
            # The page gets readings live, as they pass the pipeline; the store commits them
            # within its eager interval, so the value shown may be committed a moment later.

            def stored_as_shown() -> bool:
                stored = gw.query(
                    "SELECT value FROM readings WHERE device = 'dev-001' AND metric = 'temperature'"
                )
                return any(abs(v - shown) <= 0.05 for (v,) in stored)

            wait_until(stored_as_shown, 10, f"the shown value {shown} in the store")

            # live: the value changes without a reload; the sparkline has points
            page.wait_for_function(
                "([sel, old]) => document.querySelector(sel).textContent !== old",
                arg=[
                    '.card[data-device="dev-001"] .metric[data-metric="humidity"] .value',
                    page.locator(
                        '.card[data-device="dev-001"] .metric[data-metric="humidity"] .value'
                    ).inner_text(),
                ],
                timeout=15_000,
            )
            points = cool.locator("polyline").get_attribute("points") or ""
            assert len(points.split()) >= 2

            # the injected fault raises the alert: card, feed
            hot = page.locator(f'.card[data-device="{HOT}"]')
            expect(hot).to_have_class(re.compile(r"\balerting\b"), timeout=40_000)
            expect(hot.locator(".badge")).to_have_text("critical")
            expect(page.locator("#alerts li.raised").first).to_contain_text(HOT)
            expect(page.locator('.card[data-device="dev-001"]')).not_to_have_class(
                re.compile(r"\balerting\b")
            )

            # health: the source with its rejected input, the sink and its breaker
            expect(page.locator("#sources tbody tr").first).to_contain_text("fleet", timeout=5_000)
            expect(page.locator("#sinks tbody tr").first).to_contain_text("closed")
            page.wait_for_function(  # a few more live points, for a telling screenshot
                "document.querySelector('.card .metric polyline').getAttribute('points')"
                ".split(' ').length >= 20",
                timeout=15_000,
            )
            page.screenshot(path=str(shot), full_page=True)
            browser.close()
        assert errors == []
    finally:
        print("alerts in the store:", gw.query("SELECT device, state, ts, message FROM alerts"))
        if shot.exists():
            ARTIFACTS.mkdir(exist_ok=True)
            shutil.copy(shot, ARTIFACTS / shot.name)
        assert gw.stop() == 0, gw.log()
    assert (
        gw.query("SELECT count(*) FROM alerts WHERE device = ? AND state = 'raised'", (HOT,))[0][0]
        >= 1
    )


def test_a_busy_web_port_is_logged_and_the_gateway_runs_on(
    tmp_path: Path,
    broker: Broker,
    upstream_broker: Broker,
    start_fleet: Callable[[], None],
) -> None:
    gw = web_gateway(tmp_path, broker, upstream_broker)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", gw_web_port(gw)))
        taken.listen()
        gw.start()
        try:
            gw.wait_log("web UI cannot listen")
            start_fleet()
            wait_until(lambda: gw.count("readings") >= 30, 30, "readings stored")
        finally:
            assert gw.stop() == 0, gw.log()


def gw_web_port(gw: GatewayProcess) -> int:
    return int(yaml.safe_load(gw.config_path.read_text())["web"]["port"])


def scrape(base: str) -> str:
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as response:
        return str(response.read().decode())


def test_health_and_metrics_follow_a_reload_that_changes_sources_and_sinks(
    tmp_path: Path, broker: Broker, upstream_broker: Broker
) -> None:
    def health() -> dict[str, Any]:
        with urllib.request.urlopen(f"{url}api/health", timeout=10) as response:
            doc: dict[str, Any] = json.loads(response.read())
            return doc

    def ids(doc: dict[str, Any], part: str) -> list[str]:
        return sorted(item["id"] for item in doc[part])

    gw = web_gateway(tmp_path, broker, upstream_broker)
    gw.start()
    assert gw.proc is not None
    try:
        gw.wait_log("web UI on")
        url = re.findall(r"web UI on (\S+)", gw.log())[-1]
        before = health()
        assert (ids(before, "sources"), ids(before, "sinks")) == (["fleet"], ["upstream"])
        # Reload: the sink is replaced by one under a new id, and a second source comes in.
        config = yaml.safe_load(gw.config_path.read_text())
        config["sinks"][0]["id"] = "cloud"
        config["pipelines"][0]["to"] = ["cloud"]
        config["sources"].append({**config["sources"][0], "id": "yard"})
        gw.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        os.kill(gw.proc.pid, signal.SIGHUP)
        gw.wait_log("reloaded: sources yard; pipelines overheat; sinks cloud, upstream")
        after = health()
        assert (ids(after, "sources"), ids(after, "sinks")) == (["fleet", "yard"], ["cloud"])
        # The metrics know the new source too: it shares the topics, so it gets every message.
        metrics = re.findall(r"metrics: (http://\S+)/metrics", gw.log())[-1]
        wait_until(lambda: "source yard: subscribed" in gw.log(), 20, "yard to subscribe")
        run_fleet(broker.host, broker.port, devices=1, count=5, rate=100)
        wait_until(
            lambda: 'edge_gateway_source_received_total{source="yard"} 5.0' in scrape(metrics),
            20,
            "yard's five messages in /metrics",
        )
    finally:
        assert gw.stop() == 0, gw.log()
