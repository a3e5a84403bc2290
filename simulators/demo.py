"""``edge-gateway-sim demo``: brokers, simulated devices and the gateway, all on this machine.

Starts two private mosquitto brokers on free loopback ports (the local one the devices
publish to, and one standing for the upstream), a serial sensor on a pseudo-terminal, an
MQTT fleet with an injected overheating fault, and ``edge-gateway run`` with
``config/demo.yaml``; then prints what reaches the upstream broker.
Speaks only wire formats: the gateway runs as a separate process.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from simulators.mqtt_fleet import run_fleet
from simulators.serial_device import SerialDevice, run_serial
from simulators.signals import parse_fault

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "config" / "demo.yaml"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _mosquitto() -> str | None:
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).exists()), None
    )


class _Broker:
    def __init__(self, exe: str, workdir: Path, name: str) -> None:
        self.port = _free_port()
        conf = workdir / f"{name}.conf"
        conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\n")
        self.proc = subprocess.Popen(
            [exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"mosquitto did not start on port {self.port}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(5)


def _show(doc: dict[str, Any]) -> str:
    if "kind" not in doc:  # the gateway's retained online/offline status
        return f"STATUS {doc.get('gateway')} {doc.get('state')} ({doc.get('reason')})"
    where = f"{doc.get('device')}/{doc.get('metric')}"
    if doc.get("kind") == "aggregate":
        s = doc.get("stats", {})
        start = time.strftime("%H:%M:%S", time.localtime(doc["start"]))
        stats = " ".join(f"{k}={v:.2f}" for k, v in s.items() if k != "count")
        return f"AGG   {start} +10s {where:<24} n={doc['count']:<4} {stats}"
    if doc.get("kind") == "alert":
        return (
            f"ALERT {doc['state'].upper():<7} {doc['severity']:<8} {where:<24} "
            f"value={doc['value']:.2f} threshold={doc['threshold']}  {doc['message']}"
        )
    return f"{doc.get('kind', '?').upper():<5} {where} {doc.get('value')}"


def run_demo(
    duration: float, config: Path, devices: int, rate: float, stop: threading.Event | None = None
) -> int:
    exe = _mosquitto()
    if exe is None:
        print("The demo needs mosquitto: sudo apt-get install -y mosquitto", file=sys.stderr)
        return 1
    stop = stop or threading.Event()
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="edge-gw-demo-")))
        local = _Broker(exe, work, "local")
        stack.callback(local.stop)
        upstream = _Broker(exe, work, "upstream")
        stack.callback(upstream.stop)
        serial_dev = stack.enter_context(SerialDevice(work / "ttyBOILER"))
        env = dict(
            os.environ,
            EG_LOCAL_PORT=str(local.port),
            EG_UPSTREAM_PORT=str(upstream.port),
            EG_SERIAL_PORT=str(work / "ttyBOILER"),
            EG_STORE=str(work / "demo.db"),
        )
        print(
            f"brokers: local 127.0.0.1:{local.port}, upstream 127.0.0.1:{upstream.port}; "
            f"serial sensor on {serial_dev.path}; store {work / 'demo.db'}"
        )

        sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="demo-viewer")
        sub.on_connect = lambda c, *_: c.subscribe("site/#", qos=1)
        sub.on_message = lambda _c, _u, m: print(_show(json.loads(m.payload)), flush=True)
        sub.connect("127.0.0.1", upstream.port)
        sub.loop_start()
        stack.callback(sub.loop_stop)

        gateway = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "run", "-c", str(config)], env=env
        )

        def stop_gateway() -> None:
            if gateway.poll() is None:
                gateway.send_signal(signal.SIGTERM)

        stack.callback(stop_gateway)
        overheat = parse_fault("drift:device=dev-002,metric=temperature,at=3s,rate=3600")
        threads = [
            threading.Thread(
                target=run_fleet,
                daemon=True,
                args=("127.0.0.1", local.port),
                kwargs={
                    "devices": devices,
                    "metrics": ("temperature", "humidity"),
                    "duration": duration,
                    "rate": rate,
                    "faults": [overheat],
                    "bad_every": 200,
                    "stop": stop,
                },
            ),
            threading.Thread(
                target=run_serial,
                daemon=True,
                args=(serial_dev,),
                kwargs={"metrics": ("pressure",), "rate": 5.0, "duration": duration, "stop": stop},
            ),
        ]
        for t in threads:
            t.start()
        print(f"running for {duration:.0f}s (Ctrl-C to stop early); upstream messages:")
        try:
            for t in threads:
                while t.is_alive():
                    t.join(0.5)
        except KeyboardInterrupt:
            stop.set()
        gateway.send_signal(signal.SIGTERM)
        code = gateway.wait(30)
        time.sleep(0.5)  # let the viewer print the final windows the gateway flushed on exit
        print(f"gateway exited with {code}")
        return 0 if code == 0 else 1
