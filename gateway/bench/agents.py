"""The benchmark's helper processes: ``python -m gateway.bench.agents ROLE ...``.

* ``publish``: the load generator. Long-lived; reads one JSON command per stdin line
  (``{"rate": R, "count": N, "seq": S, "devices": D}``), publishes N readings paced at R/s
  over raw MQTT framing, answers one JSON line (``{"sent": N, "elapsed": s}``).
* ``serial``: the same over a pseudo-terminal it creates (prints the slave path first),
  writing CSV lines ``device,metric,value,ts,seq``.
* ``ceiling``: the bare paho-mqtt 2 client the gateway is compared with: subscribe, parse
  JSON with orjson, and either publish each message upstream (``--mode forward``) or only
  count it (``--mode subscribe``, progress published upstream every 50 ms).

Readings carry ``ts`` = the wall-clock time they were sent, so the collector can measure
end-to-end latency from what arrives upstream.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import tty
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from gateway.bench import wire

TOPIC_PREFIX = "bench"
PROGRESS_TOPIC = "bench-progress"
METRIC = "temp"
CHUNK = 2000


def device_name(i: int) -> str:
    return f"dev-{i:05d}"


def _value(seq: int) -> float:
    return 20.0 + (seq % 17) * 0.5  # the load generator inlines this


def _paced(
    rate: float, count: int, send: Callable[[int, int, float], None], seq0: int
) -> tuple[int, float]:
    """Call ``send(first_seq, n, ts)`` so that ``count`` items go out at ``rate`` per second."""
    start = time.perf_counter()
    sent = 0
    while sent < count:
        due = min(count, int(rate * (time.perf_counter() - start)) + 1)
        if due > sent:
            n = min(due - sent, CHUNK)
            send(seq0 + sent, n, time.time())
            sent += n
        else:
            time.sleep(0.0005)
    return sent, time.perf_counter() - start


def _commands() -> Iterator[dict[str, Any]]:
    for line in sys.stdin:
        line = line.strip()
        if not line or line == "quit":
            return
        yield json.loads(line)


def _answer(doc: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(doc) + "\n")
    sys.stdout.flush()


class _Acks:
    """Counts PUBACKs on a QoS 1 publishing connection (a reader thread)."""

    def __init__(self, conn: wire.Connection) -> None:
        self.count = 0
        self._conn = conn
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True, name="pubacks").start()

    def _read(self) -> None:
        conn = self._conn
        while conn.fill():
            n = sum(1 for first, _ in conn.packets() if first >> 4 == wire.PUBACK)
            if n:
                with self._cond:
                    self.count += n
                    self._cond.notify_all()

    def wait(self, total: int, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.count >= total, timeout)


def _remaining(n: int) -> bytes:
    return bytes((n,)) if n < 128 else bytes(((n & 0x7F) | 0x80, n >> 7))


def publish(args: argparse.Namespace) -> None:
    """The load generator: about 1.2 µs per message (paho's publish costs about 10 µs)."""
    conn = wire.Connection(args.host, args.port, f"bench-load-{os.getpid()}")
    qos = args.qos
    first = bytes((wire.PUBLISH << 4 | qos << 1,))
    acks = _Acks(conn) if qos else None
    heads: list[tuple[bytes, bytes]] = []
    published = 0

    def send(seq0: int, n: int, ts: float) -> None:
        nonlocal published
        packets = []
        stamp = b"%.6f" % ts
        ndev = len(heads)
        for seq in range(seq0, seq0 + n):
            topic, prefix = heads[seq % ndev]
            tail = b'%.1f,"ts":%s,"seq":%d}' % (20.0 + (seq % 17) * 0.5, stamp, seq)
            if qos:
                published += 1
                topic += (published % 65535 + 1).to_bytes(2, "big")
            body = topic + prefix + tail
            packets.append(first + _remaining(len(body)) + body)
        if acks is not None and published - acks.count > 60_000:
            acks.wait(published - 30_000, 30)
        conn.send(b"".join(packets))

    for cmd in _commands():
        devices = int(cmd.get("devices", 1000))
        if len(heads) != devices:
            heads = []
            for i in range(devices):
                topic = f"{TOPIC_PREFIX}/{device_name(i)}/{METRIC}".encode()
                prefix = f'{{"device":"{device_name(i)}","metric":"{METRIC}","value":'.encode()
                heads.append((len(topic).to_bytes(2, "big") + topic, prefix))
        sent, elapsed = _paced(float(cmd["rate"]), int(cmd["count"]), send, int(cmd["seq"]))
        acked = acks.wait(published, 60) if acks is not None else True
        _answer({"sent": sent, "elapsed": elapsed, "acked": acked})
    conn.close()


def serial(args: argparse.Namespace) -> None:
    master, slave = os.openpty()
    tty.setraw(slave)
    _answer({"path": os.ttyname(slave)})
    devices = 1000

    def send(seq0: int, n: int, ts: float) -> None:
        lines = "".join(
            f"{device_name(seq % devices)},{METRIC},{_value(seq)},{ts:.6f},{seq}\n"
            for seq in range(seq0, seq0 + n)
        ).encode()
        view = memoryview(lines)
        while view:
            view = view[os.write(master, view) :]

    for cmd in _commands():
        devices = int(cmd.get("devices", 1000))
        sent, elapsed = _paced(float(cmd["rate"]), int(cmd["count"]), send, int(cmd["seq"]))
        _answer({"sent": sent, "elapsed": elapsed, "acked": True})
    os.close(master)
    os.close(slave)


def ceiling(args: argparse.Namespace) -> None:
    """The bare paho-mqtt 2 subscriber(-> publisher): the Python limit on this machine."""
    import orjson
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    loads = orjson.loads
    qos = args.qos
    out = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"ceiling-out-{os.getpid()}")
    out.max_inflight_messages_set(1000)
    out.max_queued_messages_set(0)
    out.connect(args.up_host, args.up_port)
    out.loop_start()
    received = 0
    forward = args.mode == "forward"
    publish_out = out.publish

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        nonlocal received
        loads(msg.payload)
        received += 1
        if forward:
            publish_out("out/" + msg.topic, msg.payload, qos)

    def on_connect(client: mqtt.Client, *_: object) -> None:
        client.subscribe(f"{TOPIC_PREFIX}/#", qos)
        _answer({"ready": True})

    def progress() -> None:
        while True:
            time.sleep(0.05)
            publish_out(PROGRESS_TOPIC, str(received).encode(), 0)

    if not forward:
        threading.Thread(target=progress, daemon=True, name="progress").start()
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"ceiling-in-{os.getpid()}")
    sub.on_message = on_message
    sub.on_connect = on_connect
    sub.connect(args.host, args.port)
    sub.loop_forever()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m gateway.bench.agents")
    sub = parser.add_subparsers(dest="role", required=True)
    p = sub.add_parser("publish")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--qos", type=int, choices=[0, 1], default=0)
    sub.add_parser("serial")
    c = sub.add_parser("ceiling")
    c.add_argument("--host", default="127.0.0.1")
    c.add_argument("--port", type=int, required=True)
    c.add_argument("--up-host", default="127.0.0.1")
    c.add_argument("--up-port", type=int, required=True)
    c.add_argument("--qos", type=int, choices=[0, 1], default=0)
    c.add_argument("--mode", choices=["forward", "subscribe"], default="forward")
    args = parser.parse_args(argv)
    {"publish": publish, "serial": serial, "ceiling": ceiling}[args.role](args)


if __name__ == "__main__":
    main()
