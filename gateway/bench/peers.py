"""Peers for ``edge-gateway bench --peers``: Node-RED and the ThingsBoard IoT Gateway doing
the forward job (MQTT in -> JSON -> one filter -> MQTT out) against the same private brokers.

Both are installed on first use into a cache directory outside the project
(``$EDGE_GATEWAY_BENCH_CACHE``, default ``~/.cache/edge-gateway-bench``): Node-RED with npm,
the ThingsBoard gateway with pip in a venv of its own. When that is not possible the peer is
skipped with the reason; nothing here is needed by ``edge-gateway`` or its tests.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.bench import wire
from gateway.bench.agents import TOPIC_PREFIX
from gateway.bench.brokers import free_port
from gateway.bench.collector import Collector
from gateway.bench.systems import System, wait_for

PEERS = ("node-red", "thingsboard")
Say = Callable[[str], None]
FILTER = -1_000_000
"""The forward job's one filter: ``value > FILTER`` (always true: the cost is measured)."""


class PeerUnavailable(Exception):
    """The peer cannot run on this box (not installed and not installable); says why."""


def cache_dir() -> Path:
    return Path(os.environ.get("EDGE_GATEWAY_BENCH_CACHE", "~/.cache/edge-gateway-bench"))


def _install(cmd: list[str], log: Path, what: str) -> None:
    with open(log, "ab") as out:
        done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        raise PeerUnavailable(f"installing {what} failed ({' '.join(cmd)}); see {log}")


class Peer(System):
    """A peer process; progress is what the collector counted upstream."""

    def _started(self, ready: Callable[[], bool], what: str, log: Path) -> None:
        """Wait for ``ready`` (or an exit); stop the process and raise when it did not come up."""
        try:
            wait_for(lambda: ready() or self.proc.poll() is not None, 60, what)
            if self.proc.poll() is not None:
                raise RuntimeError(f"exited with {self.proc.returncode}: {_read(log)[-2000:]}")
        except BaseException:
            self.stop()
            raise


# ------------------------------------------------------------------ Node-RED


def node_red_install(say: Say) -> tuple[str, Path]:
    """(node binary, red.js) of a Node-RED in the cache, installed with npm if absent."""
    node = shutil.which("node")
    if node is None:
        raise PeerUnavailable("node is not installed (Node-RED needs Node.js 18 or later)")
    home = cache_dir().expanduser() / "node-red"
    red = home / "node_modules" / "node-red" / "red.js"
    if not red.exists():
        npm = shutil.which("npm")
        if npm is None:
            raise PeerUnavailable("npm is not installed: cannot install Node-RED")
        home.mkdir(parents=True, exist_ok=True)
        say(f"    installing Node-RED into {home} (once)")
        cmd = [npm, "install", "--prefix", str(home), "--no-audit", "--no-fund", "node-red"]
        _install(cmd, home / "install.log", "Node-RED")
    if not red.exists():
        raise PeerUnavailable(f"Node-RED is not in {home} after npm install")
    return node, red


def node_red_flows(local: int, upstream: int, qos: int) -> list[dict[str, Any]]:
    """The forward job as a Node-RED flow: mqtt in -> json -> switch -> change -> mqtt out."""

    def broker(node_id: str, port: int) -> dict[str, Any]:
        return {
            "id": node_id,
            "type": "mqtt-broker",
            "name": f"{node_id} broker",
            "broker": "127.0.0.1",
            "port": str(port),
            "clientid": "",
            "autoConnect": True,
            "usetls": False,
            "protocolVersion": "4",
            "keepalive": "60",
            "cleansession": True,
        }

    return [
        {"id": "bench", "type": "tab", "label": "edge-gateway bench"},
        broker("broker-local", local),
        broker("broker-upstream", upstream),
        {
            "id": "in",
            "type": "mqtt in",
            "z": "bench",
            "topic": f"{TOPIC_PREFIX}/#",
            "qos": str(qos),
            "datatype": "utf8",
            "broker": "broker-local",
            "nl": False,
            "rap": True,
            "rh": 0,
            "inputs": 0,
            "wires": [["parse"]],
        },
        {
            "id": "parse",
            "type": "json",
            "z": "bench",
            "property": "payload",
            "action": "obj",
            "pretty": False,
            "wires": [["filter"]],
        },
        {
            "id": "filter",
            "type": "switch",
            "z": "bench",
            "property": "payload.value",
            "propertyType": "msg",
            "rules": [{"t": "gt", "v": str(FILTER), "vt": "num"}],
            "checkall": "true",
            "repair": False,
            "outputs": 1,
            "wires": [["topic"]],
        },
        {
            "id": "topic",
            "type": "change",
            "z": "bench",
            "rules": [
                {
                    "t": "change",
                    "p": "topic",
                    "pt": "msg",
                    "from": f"{TOPIC_PREFIX}/",
                    "fromt": "str",
                    "to": "out/",
                    "tot": "str",
                }
            ],
            "wires": [["out"]],
        },
        {
            "id": "out",
            "type": "mqtt out",
            "z": "bench",
            "topic": "",
            "qos": str(qos),
            "retain": "false",
            "broker": "broker-upstream",
            "wires": [],
        },
    ]


class NodeRed(Peer):
    """Node-RED running the forward flow; progress = messages the collector received."""

    def __init__(
        self, workdir: Path, local: int, upstream: int, qos: int, collector: Collector, say: Say
    ) -> None:
        node, red = node_red_install(say)
        workdir.mkdir(parents=True, exist_ok=True)
        flows = workdir / "flows.json"
        flows.write_text(json.dumps(node_red_flows(local, upstream, qos), indent=1))
        settings = workdir / "settings.js"
        settings.write_text(
            "module.exports = {\n"
            f"  uiPort: {free_port()}, uiHost: '127.0.0.1',\n"
            "  httpAdminRoot: false, httpNodeRoot: false,\n"
            f"  flowFile: {json.dumps(str(flows))},\n"
            "  logging: { console: { level: 'info', metrics: false, audit: false } },\n"
            "  telemetry: { enabled: false }, diagnostics: { enabled: false },\n"
            "};\n"
        )
        self.log_path = workdir / "node-red.log"
        cmd = [node, str(red), "--settings", str(settings), "--userDir", str(workdir)]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
        self._collector = collector

        def connected() -> bool:
            return self.log().count("Connected to broker") >= 2

        self._started(connected, "Node-RED to connect to both brokers", self.log_path)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def progress(self) -> int:
        return self._collector.received


# ------------------------------------------------------------------ ThingsBoard IoT Gateway


def thingsboard_install(say: Say) -> Path:
    """The ``thingsboard-gateway`` script of a venv in the cache, installed with pip if absent."""
    venv = cache_dir().expanduser() / "thingsboard"
    script = venv / "bin" / "thingsboard-gateway"
    if not script.exists():
        venv.parent.mkdir(parents=True, exist_ok=True)
        say(f"    installing the ThingsBoard IoT Gateway into {venv} (once)")
        log = venv.parent / "thingsboard-install.log"
        _install([sys.executable, "-m", "venv", str(venv)], log, "a venv for ThingsBoard")
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "thingsboard-gateway"]
        _install(pip, log, "thingsboard-gateway")
    if not script.exists():
        raise PeerUnavailable(f"thingsboard-gateway is not in {venv} after pip install")
    return script


NO_LIMIT = "0:0,"


def thingsboard_config(local: int, upstream: int, qos: int) -> dict[str, dict[str, Any]]:
    """``tb_gateway.json`` and ``mqtt.json``: its MQTT connector subscribes to the load,
    converts each JSON message into device telemetry and sends it to "ThingsBoard" (the
    upstream broker) at ``qos``. Rate limits off, memory storage, no remote features."""
    main = {
        "thingsboard": {
            "host": "127.0.0.1",
            "port": upstream,
            "remoteShell": False,
            "remoteConfiguration": False,
            "latencyDebugMode": False,
            "statistics": {"enable": False, "statsSendPeriodInSeconds": 3600},
            "deviceFiltering": {"enable": False},
            "maxPayloadSizeBytes": 8196,
            "minPackSendDelayMS": 50,
            "minPackSizeToSend": 500,
            "checkConnectorsConfigurationInSeconds": 3600,
            "handleDeviceRenaming": False,
            "security": {"type": "accessToken", "accessToken": "bench"},
            "qos": qos,
            "reportStrategy": {"type": "ON_RECEIVED"},
            "checkingDeviceActivity": {"checkDeviceInactivity": False},
            "rateLimits": NO_LIMIT,
            "dpRateLimits": NO_LIMIT,
            "messagesRateLimits": NO_LIMIT,
            "deviceMessagesRateLimits": NO_LIMIT,
            "deviceRateLimits": NO_LIMIT,
            "deviceDpRateLimits": NO_LIMIT,
        },
        "storage": {"type": "memory", "read_records_count": 100, "max_records_count": 100_000},
        "grpc": {"enabled": False},
        "connectors": [{"type": "mqtt", "name": "bench", "configuration": "mqtt.json"}],
    }
    connector = {
        "broker": {
            "host": "127.0.0.1",
            "port": local,
            "clientId": f"tb-bench-{os.getpid()}",
            "version": 5,
            "maxMessageNumberPerWorker": 10,
            "maxNumberOfWorkers": 100,
            "cleanSession": True,
            "cleanStart": True,
            "sessionExpiryInterval": 0,
            "security": {"type": "anonymous"},
        },
        "mapping": [
            {
                "topicFilter": f"{TOPIC_PREFIX}/+/+",
                "subscriptionQos": qos,
                "converter": {
                    "type": "json",
                    "deviceInfo": {
                        "deviceNameExpressionSource": "message",
                        "deviceNameExpression": "${device}",
                        "deviceProfileExpressionSource": "constant",
                        "deviceProfileExpression": "default",
                    },
                    "sendDataOnlyOnChange": False,
                    "timeout": 60000,
                    "attributes": [],
                    "timeseries": [
                        {"type": "double", "key": "${metric}", "value": "${value}"},
                        {"type": "double", "key": "sent", "value": "${ts}"},
                        {"type": "integer", "key": "seq", "value": "${seq}"},
                    ],
                },
            }
        ],
    }
    return {"tb_gateway.json": main, "mqtt.json": connector}


RPC_REQUEST = "v1/devices/me/rpc/request/+"
SESSION_LIMITS = {"rateLimits": {}, "gatewayRateLimits": {}, "maxInflightMessages": 100}


class ThingsBoardStandIn:
    """The one server call the gateway waits for before it sends telemetry: it asks for its
    session limits over RPC (``getSessionLimits``); answer "no limits" as ThingsBoard would."""

    def __init__(self, port: int) -> None:
        self._conn = wire.Connection("127.0.0.1", port, f"bench-thingsboard-{os.getpid()}")
        self._conn.subscribe(RPC_REQUEST, 0)
        self._thread = threading.Thread(target=self._run, daemon=True, name="tb-stand-in")
        self._thread.start()

    def _run(self) -> None:
        conn = self._conn
        answer = json.dumps({**SESSION_LIMITS, "maxPayloadSize": 65536}).encode()
        try:
            while conn.fill():
                for first, body in conn.packets():
                    if first >> 4 != wire.PUBLISH:
                        continue
                    topic, _, _, _ = wire.split_publish(first, body)
                    request_id = topic.rsplit(b"/", 1)[1]
                    conn.send(
                        wire.publish_packet(b"v1/devices/me/rpc/response/" + request_id, answer)
                    )
        except OSError:
            return

    def close(self) -> None:
        self._conn.close()
        self._thread.join(timeout=2)


class ThingsBoard(Peer):
    """The ThingsBoard IoT Gateway's MQTT connector; progress = telemetry datapoint sets
    (readings) the collector counted in ``v1/gateway/telemetry`` messages."""

    def __init__(
        self, workdir: Path, local: int, upstream: int, qos: int, collector: Collector, say: Say
    ) -> None:
        script = thingsboard_install(say)
        config = workdir / "config"
        (workdir / "logs").mkdir(parents=True, exist_ok=True)
        config.mkdir(parents=True, exist_ok=True)
        for name, doc in thingsboard_config(local, upstream, qos).items():
            (config / name).write_text(json.dumps(doc, indent=1))
        (config / "logs.json").write_text(_thingsboard_logging(script))
        self._stand_in = ThingsBoardStandIn(upstream)
        self.log_path = workdir / "thingsboard.log"
        env = {**os.environ, "TB_GW_CONFIG_DIR": str(config)}
        with open(self.log_path, "wb") as log:
            try:
                self.proc = subprocess.Popen(
                    [str(script)], stdout=log, stderr=subprocess.STDOUT, cwd=workdir, env=env
                )
            except OSError:
                self._stand_in.close()
                raise
        self._collector = collector
        logs = workdir / "logs"

        def ready() -> bool:
            text = "".join(_read(log) for log in logs.glob("*.log"))
            return "subscription success" in text and "Gateway started" in text

        self._started(ready, "the ThingsBoard gateway to start and subscribe", self.log_path)

    def progress(self) -> int:
        return self._collector.thingsboard_readings

    def stop(self) -> None:
        super().stop()
        self._stand_in.close()


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def _thingsboard_logging(script: Path) -> str:
    """Its own ``logs.json`` (INFO, files under ./logs, relative to the working directory)."""
    shipped = sorted(
        script.parents[1].glob("lib/python*/site-packages/thingsboard_gateway/config/logs.json")
    )
    if not shipped:
        raise PeerUnavailable(f"no logs.json in the thingsboard-gateway package next to {script}")
    return shipped[0].read_text()


def make_peer(
    peer: str, workdir: Path, local: int, upstream: int, qos: int, collector: Collector, say: Say
) -> System:
    """A running peer on the forward job; raises PeerUnavailable with the reason."""
    if peer == "node-red":
        return NodeRed(workdir, local, upstream, qos, collector, say)
    if peer == "thingsboard":
        return ThingsBoard(workdir, local, upstream, qos, collector, say)
    raise PeerUnavailable(f"unknown peer {peer!r}; choose from {', '.join(PEERS)}")
