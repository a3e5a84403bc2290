"""The fault suite: real processes, real brokers, reconciled by sequence numbers.

Each test ends with a :class:`~tests.faults.support.Tally`: sent, stored, delivered upstream,
duplicates upstream, dropped by policy and lost, which must be 0.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from simulators.mqtt_fleet import FleetSummary, run_fleet
from simulators.serial_device import SerialDevice, run_serial
from tests.conftest import Broker
from tests.faults.blackhole import BlackholeProxy
from tests.faults.support import (
    OUTAGE_S,
    FaultCollector,
    Gateway,
    dropped_by_policy,
    faults_config,
    fleet_source,
    reconcile,
    rss_mb,
    sent_keys,
    wait_stored,
)
from tests.integration.harness import wait_until

pytestmark = pytest.mark.integration


class Fleet:
    """``run_fleet`` in a thread; ``summary`` once it finished."""

    def __init__(self, broker: Broker, **kwargs: object) -> None:
        self.summary: FleetSummary | None = None
        self.stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(broker, kwargs), daemon=True)
        self._thread.start()

    def _run(self, broker: Broker, kwargs: dict[str, object]) -> None:
        self.summary = run_fleet(broker.host, broker.port, stop=self.stop, **kwargs)  # type: ignore[arg-type]

    def running(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float) -> FleetSummary:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the fleet did not finish"
        assert self.summary is not None, "the fleet failed (see the captured log)"
        return self.summary


def start(tmp_path: Path, local: Broker, cloud: Broker) -> tuple[Gateway, FaultCollector]:
    config = faults_config(tmp_path, sources=[fleet_source(local.port)], upstream_port=cloud.port)
    gw = Gateway(tmp_path, config)
    gw.start()
    gw.wait_subscribed()
    return gw, FaultCollector(cloud.host, cloud.port)


def test_kill_9_three_times_during_20000_readings(
    tmp_path: Path, local_broker: Broker, cloud_broker: Broker
) -> None:
    gw, collector = start(tmp_path, local_broker, cloud_broker)
    try:
        fleet = Fleet(local_broker, devices=20, count=20_000, rate=2000, max_inflight=1000)
        for n, at in enumerate((4000, 9000, 14000), start=2):
            wait_stored(gw, at, 60)
            gw.kill9()
            time.sleep(0.3)  # the broker queues for the session meanwhile
            gw.start()
            gw.wait_subscribed(n)
        summary = fleet.join(120)
        assert summary.sent == 20_000
        wait_stored(gw, 20_000, 60)
        tally = reconcile("1 kill -9 x3", gw, collector, sent_keys(summary))
        assert gw.stop() == 0
        assert tally.lost == 0
        assert tally.stored == tally.sent == tally.delivered == 20_000
    finally:
        collector.close()


@pytest.mark.timeout(int(4 * OUTAGE_S + 240))
def test_upstream_down_twice(tmp_path: Path, local_broker: Broker, cloud_broker: Broker) -> None:
    gw, collector = start(tmp_path, local_broker, cloud_broker)
    try:
        fleet = Fleet(local_broker, devices=10, duration=2 * OUTAGE_S + 12, rate=400)
        for _ in range(2):
            collector.wait_for(lambda c: len(c.messages) > 0, 30, "deliveries")
            cloud_broker.stop()
            during = gw.stored()
            time.sleep(OUTAGE_S)  # the outage itself is the fault under test
            assert gw.stored() > during, "ingestion must go on while upstream is down"
            cloud_broker.start()
            seen = len(collector.messages)
            collector.wait_for(lambda c, s=seen: len(c.messages) > s, 30, "deliveries resume")
        summary = fleet.join(OUTAGE_S + 60)
        wait_stored(gw, summary.sent, 60)
        tally = reconcile(
            "2 upstream down x2", gw, collector, sent_keys(summary), upstream_timeout=90
        )
        assert gw.stop() == 0
        assert tally.lost == 0
        assert "circuit breaker closed -> open" in gw.log()
        assert gw.count("outbox") == 0
    finally:
        collector.close()


def test_local_broker_restarted_mid_run(
    tmp_path: Path, local_broker: Broker, cloud_broker: Broker
) -> None:
    gw, collector = start(tmp_path, local_broker, cloud_broker)
    try:
        fleet = Fleet(local_broker, devices=10, count=10_000, rate=1000)
        wait_stored(gw, 3000, 60)
        local_broker.restart()  # persistent: the gateway's session and queue survive
        gw.wait_subscribed(2)
        summary = fleet.join(120)
        wait_stored(gw, summary.sent, 60)
        tally = reconcile("3 local broker restart", gw, collector, sent_keys(summary))
        assert gw.stop() == 0
        assert tally.lost == 0
        assert tally.sent == 10_000
    finally:
        collector.close()


def test_serial_port_closed_and_reopened_with_garbage(tmp_path: Path, cloud_broker: Broker) -> None:
    link = tmp_path / "ttyUSB-faults"
    device = SerialDevice(link)
    device.open()
    source = {
        "id": "line",
        "type": "serial",
        "port": str(link),
        "baudrate": 115200,
        "format": {"type": "csv", "columns": ["device", "metric", "value", "ts", "seq"]},
        "reconnect": {"initial": "0.1s", "max": "0.5s"},
        "max_line_bytes": 1024,
        "silent_after": "1s",
    }
    gw = Gateway(
        tmp_path, faults_config(tmp_path, sources=[source], upstream_port=cloud_broker.port)
    )
    gw.start()
    collector = FaultCollector(cloud_broker.host, cloud_broker.port)
    try:
        gw.wait_log("reading " + str(link))
        first = run_serial(
            device, devices=3, metrics=("pressure",), count=600, rate=400, garbage_every=50
        )
        device.write_raw(b"dev-000,pressure,1.0")  # a partial line, cut by the unplug
        wait_stored(gw, first.sent, 30)
        silence = "SELECT state FROM alerts WHERE kind = 'silence' ORDER BY rowid"
        wait_until(lambda: gw.query(silence) == [("raised",)], 15, "a silence alert")
        device.unplug()
        gw.wait_log("closed")
        device.replug()
        wait_until(lambda: gw.log().count("reading " + str(link)) >= 2, 15, "port reopened")
        device.write_raw(b"\xff\xfe" * 3000 + b"\n")  # over-long binary garbage
        # A fresh run restarts seq at 1: another metric keeps every key distinct.
        second = run_serial(
            device, devices=3, metrics=("temperature",), count=600, rate=400, garbage_every=40
        )
        sent = sent_keys(first, second)
        wait_stored(gw, len(sent), 30)
        tally = reconcile("6 serial reopen + garbage", gw, collector, sent)
        assert gw.stop() == 0
        assert tally.lost == 0
        # silent after the first run, speaking again in the second (and maybe silent after)
        assert gw.query(silence)[:2] == [("raised",), ("cleared",)]
        alerts = collector.of_kind("alert")
        assert {(a["detector"], a["state"]) for a in alerts} >= {
            ("silence", "raised"),
            ("silence", "cleared"),
        }
        reasons = dict(gw.query("SELECT reason, count(*) FROM dead_letters GROUP BY reason"))
        assert reasons.get("line_too_long", 0) >= 2, reasons
        assert sum(reasons.values()) >= first.bad + second.bad
    finally:
        collector.close()
        device.close()


def test_sigterm_under_load_then_the_outbox_resumes(
    tmp_path: Path, local_broker: Broker, cloud_broker: Broker
) -> None:
    gw, collector = start(tmp_path, local_broker, cloud_broker)
    try:
        fleet = Fleet(local_broker, devices=10, count=12_000, rate=1500)
        wait_stored(gw, 2000, 30)
        cloud_broker.stop()  # a backlog builds up in the outbox
        wait_stored(gw, 6000, 30)
        started = time.monotonic()
        assert gw.stop() == 0  # under load, with upstream away: a bounded drain, then exit 0
        assert time.monotonic() - started < 25
        assert "stay in the outbox for the next start" in gw.log()
        left = gw.count("outbox")
        assert left > 0
        cloud_broker.start()
        gw.start()
        gw.wait_subscribed(2)
        summary = fleet.join(120)
        wait_stored(gw, summary.sent, 60)
        tally = reconcile("8 SIGTERM under load", gw, collector, sent_keys(summary))
        assert gw.stop() == 0
        assert tally.lost == 0
        assert gw.count("outbox") == 0
    finally:
        collector.close()


def test_network_partition_to_the_upstream(
    tmp_path: Path, local_broker: Broker, cloud_broker: Broker
) -> None:
    # iptables would need a network namespace of our own; a blackholing proxy drops the
    # bytes just the same, on loopback, without privileges.
    proxy = BlackholeProxy(cloud_broker.port)
    config = faults_config(
        tmp_path, sources=[fleet_source(local_broker.port)], upstream_port=proxy.port
    )
    gw = Gateway(tmp_path, config)
    gw.start()
    gw.wait_subscribed()
    collector = FaultCollector(cloud_broker.host, cloud_broker.port)
    try:
        fleet = Fleet(local_broker, devices=10, duration=OUTAGE_S / 2 + 12, rate=400)
        collector.wait_for(lambda c: len(c.messages) > 0, 30, "deliveries")
        proxy.partition()
        gw.wait_log("not acknowledged", timeout=30)  # found out by the ack timeout
        time.sleep(OUTAGE_S / 2)  # the partition itself is the fault under test
        proxy.heal()
        summary = fleet.join(OUTAGE_S + 60)
        wait_stored(gw, summary.sent, 60)
        tally = reconcile(
            "4 network partition", gw, collector, sent_keys(summary), upstream_timeout=90
        )
        assert gw.stop() == 0
        assert tally.lost == 0
    finally:
        collector.close()
        proxy.close()


BURST_S = float(os.environ.get("FAULTS_BURST_S", "30"))
NOMINAL_RATE = 200


@pytest.mark.timeout(int(BURST_S * 4 + 240))
def test_burst_at_ten_times_the_rate_with_a_slow_upstream(
    tmp_path: Path, local_broker: Broker, cloud_broker: Broker
) -> None:
    proxy = BlackholeProxy(cloud_broker.port)
    proxy.rate_bps = 100_000  # about 400 messages/s: far below the burst
    config = faults_config(
        tmp_path,
        sources=[fleet_source(local_broker.port)],
        upstream_port=proxy.port,
        store={"outbox": {"max_rows": 5000}},
    )
    gw = Gateway(tmp_path, config)
    gw.start()
    gw.wait_subscribed()
    collector = FaultCollector(cloud_broker.host, cloud_broker.port)
    try:
        assert gw.proc is not None
        before = rss_mb(gw.proc.pid)
        fleet = Fleet(local_broker, devices=20, duration=BURST_S, rate=10 * NOMINAL_RATE)
        peak = before
        while fleet.running():
            peak = max(peak, rss_mb(gw.proc.pid))
            time.sleep(0.5)
        summary = fleet.join(60)
        wait_stored(gw, summary.sent, 60)
        print(f"\nburst: RSS {before:.0f} MB before, {peak:.0f} MB peak")
        proxy.rate_bps = None
        wait_until(lambda: gw.count("outbox") == 0, 120, "the outbox to drain")
        assert gw.stop() == 0
        dropped = dropped_by_policy(gw)
        assert dropped > 0, "the burst should overflow the 5000-row outbox"
        tally = reconcile(
            "9 burst x10, slow upstream", gw, collector, sent_keys(summary), dropped=dropped
        )
        assert tally.lost == 0
        assert tally.stored == tally.sent  # the store keeps every reading; the outbox sheds
        assert peak < before + 200, f"RSS grew from {before:.0f} to {peak:.0f} MB"
        assert "outbox_dropped" in gw.log()
    finally:
        collector.close()
        proxy.close()
