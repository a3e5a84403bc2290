"""MQTT intake throughput with acknowledgements after commit.

    python -m tests.faults.bench_mqtt_intake [--readings 60000]

Starts a private mosquitto and the daemon (MQTT source, no sink) once to create its
persistent session, stops it, publishes N readings as fast as the broker acknowledges (they
queue for the session), then starts the daemon again and times how fast the queue becomes
durable in the store. The publisher's rate is printed as the baseline in the same run.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from simulators.mqtt_fleet import run_fleet
from tests.conftest import Broker
from tests.faults.support import Gateway, fleet_source
from tests.integration.harness import wait_until


def main(n: int, receive_maximum: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        broker = Broker(work)
        broker.start()
        try:
            config = {
                "gateway": {"id": "bench", "log_level": "info"},
                "store": {"path": str(work / "gateway.db")},
                "sources": [{**fleet_source(broker.port), "receive_maximum": receive_maximum}],
            }
            gw = Gateway(work, config)
            gw.start()
            gw.wait_subscribed()
            gw.stop()
            start = time.perf_counter()
            sent = run_fleet(broker.host, broker.port, devices=50, count=n, rate=None)
            published = time.perf_counter() - start
            gw.start()
            start = time.perf_counter()
            wait_until(lambda: gw.stored() >= n, 300, f"{n} stored")
            stored = time.perf_counter() - start
            gw.stop()
        finally:
            broker.stop()
    print(f"{'stage':<40} {'readings':>9} {'seconds':>8} {'readings/s':>11}")
    rows = (
        ("publisher, QoS 1 (baseline)", sent.sent, published),
        ("gateway: queued session -> committed", n, stored),
    )
    for stage, count, seconds in rows:
        print(f"{stage:<40} {count:>9} {seconds:>8.2f} {count / seconds:>11,.0f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readings", type=int, default=60_000)
    parser.add_argument("--receive-maximum", type=int, default=2000)
    args = parser.parse_args()
    main(args.readings, args.receive_maximum)
