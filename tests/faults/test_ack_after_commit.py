"""The MQTT source acknowledges a message only after its readings are committed: a crash
while the store cannot commit loses nothing, because the broker still holds the messages."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from tests.conftest import Broker
from tests.faults.support import Gateway, faults_config, fleet_source, wait_stored

pytestmark = pytest.mark.integration

BREAK = "CREATE TRIGGER refuse BEFORE INSERT ON readings BEGIN SELECT json('{'); END"


def test_a_crash_before_the_commit_loses_no_acknowledged_message(
    tmp_path: Path, local_broker: Broker, cloud_broker: Broker
) -> None:
    config = faults_config(
        tmp_path, sources=[fleet_source(local_broker.port)], upstream_port=cloud_broker.port
    )
    gw = Gateway(tmp_path, config)
    gw.start()
    gw.wait_subscribed()
    with sqlite3.connect(gw.db_path) as db:  # from now on every commit fails
        db.execute(BREAK)
    db.close()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="ack-test")
    client.connect(local_broker.host, local_broker.port)
    client.loop_start()
    try:
        infos = [
            client.publish(
                "sensors/dev-1/t",
                json.dumps({"value": float(i), "ts": 1.7e9 + i, "seq": i}).encode(),
                qos=1,
            )
            for i in range(1, 101)
        ]
        for info in infos:
            info.wait_for_publish(10)  # the broker has them
        gw.wait_log("committing", timeout=30)  # the gateway has them too, uncommitted
        gw.kill9()
        assert gw.stored() == 0
        with sqlite3.connect(gw.db_path) as db:
            db.execute("DROP TRIGGER refuse")
        db.close()
        gw.start()  # same client id, same session: the broker delivers them again
        wait_stored(gw, 100, 30)
        assert gw.stop() == 0
        assert gw.query("SELECT count(DISTINCT seq) FROM readings") == [(100,)]
    finally:
        client.loop_stop()
        client.disconnect()
