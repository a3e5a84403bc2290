"""A sink with ``outbox: memory`` on the real daemon and brokers: nothing is lost across an
uplink outage, and a graceful stop keeps what was not sent for the next start."""

from __future__ import annotations

from pathlib import Path

import pytest

from simulators.mqtt_fleet import run_fleet
from tests.conftest import Broker
from tests.integration.harness import Collector, GatewayProcess, gateway_config, wait_until
from tests.integration.test_end_to_end import fleet_source

pytestmark = pytest.mark.integration


def test_a_memory_outbox_loses_nothing_across_an_outage_and_a_restart(
    tmp_path: Path, broker: Broker, upstream_broker: Broker
) -> None:
    upstream_broker.persistence = True  # the collector's session survives the restart
    upstream_broker.restart()
    config = gateway_config(
        tmp_path,
        sources=[fleet_source(broker.port)],
        pipelines=[{"id": "fwd", "from": ["fleet"], "to": ["upstream"]}],
        upstream_port=upstream_broker.port,
    )
    config["sinks"][0]["outbox"] = "memory"
    gw = GatewayProcess(tmp_path, config)
    gw.start()
    collector = Collector(upstream_broker.host, upstream_broker.port)
    try:
        run_fleet(broker.host, broker.port, devices=5, count=500, rate=1000)
        collector.wait_for(lambda c: len(c.of_kind("reading")) >= 500, 20, "500 readings")

        upstream_broker.stop()  # the uplink goes away: the rows wait in memory
        run_fleet(broker.host, broker.port, devices=5, count=300, rate=1000, metrics=("humidity",))
        wait_until(lambda: gw.count("readings") >= 800, 20, "800 stored readings")
        assert gw.count("outbox") == 0  # none of them in SQLite while the gateway runs
        assert gw.stop() == 0  # a graceful stop: what was not sent goes to SQLite
        assert gw.count("outbox") == 300
        assert "300 undelivered rows moved to the SQLite outbox" in gw.log()

        upstream_broker.start()
        gw = GatewayProcess(tmp_path, config)
        gw.start()
        collector.wait_for(lambda c: len(c.of_kind("reading")) >= 800, 30, "800 readings")
        wait_until(lambda: gw.count("outbox") == 0, 10, "an empty SQLite outbox")
        assert gw.stop() == 0
        readings = collector.of_kind("reading")
        assert len(readings) == 800  # keyed by message id: each reading once
        assert {r["metric"] for r in readings} == {"temperature", "humidity"}
        assert gw.count("outbox") == 0
    finally:
        collector.close()
