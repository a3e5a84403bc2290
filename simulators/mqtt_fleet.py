"""A fleet of simulated sensors publishing one MQTT message per reading.

Wire format, one message per reading on ``topic.format(device=..., metric=...)``
(default ``sensors/{device}/{metric}``)::

    {"device": "dev-001", "metric": "temperature", "value": 21.37, "ts": 1700000000.25, "seq": 1}

``ts`` is the scheduled sample time in UTC epoch seconds; ``seq`` counts the messages of one
device+metric from 1 and never has gaps (a ``dropout`` fault leaves a time gap instead).

Readings go round-robin over devices x metrics at a total ``rate`` paced by a monotonic
schedule. The number of unacknowledged publishes is bounded (``max_inflight``), so memory
stays flat when the broker is slow or away; QoS 1/2 publishes made while disconnected are
resent by paho after it reconnects. The run ends after ``count`` scheduled readings or
``duration`` seconds of schedule, then waits until every publish is acknowledged.

With ``bad_every=N`` a malformed payload follows every N-th good reading, rotating through
:data:`BAD_KINDS`; they never count as readings and carry no ``seq``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from simulators.pacing import Pacer
from simulators.signals import Fault, ReadingSource, SimReading, check_faults, device_names
from simulators.summary import RunSummary

__all__ = [
    "BAD_KINDS",
    "BAD_SIZE",
    "DEFAULT_TOPIC",
    "FleetError",
    "FleetSummary",
    "bad_payload",
    "encode_reading",
    "run_fleet",
]

DEFAULT_TOPIC = "sensors/{device}/{metric}"
BAD_KINDS = ("invalid_json", "invalid_utf8", "non_numeric", "oversized")
"""Malformed payloads, in rotation order."""
BAD_SIZE = 300_000
"""Bytes in the ``oversized`` payload."""


class FleetError(RuntimeError):
    """The fleet could not connect, or the broker stopped acknowledging publishes."""


@dataclass
class FleetSummary(RunSummary):
    """A :class:`RunSummary` plus QoS 0 messages paho discarded on a lost connection."""

    lost: int = 0

    def extra(self) -> dict[str, float | int]:
        """Adds ``lost``."""
        return {"lost": self.lost}


def encode_reading(reading: SimReading) -> bytes:
    """The JSON payload of one reading."""
    return orjson.dumps(reading.as_dict())


def bad_payload(kind: str, device: str, metric: str, ts: float) -> bytes:
    """A payload no decoder should accept as a reading.

    ``invalid_json`` is truncated JSON; ``invalid_utf8`` starts with ``0xFF``;
    ``non_numeric`` is well-formed JSON whose value is ``"n/a"``; ``oversized`` is
    :data:`BAD_SIZE` bytes of JSON with ``"value": null`` and padding, so a gateway rejects it
    for its size or, failing that, for its value.
    """
    head = {"device": device, "metric": metric, "ts": ts}
    if kind == "invalid_json":
        return orjson.dumps(head)[:-1] + b', "value": 21.5, "seq": '
    if kind == "invalid_utf8":
        return b"\xff\xfe" + orjson.dumps(head) + b"\xc3\x28\xa0\xa1"
    if kind == "non_numeric":
        return orjson.dumps({**head, "value": "n/a"})
    if kind == "oversized":
        stub = orjson.dumps({**head, "value": None, "padding": ""})
        return stub[:-2] + b"x" * (BAD_SIZE - len(stub)) + stub[-2:]
    raise ValueError(f"unknown bad payload kind {kind!r} (expected one of: {BAD_KINDS})")


class _Publisher:
    """A paho client whose unacknowledged publishes are bounded by ``max_inflight``."""

    def __init__(
        self,
        *,
        qos: int,
        client_id: str,
        max_inflight: int,
        stall_timeout: float,
    ) -> None:
        self._qos = qos
        self._max = max_inflight
        self._stall_timeout = stall_timeout
        self._cond = threading.Condition()
        self._inflight = 0
        self._last_progress = time.monotonic()
        self._connected = threading.Event()
        self._connect_rc: ReasonCode | None = None
        self.lost = 0
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        c.max_inflight_messages_set(min(max_inflight, 100))
        c.reconnect_delay_set(min_delay=1, max_delay=5)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        self._client = c

    def connect(self, host: str, port: int, *, timeout: float = 10.0) -> None:
        """Connect and start paho's network thread; raise :class:`FleetError` on failure."""
        try:
            self._client.connect(host, port, keepalive=30)
        except OSError as e:
            raise FleetError(f"cannot connect to mqtt://{host}:{port}: {e}") from e
        self._client.loop_start()
        if not self._connected.wait(timeout):
            self.close()
            raise FleetError(f"mqtt://{host}:{port} did not answer CONNECT within {timeout}s")
        rc = self._connect_rc
        if rc is not None and rc.is_failure:
            self.close()
            raise FleetError(f"mqtt://{host}:{port} refused the connection: {rc}")

    def publish(self, topic: str, payload: bytes) -> None:
        """Publish, first waiting while ``max_inflight`` publishes are unacknowledged."""
        with self._cond:
            self._wait_locked(lambda: self._inflight < self._max)
            self._inflight += 1
        info = self._client.publish(topic, payload, qos=self._qos)
        # QoS 1/2 made while disconnected stay queued in paho and are resent on reconnect.
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS and not (
            self._qos > 0 and info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN
        ):
            with self._cond:
                self._inflight -= 1
                self.lost += 1
                self._cond.notify_all()

    def drain(self) -> None:
        """Wait until every publish is acknowledged (QoS 0: written to the socket)."""
        with self._cond:
            self._wait_locked(lambda: self._inflight == 0)

    def close(self) -> None:
        """Disconnect and stop the network thread."""
        self._client.disconnect()
        self._client.loop_stop()

    def _wait_locked(self, ready: Callable[[], bool]) -> None:
        self._last_progress = time.monotonic()
        while not ready():
            self._cond.wait(0.25)
            stalled = time.monotonic() - self._last_progress
            if not ready() and stalled > self._stall_timeout:
                raise FleetError(
                    f"{self._inflight} publishes unacknowledged for {stalled:.0f}s: "
                    "is the broker reachable?"
                )

    def _on_connect(
        self, _c: mqtt.Client, _u: Any, _f: Any, rc: ReasonCode, _p: Any = None
    ) -> None:
        self._connect_rc = rc
        self._connected.set()

    def _on_disconnect(
        self, _c: mqtt.Client, _u: Any, _f: Any, _rc: ReasonCode, _p: Any = None
    ) -> None:
        if self._qos == 0:
            # paho discards unwritten QoS 0 packets on reconnect, without a callback.
            with self._cond:
                self.lost += self._inflight
                self._inflight = 0
                self._cond.notify_all()

    def _on_publish(self, _c: mqtt.Client, _u: Any, _mid: int, _rc: Any, _p: Any) -> None:
        with self._cond:
            self._inflight -= 1
            self._last_progress = time.monotonic()
            self._cond.notify_all()


def run_fleet(
    host: str,
    port: int,
    *,
    devices: int = 10,
    metrics: Sequence[str] = ("temperature",),
    count: int | None = None,
    duration: float | None = None,
    rate: float | None = 100.0,
    topic: str = DEFAULT_TOPIC,
    qos: int = 1,
    seed: int = 0,
    faults: Sequence[Fault] = (),
    bad_every: int = 0,
    max_inflight: int = 1000,
    start_ts: float | None = None,
    client_id: str | None = None,
    stall_timeout: float = 60.0,
    summary_json: str | os.PathLike[str] | None = None,
    stop: threading.Event | None = None,
    labels_json: str | os.PathLike[str] | None = None,
) -> FleetSummary:
    """Publish a simulated fleet to ``host:port`` and return what was sent.

    ``count`` bounds the scheduled readings (a dropout-suppressed reading still uses its
    slot), ``duration`` the schedule in seconds; with neither, the run lasts until ``stop``
    is set or Ctrl-C. ``rate`` is total readings per second (``None``: as fast as the broker
    acknowledges). Blocking: run it in a thread (``asyncio.to_thread``) from async code.
    """
    names = device_names(devices)
    _check_args(count, duration, rate, qos, bad_every, max_inflight)
    topics = _topics(topic, names, metrics)
    check_faults(faults, names, metrics)
    stop = stop or threading.Event()
    wall0 = time.time() if start_ts is None else start_ts
    source = ReadingSource(names, metrics, seed=seed, start_ts=wall0, faults=faults)
    summary = FleetSummary()
    pub = _Publisher(
        qos=qos,
        client_id=client_id or f"edge-gateway-sim-{os.getpid()}-{os.urandom(3).hex()}",
        max_inflight=max_inflight,
        stall_timeout=stall_timeout,
    )
    pub.connect(host, port)
    pacer = Pacer(rate, sleep=stop.wait)
    slots = 0
    last_ts = wall0
    try:
        try:
            while not stop.is_set():
                if count is not None and slots >= count:
                    break
                if duration is not None and pacer.next_offset() >= duration:
                    break
                offset = pacer.wait()
                if stop.is_set():
                    break
                slots += 1
                last_ts = round(wall0 + offset, 6)
                reading = source.take(last_ts)
                if reading is None:
                    summary.dropped += 1
                    continue
                pub.publish(topics[reading.device, reading.metric], encode_reading(reading))
                summary.add(reading)
                if bad_every and summary.sent % bad_every == 0:
                    device, metric = source.peek()
                    kind = BAD_KINDS[summary.bad % len(BAD_KINDS)]
                    pub.publish(
                        topics[device, metric], bad_payload(kind, device, metric, reading.ts)
                    )
                    summary.bad += 1
        except KeyboardInterrupt:
            summary.interrupted = True
        pub.drain()
    finally:
        pub.close()
        summary.lost = pub.lost
        summary.elapsed = pacer.elapsed
    if summary_json is not None:
        summary.write_json(Path(summary_json))
    if labels_json is not None:
        Path(labels_json).write_bytes(orjson.dumps({"labels": source.labels(last_ts)}))
    return summary


def _check_args(
    count: int | None,
    duration: float | None,
    rate: float | None,
    qos: int,
    bad_every: int,
    max_inflight: int,
) -> None:
    if count is not None and count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if duration is not None and duration < 0:
        raise ValueError(f"duration must be >= 0, got {duration}")
    if rate is not None and rate <= 0:
        raise ValueError(f"rate must be positive, got {rate}")
    if qos not in (0, 1, 2):
        raise ValueError(f"qos must be 0, 1 or 2, got {qos}")
    if bad_every < 0:
        raise ValueError(f"bad_every must be >= 0, got {bad_every}")
    if max_inflight < 1:
        raise ValueError(f"max_inflight must be >= 1, got {max_inflight}")


def _topics(
    template: str, devices: Sequence[str], metrics: Sequence[str]
) -> dict[tuple[str, str], str]:
    """Render the topic template for every series, with errors that name the template."""
    topics: dict[tuple[str, str], str] = {}
    for d in devices:
        for m in metrics:
            try:
                t = template.format(device=d, metric=m)
            except (KeyError, IndexError, ValueError) as e:
                why = f"unknown placeholder {{{e.args[0]}}}" if isinstance(e, KeyError) else e
                raise ValueError(
                    f"bad topic template {template!r}: {why} "
                    "(only {device} and {metric} can be used)"
                ) from None
            if not t or "+" in t or "#" in t:
                raise ValueError(f"topic {t!r} from template {template!r} is not publishable")
            topics[d, m] = t
    return topics
