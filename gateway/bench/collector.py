"""The upstream side of the benchmark: counts what arrives and measures its latency.

Runs in a thread of the harness, on raw MQTT framing (see ``wire``), subscribed to ``#`` at
QoS 0 on the upstream broker (what the system under test published at QoS 0 or 1).
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import orjson

from gateway.bench import wire
from gateway.bench.agents import PROGRESS_TOPIC

MAX_SAMPLES = 500_000
_PROGRESS = PROGRESS_TOPIC.encode()
THINGSBOARD_TELEMETRY = b"v1/gateway/telemetry"
"""Where the ThingsBoard IoT Gateway (a ``--peers`` system) sends device telemetry."""


class Collector:
    """Counts messages, records latencies while ``recording``, sums aggregate counts."""

    def __init__(self, host: str, port: int) -> None:
        self.received = 0
        self.progress = 0
        """The last count a parse-only ceiling reported on ``PROGRESS_TOPIC``."""
        self.aggregated = 0
        """Sum of ``count`` over the aggregates received: readings that went into windows."""
        self.alerts = 0
        self.thingsboard_readings = 0
        """Readings in ThingsBoard gateway telemetry (``{device: [{ts, values}, ...]}``)."""
        self.recording = False
        self.latencies: list[float] = []
        self.aggregate_arrivals: list[tuple[float, float]] = []
        """``(window end, arrival time)`` of each aggregate received while ``recording``."""
        self._conn = wire.Connection(host, port, f"bench-collector-{os.getpid()}")
        self._conn.subscribe("#", 0)
        self._thread = threading.Thread(target=self._run, daemon=True, name="collector")
        self._thread.start()

    def _run(self) -> None:
        conn = self._conn
        loads = orjson.loads
        now = time.time
        split = wire.split_publish
        try:
            while conn.fill():
                t = now()
                for first, body in conn.packets():
                    if first >> 4 != wire.PUBLISH:
                        continue
                    topic, payload, _, _ = split(first, body)
                    if topic == _PROGRESS:
                        self.progress = int(payload)
                        continue
                    if topic.startswith(b"v1/"):  # the ThingsBoard device API
                        if topic == THINGSBOARD_TELEMETRY:
                            self._thingsboard(loads(payload), t)
                        continue
                    self.received += 1
                    if topic.endswith(b"/agg") or topic.endswith(b"/alert"):
                        doc = loads(payload)
                        if doc.get("kind") == "aggregate":
                            self.aggregated += int(doc["count"])
                            if self.recording and len(self.aggregate_arrivals) < MAX_SAMPLES:
                                self.aggregate_arrivals.append((float(doc["end"]), t))
                        else:
                            self.alerts += 1
                    elif self.recording and len(self.latencies) < MAX_SAMPLES:
                        self.latencies.append(t - float(loads(payload)["ts"]))
        except OSError:
            return

    def _thingsboard(self, doc: dict[str, list[dict[str, Any]]], t: float) -> None:
        for entries in doc.values():
            self.thingsboard_readings += len(entries)
            if self.recording and len(self.latencies) < MAX_SAMPLES:
                self.latencies += [t - float(e["values"]["sent"]) for e in entries]

    def reset_latencies(self) -> None:
        self.latencies = []
        self.aggregate_arrivals = []

    def close(self) -> None:
        self._conn.close()
        self._thread.join(timeout=2)
