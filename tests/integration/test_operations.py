"""Running unattended: systemd notify and watchdog, metrics and health endpoints, JSON logs,
and reloads that lose nothing. The daemon runs as a subprocess against real brokers."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from simulators.mqtt_fleet import run_fleet
from tests.conftest import Broker
from tests.faults.conftest import PersistentBroker
from tests.integration.harness import GatewayProcess, gateway_config, wait_until

pytestmark = pytest.mark.integration


def fleet_source(port: int) -> dict[str, Any]:
    return {
        "id": "fleet",
        "type": "mqtt",
        "broker": {"host": "127.0.0.1", "port": port},
        "topics": ["sensors/{device}/{metric}"],
    }


def stats_pipeline(mean_above: float = -1000.0, lateness: str = "500ms") -> dict[str, Any]:
    return {
        "id": "stats",
        "from": ["fleet"],
        "steps": [
            {"window": {"size": "1s", "lateness": lateness, "aggregates": ["count", "mean"]}},
            {"threshold": {"above": mean_above, "severity": "info"}},
        ],
        "to": ["upstream"],
        "forward": ["aggregates"],
    }


class NotifySocket:
    """A datagram socket in place of systemd's: collects what the daemon sends."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(30)

    def next(self, key: str) -> dict[str, str]:
        """Receive until a message with ``key`` arrives (fails after the socket timeout)."""
        while True:
            data = self.sock.recv(4096).decode()
            fields = dict(line.split("=", 1) for line in data.split("\n"))
            if key in fields:
                return fields


@pytest.fixture
def notify(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", str(sock.path))
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    yield sock
    sock.sock.close()


def metrics_url(gw: GatewayProcess) -> str:
    gw.wait_log("metrics: http://")
    match = re.search(r"metrics: (http://127\.0\.0\.1:\d+)/metrics", gw.log())
    assert match, gw.log()
    return match.group(1)


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()


def sample(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        metric, _, value = line.rpartition(" ")
        if metric == (f"{name}{{{want}}}" if labels else name):
            return float(value)
    raise AssertionError(f"no sample {name} {labels}")


def test_systemd_sees_ready_watchdog_status_reload_and_stopping(
    tmp_path: Path, broker: Broker, upstream_broker: Broker, notify: NotifySocket
) -> None:
    config = gateway_config(
        tmp_path,
        sources=[fleet_source(broker.port)],
        pipelines=[stats_pipeline()],
        upstream_port=upstream_broker.port,
    )
    gw = GatewayProcess(tmp_path, config)
    gw.start()
    assert gw.proc is not None
    try:
        assert notify.next("READY")["READY"] == "1"
        run_fleet(broker.host, broker.port, devices=3, count=300, rate=1000)
        wait_until(lambda: gw.count("readings") >= 300, 20, "300 stored readings")
        # With WatchdogSec=1s the daemon checks its progress every 0.5s and pings.
        for _ in range(3):
            notify.next("WATCHDOG")
        status = notify.next("STATUS")["STATUS"]
        assert re.search(r"fleet: \d+ readings", status), status
        os.kill(gw.proc.pid, signal.SIGHUP)
        assert notify.next("RELOADING")["RELOADING"] == "1"
        assert notify.next("READY")["READY"] == "1"
        gw.wait_log("reloaded: nothing changed")
        # A stopped (frozen) process pings no more: systemd would restart it.
        os.kill(gw.proc.pid, signal.SIGSTOP)
        notify.sock.settimeout(0.2)
        while True:  # drain what was sent before the stop took effect
            try:
                notify.sock.recv(4096)
            except TimeoutError:
                break
        notify.sock.settimeout(2.0)
        with pytest.raises(TimeoutError):
            notify.next("WATCHDOG")
        os.kill(gw.proc.pid, signal.SIGCONT)
        notify.sock.settimeout(30)
        notify.next("WATCHDOG")
        os.kill(gw.proc.pid, signal.SIGTERM)
        assert notify.next("STOPPING")["STOPPING"] == "1"
        assert gw.stop() == 0
    finally:
        if gw.proc.poll() is None:
            gw.stop()


class Mute:
    """A TCP listener that accepts and, without a word, hangs up ``hold`` seconds later: an
    MQTT broker whose CONNACK never comes, so the first connect attempt takes that long."""

    def __init__(self, hold: float) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self._hold = hold
        self._conns: list[socket.socket] = []
        self.accepted = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            self._conns.append(conn)
            self.accepted += 1
            hang_up = threading.Timer(self._hold, conn.close)
            hang_up.daemon = True
            hang_up.start()

    def close(self) -> None:
        self.sock.close()
        for conn in self._conns:
            conn.close()


def test_ready_only_once_the_store_is_open_and_every_source_has_tried(
    tmp_path: Path, broker: Broker, upstream_broker: Broker, notify: NotifySocket
) -> None:
    mute = Mute(hold=1.5)  # the "slow" source's first attempt ends after 1.5 s; then it retries
    config = gateway_config(
        tmp_path,
        sources=[
            fleet_source(broker.port),
            {**fleet_source(mute.port), "id": "slow"},
            {
                "id": "tty",
                "type": "serial",
                "port": str(tmp_path / "no-such-tty"),
                "format": {"type": "csv", "columns": ["device", "metric", "value"]},
            },
        ],
        pipelines=[stats_pipeline()],
        upstream_port=upstream_broker.port,
    )
    gw = GatewayProcess(tmp_path, config)
    gw.start()
    try:
        assert notify.next("READY")["READY"] == "1"
        tables = {name for (name,) in gw.query("SELECT name FROM sqlite_master")}
        assert {"readings", "outbox"} <= tables  # the store was open
        log = gw.log()
        running = log.index("gateway gw-test running:")  # logged just before READY=1
        assert -1 < log.find("source fleet: subscribed") < running, log
        slow = f"source slow: broker 127.0.0.1:{mute.port} closed the connection before CONNACK"
        assert -1 < log.find(slow) < running, log
        assert -1 < log.find("source tty: cannot open") < running, log
        assert gw.stop() == 0
    finally:
        mute.close()
        if gw.proc is not None and gw.proc.poll() is None:
            gw.stop()


def test_a_stop_while_a_source_is_still_connecting_is_prompt(
    tmp_path: Path, upstream_broker: Broker, notify: NotifySocket
) -> None:
    mute = Mute(hold=120)  # the source's first attempt would last its 30 s CONNACK timeout
    config = gateway_config(
        tmp_path,
        sources=[fleet_source(mute.port)],
        pipelines=[stats_pipeline()],
        upstream_port=upstream_broker.port,
    )
    gw = GatewayProcess(tmp_path, config)
    try:
        gw.start(wait_for="metrics: http://")  # logged just before waiting for the sources
        assert gw.proc is not None
        wait_until(lambda: mute.accepted > 0, 20, "the source to connect")
        assert "running:" not in gw.log()  # not ready: the source has not heard back
        assert gw.stop(timeout=20) == 0
        assert notify.next("STOPPING")["STOPPING"] == "1"
    finally:
        mute.close()
        gw.kill()


def test_metrics_health_and_readiness_endpoints(
    tmp_path: Path, broker: Broker, upstream_broker: Broker
) -> None:
    config = gateway_config(
        tmp_path,
        sources=[fleet_source(broker.port)],
        pipelines=[stats_pipeline(mean_above=-1000.0)],
        upstream_port=upstream_broker.port,
    )
    config["http"] = {"port": 0, "ready_max_outbox": 3}
    config["gateway"]["stall_after"] = "60s"
    gw = GatewayProcess(tmp_path, config)
    gw.start()
    try:
        base = metrics_url(gw)
        run_fleet(broker.host, broker.port, devices=4, count=400, rate=1000, bad_every=100)
        wait_until(lambda: gw.count("readings") >= 400, 20, "400 stored readings")
        wait_until(lambda: gw.count("aggregates") > 0, 20, "a first aggregate")
        code, text = get(f"{base}/metrics")
        assert code == 200
        assert sample(text, "edge_gateway_source_decoded_readings_total", source="fleet") == 400
        assert sample(text, "edge_gateway_source_received_total", source="fleet") == 404
        rejected = sum(
            float(line.rpartition(" ")[2])
            for line in text.splitlines()
            if line.startswith("edge_gateway_source_rejected_total{") and 'source="fleet"' in line
        )
        assert rejected == 4
        assert sample(text, "edge_gateway_store_rows_total", event="readings_written") == 400
        assert sample(text, "edge_gateway_process_resident_memory_bytes") > 1e6
        assert sample(text, "edge_gateway_sink_breaker_state", sink="upstream", state="closed") == 1
        assert (
            sample(text, "edge_gateway_alerts_raised_total", pipeline="stats", severity="info") >= 1
        )
        step = {"pipeline": "stats", "step": "0:window"}
        assert sample(text, "edge_gateway_step_records_total", **step, direction="in") == 400
        windows_out = sample(text, "edge_gateway_step_records_total", **step, direction="out")
        assert windows_out >= 1
        threshold = {"pipeline": "stats", "step": "1:threshold"}
        assert sample(text, "edge_gateway_step_records_total", **threshold, direction="in") == (
            windows_out
        )
        assert (
            sample(text, "edge_gateway_pipeline_processing_seconds_count", pipeline="stats") == 400
        )
        assert sample(text, "edge_gateway_step_processing_seconds_count", **step) == 400
        assert sample(text, "edge_gateway_step_processing_seconds_sum", **step) > 0
        assert sample(text, "edge_gateway_step_keys", **step) == 4  # 4 devices x 1 metric
        assert "edge_gateway_event_loop_lag_seconds" in text
        assert sample(text, "edge_gateway_store_commit_seconds_count") >= 1
        assert sample(text, "edge_gateway_store_commit_seconds_bucket", le="+Inf") == sample(
            text, "edge_gateway_store_commit_seconds_count"
        )
        wait_until(lambda: gw.count("outbox") == 0, 20, "the aggregates to be acknowledged")
        text = get(f"{base}/metrics")[1]
        upstream = {"sink": "upstream"}
        acked = sample(text, "edge_gateway_sink_messages_total", **upstream, event="acked")
        assert sample(text, "edge_gateway_sink_messages_total", **upstream, event="published") >= (
            acked
        )
        assert acked >= 1
        assert "edge_gateway_outbox_oldest_age_seconds" in text

        code, body = get(f"{base}/healthz")
        assert (code, json.loads(body)["alive"]) == (200, True)
        code, body = get(f"{base}/readyz")
        assert code == 200, body
        assert json.loads(body)["store"]["open"] is True

        # Upstream gone: the breaker opens, the outbox grows past 3, /readyz says not ready.
        upstream_broker.stop()
        stop = threading.Event()
        fleet = threading.Thread(
            target=run_fleet,
            args=(broker.host, broker.port),
            kwargs={"devices": 4, "duration": 30.0, "rate": 200, "stop": stop, "seed": 1},
        )
        fleet.start()
        try:
            wait_until(lambda: get(f"{base}/readyz")[0] == 503, 30, "/readyz to say 503")
            ready = json.loads(get(f"{base}/readyz")[1])
            assert ready["ready"] is False
            assert ready["sinks"]["upstream"]["outbox"] >= 3
            assert ready["sinks"]["upstream"]["connected"] is False
            assert get(f"{base}/healthz")[0] == 200  # alive: the breaker is open on purpose
            text = get(f"{base}/metrics")[1]
            assert sample(text, "edge_gateway_sink_messages_total", **upstream, event="failures")
            wait_until(
                lambda: sample(
                    get(f"{base}/metrics")[1], "edge_gateway_sink_breaker_state", **upstream,
                    state="open",
                ) == 1,
                30,
                "the breaker to show open in /metrics",
            )  # fmt: skip
        finally:
            stop.set()
            fleet.join(30)
        assert gw.stop() == 0
    finally:
        if gw.proc is not None and gw.proc.poll() is None:
            gw.stop()


def test_sink_counters_in_metrics_when_the_broker_refuses_some_messages(
    tmp_path: Path, broker: Broker
) -> None:
    acl = tmp_path / "acl"
    acl.write_text("topic readwrite #\ntopic deny site/gw-test/dev-001/#\n")
    upstream = PersistentBroker(tmp_path, extra=f"acl_file {acl}\n")  # PUBACK 0x87 for dev-001
    upstream.start()
    raw = {"id": "raw", "from": ["fleet"], "to": ["upstream"], "forward": ["readings"]}
    config = gateway_config(
        tmp_path, sources=[fleet_source(broker.port)], pipelines=[raw], upstream_port=upstream.port
    )
    config["sinks"][0].update(max_attempts=2, breaker={"failures": 100, "cooldown": "1s"})
    gw = GatewayProcess(tmp_path, config)
    gw.start()
    try:
        base = metrics_url(gw)
        run_fleet(broker.host, broker.port, devices=2, count=20, rate=1000)
        wait_until(lambda: gw.count("readings") == 20, 20, "20 stored readings")
        wait_until(lambda: gw.count("outbox") == 0, 30, "every row acked or dead-lettered")
        [(denied,)] = gw.query("SELECT count(*) FROM dead_letters WHERE reason = 'undeliverable'")
        assert 0 < denied < 20
        text = get(f"{base}/metrics")[1]

        def sent(event: str) -> float:
            return sample(text, "edge_gateway_sink_messages_total", sink="upstream", event=event)

        # Each refused message was sent twice (max_attempts), so retried once.
        assert (sent("published"), sent("acked")) == (20 + denied, 20 - denied)
        assert (sent("refused"), sent("retries")) == (2 * denied, denied)
        assert sent("failures") >= 1
        assert gw.stop() == 0
    finally:
        if gw.proc is not None and gw.proc.poll() is None:
            gw.stop()
        upstream.stop()


def test_json_log_lines(tmp_path: Path, broker: Broker, upstream_broker: Broker) -> None:
    config = gateway_config(
        tmp_path,
        sources=[fleet_source(broker.port)],
        pipelines=[stats_pipeline()],
        upstream_port=upstream_broker.port,
    )
    gw = GatewayProcess(tmp_path, config, args=("--log-format", "json"))
    gw.start()
    run_fleet(broker.host, broker.port, devices=2, count=50, rate=1000, bad_every=10)
    wait_until(lambda: gw.count("dead_letters") >= 5, 20, "5 dead letters")
    assert gw.stop() == 0
    lines = [json.loads(line) for line in gw.log().splitlines() if line.strip()]
    assert {"ts", "level", "logger", "msg"} <= set(lines[0])
    assert any("running:" in line["msg"] for line in lines)
    assert any(line["level"] == "warning" and "dead_letters" in line["msg"] for line in lines)


LATENESS = "1m"
"""Longer than the test: no reading can be late, so each window is emitted exactly when a
reload or the stop flushes it (a loaded machine would otherwise make some readings late)."""


def test_ten_reloads_under_load_lose_no_reading(
    tmp_path: Path, broker: Broker, upstream_broker: Broker
) -> None:
    config = gateway_config(
        tmp_path,
        sources=[fleet_source(broker.port)],
        pipelines=[stats_pipeline(mean_above=1000.0, lateness=LATENESS)],
        upstream_port=upstream_broker.port,
    )
    gw = GatewayProcess(tmp_path, config)
    gw.start()
    assert gw.proc is not None
    stop = threading.Event()
    sent: list[Any] = []
    fleet = threading.Thread(
        target=lambda: sent.append(
            run_fleet(broker.host, broker.port, devices=10, count=6000, rate=500, stop=stop)
        )
    )
    fleet.start()
    try:
        wait_until(lambda: gw.count("readings") > 200, 20, "readings flowing")
        for i in range(10):
            # Spread the reloads over the run: wait for 400 more readings each time.
            seen = gw.count("readings")
            wait_until(lambda seen=seen: gw.count("readings") >= seen + 400, 20, "more readings")
            config["pipelines"] = [stats_pipeline(mean_above=1001.0 + i, lateness=LATENESS)]
            gw.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
            os.kill(gw.proc.pid, signal.SIGHUP)
            wait_until(
                lambda i=i: gw.log().count("reloaded: pipelines stats") == i + 1,
                20,
                f"reload {i + 1}",
            )
        # An invalid file is refused; the running config stays.
        gw.config_path.write_text("sources: []\n")
        os.kill(gw.proc.pid, signal.SIGHUP)
        gw.wait_log("the new config is invalid; still running the old one")
        # A pipeline that validates but cannot be built (two steps with one id): refused too.
        clash = stats_pipeline(lateness=LATENESS)
        clash["steps"] = [{"filter": "value > 0", "id": "x"}, {"filter": "value > 1", "id": "x"}]
        config["pipelines"] = [clash]
        gw.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        os.kill(gw.proc.pid, signal.SIGHUP)
        gw.wait_log("cannot build the new pipelines")
        fleet.join(60)
        assert not fleet.is_alive()
        assert sent[0].sent == 6000
        wait_until(lambda: gw.count("readings") >= 6000, 30, "6000 stored readings")
        assert gw.stop() == 0
    finally:
        stop.set()
        fleet.join(30)
        if gw.proc.poll() is None:
            gw.stop()
    assert gw.count("readings") == 6000
    # Every reading was counted in exactly one window: the windows open at each reload
    # were flushed, none were dropped, none counted twice.
    [(counted,)] = gw.query("SELECT sum(count) FROM aggregates")
    assert counted == 6000
    assert gw.log().count("reloaded: pipelines stats") == 10


class StatusWatcher:
    """Subscribes to the gateway's status topic and keeps every state it sees."""

    def __init__(self, broker: Broker, topic: str) -> None:
        import paho.mqtt.client as mqtt

        self.states: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self._client.on_message = self._on_message
        self._client.connect(broker.host, broker.port)
        self._client.subscribe(topic, qos=1)
        self._client.loop_start()

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        with self._cond:
            self.states.append({**json.loads(msg.payload), "_retained": bool(msg.retain)})
            self._cond.notify_all()

    def wait_state(self, state: str, reason: str, timeout: float = 20) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            return next(
                (s for s in self.states if s["state"] == state and s["reason"] == reason), None
            )

        with self._cond:
            assert self._cond.wait_for(lambda: found() is not None, timeout), self.states
            result = found()
            assert result is not None
            self.states.clear()
            return result

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


def test_retained_status_topic_with_last_will(
    tmp_path: Path, broker: Broker, upstream_broker: Broker
) -> None:
    config = gateway_config(
        tmp_path,
        sources=[fleet_source(broker.port)],
        pipelines=[stats_pipeline()],
        upstream_port=upstream_broker.port,
    )
    config["sinks"][0]["broker"]["keepalive"] = 5
    watcher = StatusWatcher(upstream_broker, "site/gw-test/status")
    try:
        gw = GatewayProcess(tmp_path, config)
        gw.start()
        online = watcher.wait_state("online", "started")
        assert online["gateway"] == "gw-test"
        assert gw.stop() == 0
        watcher.wait_state("offline", "stopped")
        # A subscriber arriving later learns the last state at once: it is retained.
        late = StatusWatcher(upstream_broker, "site/gw-test/status")
        try:
            retained = late.wait_state("offline", "stopped")
            assert retained["_retained"] is True
        finally:
            late.close()
        # Killed without a goodbye: the broker publishes the last will.
        gw.start()
        watcher.wait_state("online", "started")
        assert gw.proc is not None
        os.kill(gw.proc.pid, signal.SIGKILL)
        gw.proc.wait()
        watcher.wait_state("offline", "connection lost")
    finally:
        watcher.close()
