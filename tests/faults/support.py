"""The fault suite's parts: the gateway under test, reconciliation by seq, and the results file.

A scenario drives the simulators against real mosquitto brokers and a real ``edge-gateway
run`` subprocess, then reconciles: every reading sent must be in the store exactly once (the
unique keys guarantee "once"; here we check "is there") and must reach the upstream
subscriber at least once, unless counted as dropped by policy. ``lost`` must be 0.

Set ``FAULTS_RESULTS=/path/file.jsonl`` to collect one JSON line per scenario (what
``python -m tests.faults.table`` prints).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from simulators.summary import RunSummary
from tests.integration.harness import RUNNING, Collector, GatewayProcess, wait_until

Key = tuple[str, str, int]

OUTAGE_S = float(os.environ.get("FAULTS_OUTAGE_S", "30"))
"""Upstream outage length of scenario 2 (CI: 30 s; shorten it locally with the variable)."""


@dataclass
class Tally:
    """One scenario's reconciliation, one row of the faults table."""

    scenario: str
    sent: int
    stored: int
    delivered: int
    duplicates: int
    dropped: int
    lost: int

    def record(self) -> None:
        print(f"\nfaults: {json.dumps(asdict(self))}")
        path = os.environ.get("FAULTS_RESULTS")
        if path:
            with open(path, "a") as f:
                f.write(json.dumps(asdict(self)) + "\n")


def sent_keys(*summaries: RunSummary) -> set[Key]:
    """Every (device, metric, seq) the simulators sent (seq has no gaps within a series)."""
    keys: set[Key] = set()
    for summary in summaries:
        for device, metrics in summary.series.items():
            for metric, s in metrics.items():
                keys.update((device, metric, q) for q in range(s.first_seq, s.last_seq + 1))
    return keys


def stored_keys(gw: GatewayProcess) -> tuple[set[Key], int]:
    """Distinct keys in the store, and the row count (equal when each is stored once)."""
    rows = gw.query("SELECT device, metric, seq FROM readings WHERE seq IS NOT NULL")
    return {(d, m, int(q)) for d, m, q in rows}, len(rows)


class FaultCollector(Collector):
    """The harness collector, also keeping reading keys as they arrive (cheap to wait on)."""

    def __init__(self, host: str, port: int) -> None:
        self.keys: set[Key] = set()
        super().__init__(host, port, "site/#")

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        doc = json.loads(msg.payload)
        if "id" not in doc:  # the gateway's retained online/offline status, not a record
            return
        with self._cond:
            self.received += 1
            self.messages[doc["id"]] = doc
            # a reading without a seq (the fuzzer makes valid ones too) has no key to match
            if doc.get("kind") == "reading" and doc.get("seq") is not None:
                self.keys.add((doc["device"], doc["metric"], int(doc["seq"])))
            self._cond.notify_all()

    def has_all(self, want: set[Key]) -> bool:
        return len(self.keys) >= len(want) and want <= self.keys

    @property
    def duplicates(self) -> int:
        with self._cond:
            return self.received - len(self.messages)


def reconcile(
    scenario: str,
    gw: GatewayProcess,
    collector: FaultCollector,
    sent: set[Key],
    *,
    dropped: int = 0,
    upstream_timeout: float = 60,
) -> Tally:
    """Wait until upstream has everything stored (or time out), then count."""
    stored, rows = stored_keys(gw)
    assert rows == len(stored), "a reading is stored twice"
    want = sent & stored
    with contextlib.suppress(AssertionError):  # a shortfall is reported as lost below
        collector.wait_for(
            lambda c: collector.has_all(want), upstream_timeout, f"{len(want)} readings upstream"
        )
    with collector._cond:
        delivered = collector.keys & sent
    duplicates = collector.duplicates
    # A row dropped from the outbox while in flight may still arrive: never count below 0.
    lost = len(sent - stored) + max(0, len(sent - delivered) - dropped)
    tally = Tally(
        scenario, len(sent), len(stored & sent), len(delivered), duplicates, dropped, lost
    )
    tally.record()
    return tally


class Gateway(GatewayProcess):
    """The daemon under test, killable with SIGKILL and restartable."""

    def starts(self) -> int:
        return self.log().count(" running: ")

    def start(self) -> None:
        before = self.starts() if self.log_path.exists() else 0
        log = open(self.log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "run", "-c", str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
        )
        log.close()
        if self not in RUNNING:
            RUNNING.append(self)  # killed by the autouse fixture if the test fails
        wait_until(lambda: self.starts() > before or self._exited(), 30, "gateway running")
        assert not self._exited(), self.log()[-3000:]

    def wait_subscribed(self, n: int = 1) -> None:
        wait_until(lambda: self.log().count("subscribed to") >= n, 30, "source subscribed")

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stored(self) -> int:
        return self.count("readings")


def dropped_by_policy(gw: GatewayProcess) -> int:
    """What the daemon's final status line says it dropped by its overflow policy."""
    last = [line for line in gw.log().splitlines() if "stopped; totals:" in line][-1]
    if "dropped by policy: " not in last:
        return 0
    counts = last.split("dropped by policy: ", 1)[1].split(", ")
    return sum(int(c.rsplit(" ", 1)[1]) for c in counts)


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def wait_stored(gw: Gateway, n: int, timeout: float, what: str = "") -> None:
    wait_until(lambda: gw.stored() >= n, timeout, what or f"{n} stored readings")


def faults_config(
    workdir: Path,
    *,
    sources: list[dict[str, Any]],
    upstream_port: int,
    sink: dict[str, Any] | None = None,
    store: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A gateway that stores every reading and forwards each one upstream."""
    return {
        "gateway": {"id": "gw-faults", "log_level": "info", "status_interval": "5s"},
        "store": {"path": str(workdir / "gateway.db"), **(store or {})},
        "sources": sources,
        "pipelines": [
            {
                "id": "fwd",
                "from": [s["id"] for s in sources],
                "to": ["upstream"],
                "forward": ["readings"],
            }
        ],
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
                "batch": 500,
                **(sink or {}),
            }
        ],
    }


def fleet_source(port: int) -> dict[str, Any]:
    return {
        "id": "fleet",
        "type": "mqtt",
        "broker": {
            "host": "127.0.0.1",
            "port": port,
            "reconnect": {"initial": "0.1s", "max": "1s"},
        },
        "topics": ["sensors/{device}/{metric}"],
        "format": {"type": "json"},
    }
