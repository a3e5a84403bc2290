"""A TCP proxy that can blackhole: stands in for a network partition without iptables.

While partitioned, bytes in both directions are read and thrown away and nothing is
answered, as if packets were dropped on the wire; new connections are accepted and then
hear nothing. ``heal`` closes the connections that lived through the partition (their byte
streams lost data, as a real one would have) and forwards normally again.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading

from tests.conftest import free_port


class BlackholeProxy:
    def __init__(self, target_port: int, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = free_port()
        self._target = target_port
        self._partitioned = False
        self.rate_bps: float | None = None
        """When set, each direction forwards at most this many bytes per second (slow link)."""
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(10), "proxy did not start"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            asyncio.start_server(self._client, self.host, self.port)
        )
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            server.close()
            for w in list(self._writers):
                w.close()
            self._loop.run_until_complete(asyncio.sleep(0))
            self._loop.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection(self.host, self._target)
        except OSError:
            writer.close()
            return
        self._writers.add(up_writer)
        await asyncio.gather(
            self._pump(reader, up_writer), self._pump(up_reader, writer), return_exceptions=True
        )
        for w in (writer, up_writer):
            self._writers.discard(w)
            w.close()

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        while data := await src.read(65536):
            if self._partitioned:
                continue  # dropped on the wire
            dst.write(data)
            await dst.drain()
            if self.rate_bps:
                await asyncio.sleep(len(data) / self.rate_bps)
        with contextlib.suppress(OSError):
            dst.close()

    def partition(self) -> None:
        self._partitioned = True

    def heal(self) -> None:
        def close_all() -> None:
            for w in list(self._writers):
                w.close()
            self._partitioned = False

        self.rate_bps: float | None = None
        """When set, each direction forwards at most this many bytes per second (slow link)."""

        self._loop.call_soon_threadsafe(close_all)

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
