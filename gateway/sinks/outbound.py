"""The outbound hot path of the upstream MQTT connection: PUBLISH frames written by us, PUBACKs
settled by us, paho kept for everything else (CONNECT, keepalive, DISCONNECT, QoS 2).

paho's ``publish()`` costs about 10 µs a message (an ``MQTTMessageInfo``, locks, a
``Properties`` object, a packet dict) and its PUBACK handling as much again. Here a round of
rows becomes one buffer of frames, built from cached topic bytes, and goes into paho's own
out-packet queue as a single packet: paho writes it in order with its own packets, resumes it
after a partial write and registers for writability (the driver's want-write hook) while
bytes are left. The driver decodes PUBACK frames (packet id, v5 reason code) and hands them to
``puback``.

Flow control is ours too. QoS 1 frames in flight (written, PUBACK not back) are capped at the
broker's Receive Maximum (and the sink's ``max_inflight``); rows beyond wait here, in order,
and go out as PUBACKs free room. A frame above the broker's Maximum Packet Size is refused
without being sent (the broker would drop the connection). Packet ids are drawn from one
allocator that paho draws from too (its ``_mid_generate`` is pointed at it), and a draw skips
every id still in flight, so our ids and paho's never collide.

A QoS 0 row is acknowledged once its buffer is written to the socket. When the connection
drops every open row is failed (``Outcome.UNCONFIRMED``), so the forwarder keeps it in the
outbox and sends it again: at least once, in order.
"""

from __future__ import annotations

import asyncio
import struct
from collections import deque
from collections.abc import Sequence
from typing import Any

import paho.mqtt.client as mqtt

from gateway.sinks.forwarder import Outcome
from gateway.store.store import OutboxRow

MAX_PACKET_ID = 65535
TOPIC_CACHE_SIZE = 4096
"""Encoded topics kept (cleared when full: topics are few and repeat)."""
REFUSED_FROM = 0x80
"""PUBACK reason codes from here on are failures (MQTT v5 §2.4)."""

_H2 = struct.Struct(">BB").pack
_H3 = struct.Struct(">BBB").pack
_ID_V5 = struct.Struct(">HB").pack  # packet id, then an empty property block
_ID_V3 = struct.Struct(">H").pack


class Round:
    """The outcomes of one published batch; ``done`` resolves when none is left open (or at
    ``finish``, the open ones unconfirmed)."""

    __slots__ = ("done", "left", "outcomes", "timer")

    def __init__(self, n: int, done: asyncio.Future[list[Outcome]]) -> None:
        self.outcomes: list[Outcome | None] = [None] * n
        self.left = n
        self.done = done
        self.timer: asyncio.TimerHandle | None = None

    def settle(self, index: int, outcome: Outcome) -> None:
        if self.outcomes[index] is None:
            self.outcomes[index] = outcome
            self.left -= 1
            if not self.left:
                self.finish()

    def finish(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if not self.done.done():
            self.done.set_result([o or Outcome.UNCONFIRMED for o in self.outcomes])


def fixed_header(first: int, remaining: int) -> bytes:
    """The first byte and the variable byte integer of the remaining length."""
    if remaining < 128:
        return _H2(first, remaining)
    if remaining < 16384:
        return _H3(first, (remaining & 0x7F) | 0x80, remaining >> 7)
    out = bytearray((first,))
    while True:
        byte = remaining & 0x7F
        remaining >>= 7
        out.append(byte | 0x80 if remaining else byte)
        if not remaining:
            return bytes(out)


def publish_frame(topic: str, payload: bytes, qos: int, mid: int, retain: bool, v5: bool) -> bytes:
    """One PUBLISH frame (QoS 0 or 1; no properties): the reference the fast path matches."""
    name = topic.encode()
    var = len(name).to_bytes(2, "big") + name
    if qos:
        var += mid.to_bytes(2, "big")
    if v5:
        var += b"\x00"
    first = 0x30 | (qos << 1) | int(retain)
    return fixed_header(first, len(var) + len(payload)) + var + payload


class Outbound:
    """Frames, writes and settles the rows of one connection; see the module docstring."""

    def __init__(
        self,
        client: mqtt.Client,
        write: Any,
        *,
        retain: bool,
        receive_maximum: int,
        max_packet: int | None,
    ) -> None:
        self._client = client
        self._write = write
        """Writes what paho's out-packet queue holds (``PahoDriver.write``)."""
        self._retain = int(retain)
        self._v5 = client.protocol == mqtt.MQTTv5
        self._window = max(1, receive_maximum)
        self._max_packet = max_packet
        self._pending: dict[int, tuple[Round, int]] = {}
        """Packet id -> round and place, of every QoS 1 and 2 message in flight."""
        self._paho_ids: set[int] = set()
        """Ids paho drew (e.g. a SUBSCRIBE): never ours while this connection lives."""
        self._last_id = 0
        self._waiting: deque[list[Any]] = deque()
        """``[round, rows, next index]`` of rows not framed yet, in order."""
        self._unwritten: deque[tuple[dict[str, Any], Round, list[int]]] = deque()
        """paho packets holding QoS 0 frames, with the rows to acknowledge once written."""
        self._topics: dict[str, bytes] = {}
        self.closed = False
        client.__dict__["_mid_generate"] = self._paho_id

    # ------------------------------------------------------------------ packet ids

    def _next_id(self) -> int:
        """The next packet id not in flight (ours or paho's)."""
        mid = self._last_id
        pending, paho = self._pending, self._paho_ids
        for _ in range(MAX_PACKET_ID):
            mid = mid + 1 if mid < MAX_PACKET_ID else 1
            if mid not in pending and mid not in paho:
                self._last_id = mid
                return mid
        raise RuntimeError("no free MQTT packet id")  # the window is far below 65535

    def _paho_id(self) -> int:
        mid = self._next_id()
        self._paho_ids.add(mid)
        return mid

    # ------------------------------------------------------------------ sending

    def send(self, round_: Round, rows: Sequence[OutboxRow]) -> None:
        """Frame and write ``rows`` after everything sent before, as far as the window goes."""
        self._waiting.append([round_, rows, 0])
        self._pump()

    def _topic(self, topic: str) -> bytes:
        name = topic.encode()
        encoded = len(name).to_bytes(2, "big") + name
        if len(self._topics) >= TOPIC_CACHE_SIZE:
            self._topics.clear()
        self._topics[topic] = encoded
        return encoded

    def _pump(self) -> None:
        """Frame waiting rows while the window has room; hand the frames to paho's queue."""
        if self.closed:
            return
        waiting, pending, topics = self._waiting, self._pending, self._topics
        room = self._window - len(pending)
        limit = self._max_packet or 0x7FFFFFFF
        retain, v5 = self._retain, self._v5
        id_bytes = 3 if v5 else 2
        pack_id = _ID_V5 if v5 else _ID_V3
        out = bytearray()
        acks: list[tuple[Round, list[int]]] = []  # QoS 0 rows in ``out``
        while waiting:
            chunk = waiting[0]
            round_: Round = chunk[0]
            rows: Sequence[OutboxRow] = chunk[1]
            i: int = chunk[2]
            n = len(rows)
            zero: list[int] = []
            while i < n:
                row = rows[i]
                qos = row.qos
                if qos and room <= 0:
                    break
                t = topics.get(row.topic)
                if t is None:
                    t = self._topic(row.topic)
                payload = row.payload
                remaining = len(t) + len(payload) + (id_bytes if qos else v5)
                if remaining + 5 > limit and len(fixed_header(0, remaining)) + remaining > limit:
                    round_.settle(i, Outcome.REFUSED)  # the broker would drop the connection
                    i += 1
                    continue
                if qos == 2:  # rare: paho runs the PUBREC/PUBREL/PUBCOMP exchange
                    self._flush(out, acks)
                    out, acks = bytearray(), []
                    self._publish_qos2(round_, i, row)
                    if self.closed:
                        return
                    room -= 1
                    i += 1
                    continue
                first = 0x30 | (qos << 1) | retain
                if remaining < 128:
                    out += _H2(first, remaining)
                elif remaining < 16384:
                    out += _H3(first, (remaining & 0x7F) | 0x80, remaining >> 7)
                else:
                    out += fixed_header(first, remaining)
                out += t
                if qos:
                    mid = self._last_id + 1
                    if mid > MAX_PACKET_ID or mid in pending or mid in self._paho_ids:
                        mid = self._next_id()
                    self._last_id = mid
                    pending[mid] = (round_, i)
                    room -= 1
                    out += pack_id(mid, 0) if v5 else pack_id(mid)
                else:
                    if v5:
                        out += b"\x00"
                    zero.append(i)
                out += payload
                i += 1
            if zero:
                acks.append((round_, zero))
            if i < n:
                chunk[2] = i
                break
            waiting.popleft()
        self._flush(out, acks)

    def _publish_qos2(self, round_: Round, index: int, row: OutboxRow) -> None:
        info = self._client.publish(row.topic, row.payload, qos=2, retain=bool(self._retain))
        self._paho_ids.discard(info.mid)
        if info.rc == mqtt.MQTT_ERR_SUCCESS:
            self._pending[info.mid] = (round_, index)
        else:
            round_.settle(index, Outcome.UNCONFIRMED)

    def _flush(self, out: bytearray, acks: list[tuple[Round, list[int]]]) -> None:
        if not out:
            return
        packet = {
            "command": 0,  # not PUBLISH nor DISCONNECT: paho only writes it
            "mid": 0,
            "qos": 0,
            "pos": 0,
            "to_process": len(out),
            "packet": out,
            "info": None,
        }
        self._client._out_packet.append(packet)  # type: ignore[arg-type]
        for round_, indices in acks:
            self._unwritten.append((packet, round_, indices))
        self._write()  # also runs ``written``

    def written(self) -> None:
        """After a write: acknowledge the QoS 0 rows whose bytes are all in the socket."""
        unwritten = self._unwritten
        while unwritten and unwritten[0][0]["to_process"] == 0:
            _, round_, indices = unwritten.popleft()
            for i in indices:
                round_.settle(i, Outcome.ACKED)

    # ------------------------------------------------------------------ acknowledgements

    def puback(self, mid: int, reason: int) -> None:
        """A PUBACK frame, decoded by the driver."""
        entry = self._pending.pop(mid, None)
        if entry is not None:
            entry[0].settle(entry[1], Outcome.REFUSED if reason >= REFUSED_FROM else Outcome.ACKED)

    def completed(self, mid: int, refused: bool) -> None:
        """paho's word on a QoS 2 message (PUBCOMP, or a PUBREC with a failure code)."""
        entry = self._pending.pop(mid, None)
        if entry is not None:
            entry[0].settle(entry[1], Outcome.REFUSED if refused else Outcome.ACKED)

    def after_read(self) -> None:
        """Once per read wake-up: PUBACKs may have opened the window."""
        if self._waiting and len(self._pending) < self._window:
            self._pump()

    # ------------------------------------------------------------------ endings

    def forget(self, round_: Round) -> None:
        """A round given up on (ack timeout): its rows not framed yet are never sent. Its
        frames in flight keep their place in the window until the broker answers them or the
        connection ends."""
        self._waiting = deque(c for c in self._waiting if c[0] is not round_)
        self._unwritten = deque(u for u in self._unwritten if u[1] is not round_)

    def fail_all(self) -> None:
        """The connection is gone: every open row is unconfirmed."""
        self.closed = True
        pending, self._pending = self._pending, {}
        unwritten, self._unwritten = self._unwritten, deque()
        waiting, self._waiting = self._waiting, deque()
        for round_, index in pending.values():
            round_.settle(index, Outcome.UNCONFIRMED)
        for _, round_, indices in unwritten:
            for i in indices:
                round_.settle(i, Outcome.UNCONFIRMED)
        for round_, rows, start in waiting:
            for i in range(start, len(rows)):
                round_.settle(i, Outcome.UNCONFIRMED)
