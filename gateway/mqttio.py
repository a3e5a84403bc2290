"""Drive a paho-mqtt 2 client from the running asyncio loop, without paho's thread.

paho exposes its socket and three hooks (open, close, want-write); the loop watches the
socket with ``add_reader``/``add_writer`` and a one-second timer runs keepalive.

Reading is ours; writing goes through paho's out-packet queue (a caller may queue its own
frames there, see ``gateway.sinks.outbound``). A read wake-up takes up to ``RECV_BYTES``
from the socket in one ``recv`` (paho would make about three per packet) and splits it into
MQTT frames. With an ``on_puback`` handler, PUBACK frames (packet id, v5 reason code) go to
it and never reach paho. With an ``on_publish`` handler, QoS 0 and 1 PUBLISH frames are
decoded here (topic, packet id, payload; v5 properties skipped) and handed over directly:
no ``MQTTMessage``, no ``Properties`` object, no callback lock per message. Every other
frame (CONNACK, SUBACK, PINGRESP, QoS 2, a topic alias...) is fed to paho's own packet
reader, which reads it through ``_sock_recv``, so paho keeps its protocol state. Once a
wake-up's frames are done, ``after_read`` runs once, so a caller can batch work per wake-up
(e.g. acknowledgements).

The bound on each wake-up keeps the loop fair: about 600 typical readings per read, so
commits and forwarders get the loop between two reads, however much the broker has queued.

The blocking TCP connect runs on a worker thread; the hooks it fires hop to the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode

RECV_BYTES = 65536
"""Bytes read per wake-up."""
MISC_INTERVAL = 1.0

PublishHandler = Callable[[bytes, bytes, int, int], None]
"""``(topic, payload, qos, packet id)`` of one QoS 0 or 1 PUBLISH (packet id 0 at QoS 0)."""
PubackHandler = Callable[[int, int], None]
"""``(packet id, reason code)`` of one PUBACK (reason 0 when the frame has none)."""

_PUBLISH = 0x30
"""The PUBLISH type bits; with QoS 2 (and the invalid 3) bit 0x04 is also set."""
_PUBACK = 0x40
_MAX_LENGTH_BYTES = 4
_TCP_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)
"""Linux: acknowledge at once what was read instead of after up to 40 ms (delayed ACK)."""


class PahoDriver:
    """Owns the socket registrations of one paho client on one loop; ``lost`` resolves when
    the socket closes."""

    def __init__(
        self,
        client: mqtt.Client,
        after_read: Callable[[], None] | None = None,
        on_publish: PublishHandler | None = None,
        after_write: Callable[[], None] | None = None,
        on_puback: PubackHandler | None = None,
    ) -> None:
        self.client = client
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._after_read = after_read
        self._after_write = after_write
        self._on_publish = on_publish
        self._on_puback = on_puback
        self._v5 = client.protocol == mqtt.MQTTv5
        self._sock: Any = None
        self._quick_ack = False
        self._misc: asyncio.TimerHandle | None = None
        self._rest = b""  # the start of a frame whose end has not arrived yet
        self._for_paho = b""  # the one frame paho's reader is reading
        self.lost: asyncio.Future[None] = self._loop.create_future()
        client.on_socket_open = self._hook(self._opened)
        client.on_socket_close = self._hook(self._closed)
        client.on_socket_register_write = self._hook(self._want_write)
        client.on_socket_unregister_write = self._hook(self._no_write)
        # Private paho API, pinned by the tests against a real broker: paho's packet reader
        # reads through ``_sock_recv``, which we point at the frame we hand it;
        # ``_last_bytes_received`` is what its keepalive check looks at.
        client.__dict__["_sock_recv"] = self._paho_recv
        self._packet_read: Callable[[], MQTTErrorCode] = client._packet_read
        self._rc_handle: Callable[[MQTTErrorCode], MQTTErrorCode] = client._loop_rc_handle

    def _hook(self, fn: Callable[[Any], None]) -> Callable[[mqtt.Client, Any, Any], None]:
        def hook(_client: mqtt.Client, _userdata: Any, sock: Any) -> None:
            if threading.get_ident() == self._loop_thread:
                fn(sock)
            else:
                self._loop.call_soon_threadsafe(fn, sock)

        return hook

    async def connect(self, host: str, port: int, keepalive: int, **kwargs: Any) -> None:
        """TCP connect and send CONNECT (the CONNACK arrives later through ``on_connect``)."""
        rc = await asyncio.to_thread(self.client.connect, host, port, keepalive, **kwargs)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise OSError(f"connect failed: {mqtt.error_string(rc)}")

    def _opened(self, sock: Any) -> None:
        if self.lost.done() or (isinstance(sock, socket.socket) and sock.fileno() < 0):
            return
        self._sock = sock
        _no_delay(sock)
        self._quick_ack = _TCP_QUICKACK is not None and isinstance(sock, socket.socket)
        self._loop.add_reader(sock, self._read)
        if self.client.want_write():
            self._loop.add_writer(sock, self._write)
        self._misc = self._loop.call_later(MISC_INTERVAL, self._tick)

    def _closed(self, sock: Any) -> None:
        if self._sock is not None:
            self._loop.remove_reader(self._sock)
            self._loop.remove_writer(self._sock)
            self._sock = None
        if self._misc is not None:
            self._misc.cancel()
            self._misc = None
        if not self.lost.done():
            self.lost.set_result(None)

    def _want_write(self, sock: Any) -> None:
        if self._sock is not None:
            self._loop.add_writer(self._sock, self._write)

    def _no_write(self, sock: Any) -> None:
        if self._sock is not None:
            self._loop.remove_writer(self._sock)

    # ------------------------------------------------------------------ reading

    def _read(self) -> None:
        sock = self._sock
        if sock is None:
            return
        try:
            chunk: bytes = sock.recv(RECV_BYTES)
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return
        except OSError as err:  # e.g. the TLS alert of a refused client certificate
            # paho's own words, so its on_log/logger users learn why (as with paho's reader)
            self.client._easy_log(mqtt.MQTT_LOG_ERR, "failed to receive on socket: %s", err)
            self._rc_handle(MQTTErrorCode.MQTT_ERR_CONN_LOST)
            return
        if not chunk:
            self._rc_handle(MQTTErrorCode.MQTT_ERR_CONN_LOST)
            return
        self.client._last_bytes_received = time.monotonic()
        if self._quick_ack:
            try:  # Linux turns it off again by itself: renewed after each read
                sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)
            except OSError:
                self._quick_ack = False
        self._frames(self._rest + chunk if self._rest else chunk)
        if self._sock is not None and isinstance(sock, ssl.SSLSocket) and sock.pending():
            self._loop.call_soon(self._read)  # decrypted bytes wait; the socket will not wake us
        if self._after_read is not None:
            self._after_read()

    def _frames(self, data: bytes) -> None:
        """Handle every complete frame in ``data``; keep an incomplete tail for next time."""
        end = len(data)
        pos = 0
        publish = self._on_publish
        puback = self._on_puback
        v5 = self._v5
        try:
            while end - pos >= 2:
                first = data[pos]
                length = data[pos + 1]
                body = pos + 2
                if length & 0x80:  # a multi-byte remaining length
                    length &= 0x7F
                    shift = 7
                    while True:
                        if body >= end:
                            return  # the length itself is incomplete
                        byte = data[body]
                        body += 1
                        length |= (byte & 0x7F) << shift
                        if not byte & 0x80:
                            break
                        shift += 7
                        if shift >= 7 * _MAX_LENGTH_BYTES:
                            self._rc_handle(MQTTErrorCode.MQTT_ERR_PROTOCOL)
                            return
                stop = body + length
                if stop > end:
                    return
                if first == _PUBACK and puback is not None and length >= 2:
                    pos = stop
                    puback((data[body] << 8) | data[body + 1], data[body + 2] if length > 2 else 0)
                    if self._sock is None:
                        return
                    continue
                if publish is not None and first & 0xF4 == _PUBLISH and length >= 2:
                    # PUBLISH at QoS 0 or 1: topic, [packet id], [v5 properties], payload
                    qos = (first >> 1) & 3
                    at = body + 2 + ((data[body] << 8) | data[body + 1])
                    topic = data[body + 2 : at]
                    mid = 0
                    if qos:
                        mid = (data[at] << 8) | data[at + 1] if at + 2 <= stop else 0
                        at += 2
                    if v5:
                        if at < stop:
                            props = data[at]
                            at += 1
                            if props & 0x80:  # rare: 128 bytes of properties or more
                                at, props = _varint(data, at - 1)
                            at += props
                        else:
                            at = stop + 1  # no property length: malformed, paho says so
                    if topic and at <= stop and (mid or not qos):
                        pos = stop
                        publish(topic, data[at:stop], qos, mid)
                        if self._sock is None:
                            return
                        continue
                # Anything else, or a PUBLISH we do not decode (malformed, a topic alias):
                # paho's reader handles it.
                self._for_paho = data[pos:stop]
                pos = stop
                rc = self._packet_read()
                self._for_paho = b""
                if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    self._rc_handle(rc)
                    return
                if self._sock is None:
                    return
        finally:
            self._rest = data[pos:] if self._sock is not None else b""

    def _paho_recv(self, size: int) -> bytes:
        """paho's ``_sock_recv``: serve the frame handed to its reader."""
        data = self._for_paho
        if not data:
            raise BlockingIOError
        self._for_paho = data[size:]
        return data[:size]

    # ------------------------------------------------------------------ writing, keepalive

    def _write(self) -> None:
        self.write()

    def write(self) -> None:
        """Write what paho has queued, as far as the socket takes it, then ``after_write``.

        paho's ``on_publish`` is unset meanwhile: for a QoS 0 message it would build a
        ``ReasonCode`` and a ``Properties`` per message just to say "written"; callers read
        ``MQTTMessageInfo.is_published()`` instead. (QoS 1 PUBACKs arrive on the read side,
        where ``on_publish`` is in place.)
        """
        client = self.client
        callback = client.on_publish
        client.on_publish = None
        try:
            client.loop_write()
        finally:
            client.on_publish = callback
        if self._after_write is not None:
            self._after_write()

    def _tick(self) -> None:
        self._misc = None
        if self._sock is None:
            return
        self.client.loop_misc()
        if self._sock is not None:
            self._misc = self._loop.call_later(MISC_INTERVAL, self._tick)

    def close(self) -> None:
        """Disconnect (best effort) and drop every registration."""
        if self._sock is not None:
            self.client.disconnect()
            self.client.loop_write()
            self.client._sock_close()  # fires the close hook, which unregisters
        if not self.lost.done():
            self.lost.set_result(None)


def _no_delay(sock: Any) -> None:
    """Switch Nagle's algorithm off (paho leaves it on): a small packet written while an
    earlier one is unacknowledged would otherwise wait for that ACK, which the peer may delay
    by up to 40 ms (its delayed-ACK timer)."""
    with contextlib.suppress(OSError, AttributeError):  # not TCP (a unix socket, a wrapper)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _varint(data: bytes, at: int) -> tuple[int, int]:
    """(position after, value) of the MQTT variable byte integer at ``at``."""
    value = shift = 0
    while at < len(data):
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            break
        shift += 7
    return at, value
