"""Just enough MQTT 3.1.1 framing for the benchmark's load generator and collector.

The harness must cost far less per message than what it measures, or it steals the very
CPU it is measuring on a 2-core box: paho spends about 19 µs per message, this framing about
1 µs (whole batches of PUBLISH packets go out in one ``sendall``, and received bytes are
split into packets without a per-packet ``recv``). It is not a client: no reconnects, no
session state, QoS 0 and 1 only, for talking to our own private mosquitto on loopback.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from collections.abc import Iterator

CONNECT, CONNACK, PUBLISH, PUBACK, SUBSCRIBE, SUBACK, PINGREQ, DISCONNECT = (
    1,
    2,
    3,
    4,
    8,
    9,
    12,
    14,
)


def _length(n: int) -> bytes:
    """MQTT's variable-length "remaining length" encoding."""
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


def _string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("!H", len(raw)) + raw


def publish_packet(topic: bytes, payload: bytes, qos: int = 0, packet_id: int = 0) -> bytes:
    """One PUBLISH packet; ``topic`` is already UTF-8."""
    head = struct.pack("!H", len(topic)) + topic
    if qos:
        head += struct.pack("!H", packet_id)
    return bytes((PUBLISH << 4 | qos << 1,)) + _length(len(head) + len(payload)) + head + payload


_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)  # Linux only


class Connection:
    """A blocking MQTT connection over TCP with a receive buffer split into packets."""

    def __init__(self, host: str, port: int, client_id: str, keepalive: int = 600) -> None:
        self.sock = socket.create_connection((host, port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self._buf = bytearray()
        variable = _string("MQTT") + bytes((4, 0x02)) + struct.pack("!H", keepalive)
        body = variable + _string(client_id)
        self.sock.sendall(bytes((CONNECT << 4,)) + _length(len(body)) + body)
        kind, data = self.read_packet()
        if kind != CONNACK or data[1] != 0:
            raise ConnectionError(f"broker refused the connection: {kind} {data!r}")
        self.sock.settimeout(None)

    def subscribe(self, topic: str, qos: int = 0) -> None:
        body = struct.pack("!H", 1) + _string(topic) + bytes((qos,))
        self.sock.sendall(bytes((SUBSCRIBE << 4 | 0x02,)) + _length(len(body)) + body)
        while True:
            kind, _ = self.read_packet()
            if kind == SUBACK:
                return

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def ping(self) -> None:
        self.sock.sendall(bytes((PINGREQ << 4, 0)))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(bytes((DISCONNECT << 4, 0)))
        self.sock.close()

    def read_packet(self) -> tuple[int, bytes]:
        """Block until one whole packet is buffered; (type, body)."""
        while True:
            for first, body in self.packets():
                return first >> 4, body
            if not self.fill():
                raise ConnectionError("broker closed the connection")

    def fill(self, size: int = 1 << 18) -> int:
        """Receive once into the buffer; bytes received (0: connection closed)."""
        chunk = self.sock.recv(size)
        if _QUICKACK is not None and chunk:
            # ACK at once: mosquitto Nagles by default, so a delayed ACK of ours (up to 40 ms)
            # would hold back what it sends next and show up as the measured system's latency
            self.sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
        self._buf += chunk
        return len(chunk)

    def packets(self) -> Iterator[tuple[int, bytes]]:
        """Every whole packet in the buffer as (first header byte, body); consumes them."""
        buf = self._buf
        pos, end = 0, len(buf)
        try:
            while end - pos >= 2:
                first = buf[pos]
                length, shift, i = 0, 0, pos + 1
                while True:
                    if i >= end:
                        return
                    byte = buf[i]
                    length |= (byte & 0x7F) << shift
                    i += 1
                    if not byte & 0x80:
                        break
                    shift += 7
                if i + length > end:
                    return
                body = bytes(buf[i : i + length])
                pos = i + length
                yield first, body
        finally:
            del buf[:pos]


def split_publish(first: int, body: bytes) -> tuple[bytes, bytes, int, int]:
    """(topic, payload, qos, packet id) of a PUBLISH packet's fixed-header byte and body."""
    qos = (first >> 1) & 3
    n = (body[0] << 8) | body[1]
    topic = body[2 : 2 + n]
    pos = 2 + n
    packet_id = 0
    if qos:
        packet_id = (body[pos] << 8) | body[pos + 1]
        pos += 2
    return topic, body[pos:], qos, packet_id


def puback(packet_id: int) -> bytes:
    return bytes((PUBACK << 4, 2)) + struct.pack("!H", packet_id)
