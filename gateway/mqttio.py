"""Drive a paho-mqtt 2 client from the running asyncio loop, without paho's thread.

paho exposes its socket and three hooks (open, close, want-write); the loop watches the
socket with ``add_reader``/``add_writer`` and a one-second timer runs keepalive. A read
wake-up processes every packet already buffered (up to ``MAX_PACKETS_PER_WAKEUP``) and then
calls ``after_read`` once, so a caller can batch work per wake-up (e.g. acknowledgements).

The blocking TCP connect runs on a worker thread; the hooks it fires hop to the loop.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode

MAX_PACKETS_PER_WAKEUP = 4096
MISC_INTERVAL = 1.0


class PahoDriver:
    """Owns the socket registrations of one paho client on one loop; ``lost`` resolves when
    the socket closes."""

    def __init__(self, client: mqtt.Client, after_read: Callable[[], None] | None = None) -> None:
        self.client = client
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._after_read = after_read
        self._sock: Any = None
        self._misc: asyncio.TimerHandle | None = None
        self.lost: asyncio.Future[None] = self._loop.create_future()
        client.on_socket_open = self._hook(self._opened)
        client.on_socket_close = self._hook(self._closed)
        client.on_socket_register_write = self._hook(self._want_write)
        client.on_socket_unregister_write = self._hook(self._no_write)
        # paho's own reader is private API: it reports EAGAIN, which loop_read() hides, so we
        # can read every buffered packet per wake-up without a syscall per packet wasted.
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

    def _read(self) -> None:
        read = self._packet_read
        for _ in range(MAX_PACKETS_PER_WAKEUP):
            rc = read()
            if rc == MQTTErrorCode.MQTT_ERR_AGAIN:
                break
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                self._rc_handle(rc)
                break
        if self._after_read is not None:
            self._after_read()

    def _write(self) -> None:
        self.client.loop_write()

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
