"""Scenario 7 end to end: malformed payloads from hypothesis, published to the real broker the
running daemon reads, between well-formed readings. The daemon must stay up, store every good
reading exactly once and keep the bad input aside in dead_letters.

(The decoders alone are fuzzed much harder in tests/unit/test_codecs.py.)
"""

from __future__ import annotations

import json
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import Broker
from tests.faults.support import FaultCollector, Gateway, faults_config, fleet_source, reconcile
from tests.integration.harness import wait_until

pytestmark = pytest.mark.integration

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
reading_like = st.fixed_dictionaries(
    {},
    optional={
        "device": st.one_of(st.text(max_size=10), st.integers(), st.none()),
        "metric": st.one_of(st.text(max_size=10), st.lists(st.integers(), max_size=2)),
        "value": json_values,
        "ts": json_values,
        "seq": json_values,
    },
)


def _dump(doc: object) -> bytes:
    return json.dumps(doc, allow_nan=True).encode()


payloads = st.one_of(
    st.binary(max_size=512),
    json_values.map(_dump),
    reading_like.map(_dump),
    st.integers(min_value=100, max_value=5000).map(lambda n: b"[" * n + b"]" * n),
    st.sampled_from([b"NaN", b"Infinity", b'{"value": NaN}', b'{"value": 1e999}', b""]),
)


def good(seq: int) -> bytes:
    return _dump(
        {"device": "sentinel", "metric": "t", "value": float(seq), "ts": 1.7e9 + seq, "seq": seq}
    )


@settings(
    max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(batch=st.lists(payloads, min_size=50, max_size=50))
def test_fuzzed_payloads_end_to_end(
    tmp_path_factory: pytest.TempPathFactory,
    local_broker: Broker,
    cloud_broker: Broker,
    batch: list[bytes],
) -> None:
    workdir: Path = tmp_path_factory.mktemp("fuzz")
    gw = Gateway(
        workdir,
        faults_config(
            workdir, sources=[fleet_source(local_broker.port)], upstream_port=cloud_broker.port
        ),
    )
    gw.start()
    gw.wait_subscribed()
    collector = FaultCollector(cloud_broker.host, cloud_broker.port)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"fuzzer-{workdir.name}")
    client.connect(local_broker.host, local_broker.port)
    client.loop_start()
    try:
        infos = []
        for i, payload in enumerate(batch, start=1):
            infos.append(client.publish("sensors/fuzz/m", payload, qos=1))
            infos.append(client.publish("sensors/sentinel/t", good(i), qos=1))
        for info in infos:
            info.wait_for_publish(10)
        sentinels = "SELECT count(*) FROM readings WHERE device = 'sentinel'"
        wait_until(lambda: gw.query(sentinels) == [(len(batch),)], 30, "every sentinel stored")
        sent = {("sentinel", "t", i) for i in range(1, len(batch) + 1)}
        tally = reconcile("7 fuzz end to end (sentinels)", gw, collector, sent)
        assert tally.lost == 0
        assert gw.proc is not None
        assert gw.proc.poll() is None, gw.log()[-3000:]
        assert gw.stop() == 0
        assert "Traceback" not in gw.log(), gw.log()[-3000:]
    finally:
        collector.close()
        client.loop_stop()
        client.disconnect()
        if gw.proc is not None and gw.proc.poll() is None:
            gw.kill9()
