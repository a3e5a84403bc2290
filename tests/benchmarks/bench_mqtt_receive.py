"""Benchmark: the MQTT source's receive path, paho's packet reader vs the driver's frame reader.

Not a pytest test (pytest only collects ``test_*.py``). Run it from the repository root::

    .venv/bin/python tests/benchmarks/bench_mqtt_receive.py [--messages N] [--repeat R]

Both readers get the same bytes: ``--messages`` QoS 0 MQTT v5 PUBLISH frames like the
benchmark's load (``bench/dev-NNNNN/temp``, a JSON reading of about 90 bytes), written by a
thread into one end of a socket pair. The reader counts each message in its callback:

* ``paho``: paho-mqtt 2's own ``_packet_read`` per packet (what ``loop_read`` does, and what
  the gateway did before), ``on_message`` with an ``MQTTMessage``.
* ``driver``: ``gateway.mqttio.PahoDriver`` with an ``on_publish`` handler: one ``recv`` of
  up to 64 KiB per wake-up, frames split and decoded in place.

Figures: median over ``--repeat`` interleaved runs of the reader thread's CPU time per
message (``time.thread_time``: the writer thread and other load on the host do not count),
and recv calls per message.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import threading
import time
from collections.abc import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from gateway.mqttio import PahoDriver


def frames(n: int) -> bytes:
    out = bytearray()
    for seq in range(n):
        topic = f"bench/dev-{seq % 1000:05d}/temp".encode()
        payload = (
            b'{"device":"dev-%05d","metric":"temp","value":%.1f,"ts":1700000000.5,"seq":%d}'
            % (
                seq % 1000,
                20.0 + (seq % 17) * 0.5,
                seq,
            )
        )
        body = len(topic).to_bytes(2, "big") + topic + b"\x00" + payload  # \x00: no properties
        out += (
            bytes((0x30, len(body)))
            if len(body) < 128
            else bytes((0x30, len(body) & 0x7F | 0x80, len(body) >> 7))
        )
        out += body
    return bytes(out)


class CountingSocket:
    """The reader's end of the pair, counting recv calls."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.recvs = 0

    def recv(self, size: int) -> bytes:
        self.recvs += 1
        return self.sock.recv(size)

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()


def feed(data: bytes) -> tuple[socket.socket, threading.Thread]:
    reader, writer = socket.socketpair()
    reader.setblocking(True)

    def write() -> None:
        writer.sendall(data)
        writer.close()

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    return reader, thread


def client() -> mqtt.Client:
    return mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench", protocol=mqtt.MQTTv5)


def run_paho(data: bytes, n: int) -> tuple[float, float]:
    reader, thread = feed(data)
    sock = CountingSocket(reader)
    c = client()
    c._sock = sock  # type: ignore[assignment]
    count = 0

    def on_message(_c: mqtt.Client, _u: object, _m: mqtt.MQTTMessage) -> None:
        nonlocal count
        count += 1

    c.on_message = on_message
    start = time.thread_time()
    while count < n:
        if c._packet_read() not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_AGAIN):
            break
    spent = time.thread_time() - start
    thread.join()
    reader.close()
    return spent / n, sock.recvs / n


async def _run_driver(data: bytes, n: int) -> tuple[float, float]:
    reader, thread = feed(data)
    sock = CountingSocket(reader)
    count = 0

    def on_publish(_t: bytes, _p: bytes, _q: int, _m: int) -> None:
        nonlocal count
        count += 1

    driver = PahoDriver(client(), on_publish=on_publish)
    driver._sock = sock
    start = time.thread_time()
    while count < n:
        driver._read()
    spent = time.thread_time() - start
    thread.join()
    reader.close()
    return spent / n, sock.recvs / n


def run_driver(data: bytes, n: int) -> tuple[float, float]:
    return asyncio.run(_run_driver(data, n))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    data = frames(args.messages)
    variants: dict[str, Callable[[bytes, int], tuple[float, float]]] = {
        "paho": run_paho,
        "driver": run_driver,
    }
    results: dict[str, list[tuple[float, float]]] = {k: [] for k in variants}
    for _ in range(args.repeat):
        for name, run in variants.items():
            results[name].append(run(data, args.messages))
    print(f"{'reader':<8} {'µs/message':>11} {'recv/message':>13}")
    for name, runs in results.items():
        us = statistics.median(r[0] for r in runs) * 1e6
        recvs = statistics.median(r[1] for r in runs)
        print(f"{name:<8} {us:>11.2f} {recvs:>13.3f}")


if __name__ == "__main__":
    main()
