"""Simulators against the real thing: a private mosquitto, and pseudo-terminals read by pyserial."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import serial
from paho.mqtt.enums import CallbackAPIVersion

from simulators.cli import main
from simulators.mqtt_fleet import BAD_SIZE, FleetError, run_fleet
from simulators.serial_device import SerialDevice, run_serial
from tests.conftest import Broker

pytestmark = pytest.mark.integration


# --------------------------------------------------------------------------- MQTT helpers


class Collector:
    """A paho subscriber recording every message under one topic filter.

    Entering returns once the broker has acknowledged the subscription; after a broker
    restart it subscribes again.
    """

    def __init__(self, broker: Broker, topic_filter: str) -> None:
        self.broker = broker
        self.topic_filter = topic_filter
        self.messages: list[tuple[str, bytes]] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"sub-{uuid.uuid4().hex}")
        self.client.reconnect_delay_set(min_delay=1, max_delay=2)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    def __enter__(self) -> Collector:
        self.client.connect(self.broker.host, self.broker.port)
        self.client.loop_start()
        assert self._subscribed.wait(10), "subscription not acknowledged"
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def wait_for(self, n: int, timeout: float = 20.0) -> bool:
        """Block until ``n`` messages arrived; ``False`` on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: len(self.messages) >= n, timeout)

    def wait_until(
        self, predicate: Callable[[list[tuple[str, bytes]]], bool], timeout: float = 20.0
    ) -> bool:
        """Block until ``predicate(messages)`` holds; ``False`` on timeout."""
        with self._cond:
            return bool(self._cond.wait_for(lambda: predicate(self.messages), timeout))

    def _on_connect(self, client: mqtt.Client, *_: Any) -> None:
        client.subscribe(self.topic_filter, qos=1)

    def _on_subscribe(self, *_: Any) -> None:
        self._subscribed.set()

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append((msg.topic, bytes(msg.payload)))
            self._cond.notify_all()


def unique_topic() -> str:
    return f"test/{uuid.uuid4().hex}/{{device}}/{{metric}}"


def decode(messages: list[tuple[str, bytes]]) -> list[dict[str, Any]]:
    """The well-formed readings, each checked against its topic."""
    out = []
    for topic, payload in messages:
        try:
            doc = json.loads(payload.decode())
        except ValueError:
            continue
        if isinstance(doc.get("value"), float | int) and "seq" in doc:
            assert topic.endswith(f"/{doc['device']}/{doc['metric']}")
            out.append(doc)
    return out


def by_series(readings: list[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in readings:
        groups[r["device"], r["metric"]].append(r)
    return groups


def closed_port() -> int:
    """A loopback port nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- MQTT fleet


async def test_fleet_delivers_every_reading_with_contiguous_seq(
    broker: Broker, tmp_path: Path
) -> None:
    topic = unique_topic()
    summary_path = tmp_path / "sent.json"
    with Collector(broker, topic.format(device="+", metric="+")) as sub:
        summary = await asyncio.to_thread(
            run_fleet,
            broker.host,
            broker.port,
            devices=10,
            count=1000,
            rate=5000,
            topic=topic,
            seed=42,
            summary_json=summary_path,
        )
        assert sub.wait_for(1000), f"got {len(sub.messages)} of 1000"
        messages = list(sub.messages)

    assert (summary.sent, summary.bad, summary.lost) == (1000, 0, 0)
    assert len(messages) == 1000
    readings = decode(messages)
    groups = by_series(readings)
    assert sorted(d for d, _ in groups) == [f"dev-{i:03d}" for i in range(1, 11)]
    sent = json.loads(summary_path.read_text())
    assert sent["sent"] == 1000
    for (device, metric), rs in groups.items():
        assert sorted(r["seq"] for r in rs) == list(range(1, 101)), device
        stats = sent["series"][device][metric]
        assert stats["count"] == 100
        assert stats["sum"] == pytest.approx(sum(r["value"] for r in rs))
        assert stats["last_seq"] == 100


def test_bad_payloads_are_interleaved_and_do_not_count(broker: Broker) -> None:
    topic = unique_topic()
    with Collector(broker, topic.format(device="+", metric="+")) as sub:
        summary = run_fleet(
            broker.host,
            broker.port,
            devices=3,
            metrics=("temperature", "humidity"),
            count=400,
            rate=None,
            topic=topic,
            bad_every=50,
        )
        assert sub.wait_for(408), f"got {len(sub.messages)} of 408"
        messages = list(sub.messages)

    assert (summary.sent, summary.bad) == (400, 8)
    good = decode(messages)
    assert len(good) == 400
    for rs in by_series(good).values():
        assert sorted(r["seq"] for r in rs) == list(range(1, len(rs) + 1))
    bad = [p for _, p in messages if not _is_reading(p)]
    assert len(bad) == 8
    assert sum(len(p) == BAD_SIZE for p in bad) == 2
    assert sum(p.startswith(b"\xff") for p in bad) == 2


def _is_reading(payload: bytes) -> bool:
    try:
        doc = json.loads(payload.decode())
    except ValueError:
        return False
    return isinstance(doc.get("value"), float | int)


def test_fleet_rides_out_a_broker_restart(broker: Broker) -> None:
    topic = unique_topic()
    count = 1200
    with Collector(broker, topic.format(device="+", metric="+")) as sub:
        with ThreadPoolExecutor(1) as pool:
            future = pool.submit(
                run_fleet, broker.host, broker.port, devices=4, count=count, rate=400, topic=topic
            )
            assert sub.wait_for(200)
            broker.restart()
            summary = future.result(timeout=60)

        def saw_the_end(messages: list[tuple[str, bytes]]) -> bool:
            last = [r for r in decode(messages) if r["seq"] == count // 4]
            return len(last) == 4

        assert sub.wait_until(saw_the_end), "the last reading of every series never arrived"
    assert (summary.sent, summary.lost) == (count, 0)


def test_unreachable_broker_is_a_clear_error() -> None:
    port = closed_port()
    with pytest.raises(FleetError, match=f"cannot connect to mqtt://127.0.0.1:{port}"):
        run_fleet("127.0.0.1", port, count=1)


def test_cli_mqtt_prints_a_summary_and_writes_json(
    broker: Broker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sent.json"
    argv = ["mqtt", "--port", str(broker.port), "--count", "60", "--rate", "0"]
    argv += ["--devices", "3", "--metrics", "all", "--summary-json", str(out)]
    argv += ["--fault", "dropout:device=dev-2,for=1h", "--topic", unique_topic()]
    assert main(argv) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("sent=40 bad=0 dropped=20 lost=0 elapsed=")
    data = json.loads(out.read_text())
    assert "dev-002" not in data["series"]
    assert data["series"]["dev-003"]["vibration"]["count"] == 4


# --------------------------------------------------------------------------- serial helpers


class LineReader:
    """Reassembles ``\\n``-terminated lines from a pyserial port (reads may split lines)."""

    def __init__(self, port: serial.Serial) -> None:
        self.port = port
        self.buf = b""

    def lines(self, timeout: float) -> Iterator[bytes]:
        """Yield complete lines until ``timeout``; pyserial errors propagate, a hang-up as
        ``SerialException`` whether ``read`` or the ``in_waiting`` ioctl (EIO) meets it first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                waiting = self.port.in_waiting
            except OSError as exc:
                raise serial.SerialException(f"the device hung up: {exc}") from exc
            self.buf += self.port.read(max(1, waiting))
            while b"\n" in self.buf:
                line, self.buf = self.buf.split(b"\n", 1)
                yield line + b"\n"


def csv_seq(line: bytes) -> int | None:
    """The seq of a well-formed csv reading line, else ``None``."""
    try:
        _device, _metric, value, ts, seq = line.decode().rstrip("\n").split(",")
        float(value), float(ts)
        return int(seq)
    except ValueError:
        return None


@contextmanager
def running(**options: Any) -> Iterator[tuple[Any, threading.Event]]:
    """Run ``run_serial`` in a thread; the run is stopped when the block exits."""
    stop = options.setdefault("stop", threading.Event())
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(run_serial, **options)
        try:
            yield future, stop
        finally:
            stop.set()
            future.result(timeout=30)


# --------------------------------------------------------------------------- serial device


@pytest.mark.parametrize("fmt", ["csv", "kv", "json"])
def test_pyserial_reads_back_what_the_device_writes(fmt: str) -> None:
    options = {"devices": 2, "metrics": ("temperature", "current"), "fmt": fmt, "count": 40}
    with (
        SerialDevice() as dev,
        serial.Serial(dev.path, timeout=0.05) as port,
        running(device=dev, rate=None, **options) as (future, _),
    ):
        got = []
        for line in LineReader(port).lines(timeout=10):
            got.append(line)
            if len(got) == 40:
                break
        summary = future.result(timeout=10)
    assert len(got) == 40
    readings = [_parse(line, fmt) for line in got]
    for device in ("dev-001", "dev-002"):
        for metric in ("temperature", "current"):
            rs = [r for r in readings if (r["device"], r["metric"]) == (device, metric)]
            assert [int(r["seq"]) for r in rs] == list(range(1, 11))
            stats = summary.series[device][metric]
            assert stats.sum == pytest.approx(sum(float(r["value"]) for r in rs))


def _parse(line: bytes, fmt: str) -> dict[str, Any]:
    text = line.decode().rstrip("\n")
    if fmt == "csv":
        return dict(zip(("device", "metric", "value", "ts", "seq"), text.split(","), strict=True))
    if fmt == "kv":
        return dict(item.split("=", 1) for item in text.split(" "))
    doc: dict[str, Any] = json.loads(text)
    return doc


def test_garbage_never_splices_into_good_lines() -> None:
    # Garbage after good lines 5, 10, ..., 30: binary, overlong, split (line 16), binary,
    # overlong, split (line 31).
    with (
        SerialDevice() as dev,
        serial.Serial(dev.path, timeout=0.05) as port,
        running(device=dev, count=31, rate=300, garbage_every=5) as (future, _),
    ):
        got = []
        for line in LineReader(port).lines(timeout=15):
            got.append(line)
            if csv_seq(line) == 31:
                break
        summary = future.result(timeout=10)
    good = [s for s in map(csv_seq, got) if s is not None]
    junk = [line for line in got if csv_seq(line) is None]
    assert good == list(range(1, 32))
    assert (summary.bad, summary.split) == (4, 2)
    assert sorted(len(j) for j in junk if not j.startswith(b"\xff")) == [10 * 1024 + 1] * 2
    binary = [j for j in junk if j.startswith(b"\xff")]
    assert len(binary) == 2
    for b in binary:
        with pytest.raises(UnicodeDecodeError):
            b.decode()


def test_unplug_hangs_up_and_replug_continues_seq_on_the_link(tmp_path: Path) -> None:
    link = tmp_path / "ttySIM0"
    paths: list[str] = []
    replugged = threading.Event()

    def on_plug(path: str) -> None:
        paths.append(path)
        replugged.set()

    with SerialDevice(link) as dev:
        assert os.readlink(link) == dev.path
        port = serial.Serial(str(link), timeout=0.05)
        options = {"rate": 200, "unplug_at": 20, "unplug_for": 0.3, "on_plug": on_plug}
        with running(device=dev, **options) as (future, stop):
            before: list[int] = []
            with pytest.raises(serial.SerialException):  # noqa: PT012
                for line in LineReader(port).lines(timeout=10):
                    seq = csv_seq(line)
                    assert seq is not None
                    before.append(seq)
            port.close()

            assert replugged.wait(10)
            assert os.readlink(link) == paths[-1]
            after: list[int] = []
            with serial.Serial(str(link), timeout=0.05) as port2:
                for line in LineReader(port2).lines(timeout=10):
                    seq = csv_seq(line)
                    if seq is not None:
                        after.append(seq)
                    if len(after) == 10:
                        break
            stop.set()
            summary = future.result(timeout=10)

    assert before == list(range(1, len(before) + 1))
    assert len(before) >= 10
    assert after[0] > 20
    assert after == list(range(after[0], after[0] + 10))
    assert summary.unplugs == 1
    assert not link.exists()


def test_unplug_and_replug_by_hand(tmp_path: Path) -> None:
    link = tmp_path / "by-id" / "usb-sim"
    link.parent.mkdir()
    dev = SerialDevice(link)
    dev.open()
    try:
        with serial.Serial(str(link), timeout=0.05) as port:
            assert dev.write_line("hello")
            assert next(LineReader(port).lines(timeout=5)) == b"hello\n"
            dev.unplug()
            assert not link.exists()
            assert not dev.write_line("nobody home")
            assert dev.lines_dropped == 1
            with pytest.raises(serial.SerialException):
                port.read(1)
        new_path = dev.replug()
        assert os.readlink(link) == new_path == dev.path
        with serial.Serial(str(link), timeout=0.05) as port:
            assert dev.write_line(b"again\n")
            assert next(LineReader(port).lines(timeout=5)) == b"again\n"
    finally:
        dev.close()
    assert not link.exists()


def test_writes_without_a_reader_are_dropped_not_blocked() -> None:
    with SerialDevice(write_timeout=0.05) as dev:
        line = "x" * 99
        started = time.monotonic()
        results = [dev.write_line(line) for _ in range(1000)]
        elapsed = time.monotonic() - started
        assert elapsed < 5
        assert dev.lines_dropped > 0
        assert dev.lines_written + dev.lines_dropped == 1000
        assert results.count(True) == dev.lines_written
        # A reader that arrives later gets whole fresh lines again.
        with serial.Serial(dev.path, timeout=0.05) as port:
            lines = LineReader(port).lines(timeout=5)
            assert dev.write_line("fresh")
            for got in lines:
                if got == b"fresh\n":
                    break
            else:
                pytest.fail("the fresh line never arrived")


def test_cli_serial_prints_the_path_then_a_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    link = tmp_path / "ttySIM1"
    argv = ["serial", "--count", "5", "--rate", "0", "--link", str(link), "--format", "json"]
    assert main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("/dev/")
    assert out[-1].startswith("sent=5 bad=0 dropped=0 overflow=0 split=0 unplugs=0 ")
    assert not link.exists()
