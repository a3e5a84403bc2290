"""Run the real daemon as a subprocess, and collect what reaches the upstream broker."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import yaml

RUNNING: list[GatewayProcess] = []
"""Every gateway started by a test; the integration conftest kills leftovers after each test."""


class GatewayProcess:
    """``edge-gateway run -c CONFIG`` in a child process, stopped with SIGTERM."""

    def __init__(self, workdir: Path, config: dict[str, Any], args: tuple[str, ...] = ()) -> None:
        self.workdir = workdir
        self.args = args
        self.config_path = workdir / "gateway.yaml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.db_path = Path(config["store"]["path"])
        self.log_path = workdir / "gateway.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait_for: str = "running:") -> None:
        """Start the daemon and wait until its log shows ``wait_for``."""
        log = open(self.log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "run", "-c", str(self.config_path), *self.args],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
        )
        log.close()
        RUNNING.append(self)
        self.wait_log(wait_for, timeout=20)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, needle: str, timeout: float = 20) -> None:
        wait_until(lambda: needle in self.log() or self._exited(), timeout, f"log line {needle!r}")
        assert needle in self.log(), self.log()

    def _exited(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def stop(self, timeout: float = 30) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            raise

    def kill(self) -> None:
        """SIGKILL, for crash tests and for cleaning up after a failed test."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        if not self.db_path.exists():
            return []
        with sqlite3.connect(self.db_path, timeout=10) as db:
            try:
                return db.execute(sql, params).fetchall()
            except sqlite3.OperationalError:
                return []

    def count(self, table: str) -> int:
        rows = self.query(f"SELECT count(*) FROM {table}")
        return int(rows[0][0]) if rows else 0


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` until true or fail after ``timeout`` seconds (for other processes)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


class Collector:
    """A QoS 1 subscriber with a persistent session on the upstream broker."""

    def __init__(self, host: str, port: int, topic: str = "#") -> None:
        self.messages: dict[str, dict[str, Any]] = {}
        self.received = 0
        self._cond = threading.Condition()
        self._topic = topic
        self._client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"collector-{os.getpid()}-{id(self)}",
            clean_session=False,
        )
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._client.reconnect_delay_set(0.1, 0.5)
        self._subscribed = threading.Event()
        self._client.connect(host, port)
        self._client.loop_start()
        assert self._subscribed.wait(10), "collector could not subscribe"

    def _on_connect(self, client: mqtt.Client, *_: Any) -> None:
        client.subscribe(self._topic, qos=1)
        self._subscribed.set()

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        doc = json.loads(msg.payload)
        doc["_topic"] = msg.topic
        if "id" not in doc:  # the gateway's retained online/offline status, not a record
            return
        with self._cond:
            self.received += 1
            self.messages[doc["id"]] = doc
            self._cond.notify_all()

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        with self._cond:
            return [m for m in self.messages.values() if m["kind"] == kind]

    def wait_for(self, predicate: Callable[[Collector], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
                self._cond.wait(left)

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


def gateway_config(
    workdir: Path,
    *,
    sources: list[dict[str, Any]],
    pipelines: list[dict[str, Any]],
    upstream_port: int,
) -> dict[str, Any]:
    return {
        "gateway": {"id": "gw-test", "log_level": "info"},
        "store": {"path": str(workdir / "gateway.db")},
        "http": {"port": 0},
        "sources": sources,
        "pipelines": pipelines,
        "sinks": [
            {
                "id": "upstream",
                "type": "mqtt",
                "broker": {
                    "host": "127.0.0.1",
                    "port": upstream_port,
                    "reconnect": {"initial": "0.2s", "max": "1s"},
                },
                "breaker": {"failures": 3, "cooldown": "1s"},
                "ack_timeout": "3s",
            }
        ],
    }
