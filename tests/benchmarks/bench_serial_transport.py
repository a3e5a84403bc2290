"""Benchmark: reading a serial port with pyserial-asyncio-fast vs. a reader thread.

Not a pytest test (pytest only collects ``test_*.py``). Run it from the repository root::

    .venv/bin/python tests/benchmarks/bench_serial_transport.py [--lines N] [--repeat R]

Every run creates a fresh pseudo-terminal (``os.openpty``, slave set raw, as
``simulators.serial_device.SerialDevice`` does) and a *child process* that writes ``--lines``
CSV lines to the master as fast as the pty takes them: a blocking write, so a full pty is
back-pressure, never loss. The child's CPU is not counted, and it only waits for the reader,
so the reader is always the slower side. The "ceiling" row (a bare blocking ``os.read`` loop
that only counts newlines) shows what the writer and the pty deliver.

Variants (all frame lines with the same loop as ``gateway.sources.serial.LineFramer`` and
count them on the event loop):

* ``a`` asyncio + pyserial-asyncio-fast ``asyncio.Protocol``, ``transport._max_read_size =
  65536`` as the gateway sets it; framing in ``data_received``. ``a1k``: the same with the
  library's default ``_max_read_size`` (1024), to show what the gateway's setting buys.
* ``b`` a reader thread, ``serial.Serial(path, timeout=0.1).read(in_waiting or 1)``, framing
  on the thread and one ``loop.call_soon_threadsafe`` per chunk with that chunk's lines.
* ``b64k`` as ``b`` but ``read(65536)``: pyserial keeps reading until 64 KiB or the timeout,
  so chunks are bigger but a quiet port delays lines by up to the timeout (0.05 s here).
* ``c`` as ``b`` but one ``call_soon_threadsafe`` per line.

Figures per variant: median over ``--repeat`` runs (runs are interleaved round-robin) of
lines/s, CPU seconds of this process (all threads, ``time.process_time``) per 100k lines,
reads (chunks) per 100k lines, event-loop hand-offs per 100k lines, context switches of this
process per 100k lines (``getrusage``; a proxy for wake-ups), and mean KiB per read. Each
column is its own median. Wall-clock rates swing with other load on the host; CPU per 100k
lines is the steadier figure.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import resource
import statistics
import subprocess
import sys
import threading
import time
import tty
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from typing import IO

import serial
import serial_asyncio_fast

MAX_READ = 65536
PER = 100_000
BAUD = 115200
RUN_TIMEOUT = 30.0
THREAD_TIMEOUT = 0.1
READ64K_TIMEOUT = 0.05


def make_payload(lines: int) -> bytes:
    """``lines`` CSV lines like ``dev-001,temperature,21.53,1763850000.123,42``."""
    return "".join(
        f"dev-{i % 16:03d},temperature,{20 + (i % 1000) / 100:.2f},"
        f"{1763850000 + i / 1000:.3f},{i}\n"
        for i in range(lines)
    ).encode()


# -- the writer (child process)


def writer_main(fd: int, lines: int) -> int:
    """Child process: build the payload, say ready, wait for ``g``, write it all, exit."""
    payload = make_payload(lines)
    os.set_blocking(fd, True)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    if sys.stdin.buffer.read(1) != b"g":
        return 1
    view = memoryview(payload)
    while view:
        view = view[os.write(fd, view) :]  # blocks while the pty is full: back-pressure
    return 0


class Writer:
    """A writer child process on the pty master, started and parked before measuring."""

    def __init__(self, master: int, lines: int) -> None:
        script = os.path.abspath(__file__)
        self.proc = subprocess.Popen(
            [sys.executable, script, "--writer-fd", str(master), "--lines", str(lines)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            pass_fds=(master,),
        )
        self._stdin: IO[bytes] = _pipe(self.proc.stdin)
        self._stdout: IO[bytes] = _pipe(self.proc.stdout)
        if self._stdout.readline() != b"ready\n":
            self.kill()
            raise RuntimeError("writer did not start")

    def go(self) -> None:
        self._stdin.write(b"g")
        self._stdin.flush()

    def finish(self) -> None:
        self._stdin.close()
        rc = self.proc.wait(10)
        self._stdout.close()
        if rc != 0:
            raise RuntimeError(f"writer exited with {rc}")

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self._stdin.close()
        self._stdout.close()


def _pipe(stream: IO[bytes] | None) -> IO[bytes]:
    if stream is None:
        raise RuntimeError("no pipe")
    return stream


class Pty:
    """A pty pair; this process keeps both ends open so readers may come and go."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)

    def close(self) -> None:
        os.close(self.master)
        os.close(self.slave)


# -- measuring


@dataclass
class Sample:
    lines: int
    bytes: int
    wall: float
    cpu: float
    reads: int
    hops: int
    ctxsw: int


@dataclass
class Counters:
    lines: int = 0
    bytes: int = 0
    reads: int = 0
    hops: int = 0


class Meter:
    """Wall clock, CPU time and context switches of this process (all its threads)."""

    def __init__(self) -> None:
        self._wall = self._cpu = 0.0
        self._ctx = 0

    @staticmethod
    def _ctxsw() -> int:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return ru.ru_nvcsw + ru.ru_nivcsw

    def start(self) -> None:
        self._ctx = self._ctxsw()
        self._cpu = time.process_time()
        self._wall = time.perf_counter()

    def stop(self, c: Counters) -> Sample:
        wall = time.perf_counter() - self._wall
        cpu = time.process_time() - self._cpu
        ctx = self._ctxsw() - self._ctx
        return Sample(c.lines, c.bytes, wall, cpu, c.reads, c.hops, ctx)


class LineSplitter:
    """The framing loop of ``LineFramer.data_received`` (without the over-long checks)."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def split(self, data: bytes) -> list[bytes]:
        buf = self._buf
        buf += data
        lines: list[bytes] = []
        start = 0
        while (end := buf.find(b"\n", start)) >= 0:
            lines.append(bytes(buf[start:end]))
            start = end + 1
        del buf[:start]
        return lines


class LineSink:
    """Runs on the event loop: counts lines, resolves ``done`` at the target."""

    def __init__(self, target: int, counters: Counters) -> None:
        self.target = target
        self.counters = counters
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def line(self, line: bytes) -> None:
        c = self.counters
        c.lines += 1
        if c.lines == self.target:
            self.done.set_result(None)

    def batch(self, lines: list[bytes]) -> None:
        for line in lines:
            self.line(line)


async def _wait(done: asyncio.Future[None], c: Counters, target: int) -> None:
    try:
        await asyncio.wait_for(asyncio.shield(done), RUN_TIMEOUT)
    except TimeoutError:
        raise RuntimeError(f"only {c.lines} of {target} lines in {RUN_TIMEOUT}s") from None


# -- (a) asyncio + pyserial-asyncio-fast


class CountingProtocol(asyncio.Protocol):
    def __init__(self, sink: LineSink) -> None:
        self._sink = sink
        self._splitter = LineSplitter()
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        c = self._sink.counters
        c.reads += 1
        c.hops += 1  # one selector callback per read
        c.bytes += len(data)
        for line in self._splitter.split(data):
            self._sink.line(line)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)


async def run_protocol(pty: Pty, writer: Writer, target: int, max_read: int) -> Sample:
    loop = asyncio.get_running_loop()
    counters = Counters()
    sink = LineSink(target, counters)
    protocol = CountingProtocol(sink)
    transport, _ = await serial_asyncio_fast.create_serial_connection(
        loop, lambda: protocol, pty.path, baudrate=BAUD
    )
    transport._max_read_size = max_read  # the gateway sets 65536; the library default is 1024
    await asyncio.sleep(0)  # let the transport register its reader
    meter = Meter()
    meter.start()
    writer.go()
    try:
        await _wait(sink.done, counters, target)
        return meter.stop(counters)
    finally:
        transport.close()
        await protocol.lost


# -- (b), (b64k), (c) a reader thread handing lines to the loop


def read_loop(
    port: serial.Serial,
    loop: asyncio.AbstractEventLoop,
    sink: LineSink,
    mode: str,
    stop: threading.Event,
) -> None:
    c = sink.counters
    splitter = LineSplitter()
    hop = loop.call_soon_threadsafe
    while not stop.is_set():
        data: bytes = port.read(MAX_READ) if mode == "b64k" else port.read(port.in_waiting or 1)
        if not data:
            continue  # timeout or cancel_read()
        c.reads += 1
        c.bytes += len(data)
        lines = splitter.split(data)
        if mode == "c":
            for line in lines:
                c.hops += 1
                hop(sink.line, line)
        elif lines:
            c.hops += 1
            hop(sink.batch, lines)


async def run_thread(pty: Pty, writer: Writer, target: int, mode: str) -> Sample:
    loop = asyncio.get_running_loop()
    counters = Counters()
    sink = LineSink(target, counters)
    timeout = READ64K_TIMEOUT if mode == "b64k" else THREAD_TIMEOUT
    port = serial.Serial(pty.path, baudrate=BAUD, timeout=timeout)
    stop = threading.Event()
    thread = threading.Thread(
        target=read_loop, args=(port, loop, sink, mode, stop), name=f"serial-{mode}"
    )
    thread.start()
    meter = Meter()
    meter.start()
    writer.go()
    try:
        await _wait(sink.done, counters, target)
        return meter.stop(counters)
    finally:
        stop.set()
        port.cancel_read()
        await asyncio.to_thread(thread.join, 5)
        port.close()


# -- ceiling: what the writer and the pty deliver to a minimal reader


def run_ceiling(pty: Pty, writer: Writer, target: int) -> Sample:
    fd = os.open(pty.path, os.O_RDONLY | os.O_NOCTTY)
    c = Counters()
    deadline = time.monotonic() + RUN_TIMEOUT
    meter = Meter()
    meter.start()
    writer.go()
    try:
        while c.lines < target:
            data = os.read(fd, MAX_READ)
            c.reads += 1
            c.bytes += len(data)
            c.lines += data.count(b"\n")
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {c.lines} of {target} lines in {RUN_TIMEOUT}s")
        return meter.stop(c)
    finally:
        os.close(fd)


# -- driver


@dataclass(frozen=True)
class Variant:
    key: str
    label: str
    run: Callable[[Pty, Writer, int], Sample]


VARIANTS = (
    Variant(
        "a",
        "asyncio + pyserial-asyncio-fast Protocol",
        lambda p, w, n: asyncio.run(run_protocol(p, w, n, MAX_READ)),
    ),
    Variant(
        "a1k",
        "as a, library default _max_read_size 1024",
        lambda p, w, n: asyncio.run(run_protocol(p, w, n, 1024)),
    ),
    Variant(
        "b",
        "thread read(in_waiting or 1), hop/chunk",
        lambda p, w, n: asyncio.run(run_thread(p, w, n, "b")),
    ),
    Variant(
        "b64k",
        "thread read(65536), hop/chunk",
        lambda p, w, n: asyncio.run(run_thread(p, w, n, "b64k")),
    ),
    Variant(
        "c",
        "thread read(in_waiting or 1), hop/line",
        lambda p, w, n: asyncio.run(run_thread(p, w, n, "c")),
    ),
    Variant("ceiling", "ceiling: blocking os.read, count only", run_ceiling),
)


def run_once(variant: Variant, lines: int) -> Sample:
    pty = Pty()
    try:
        writer = Writer(pty.master, lines)
        try:
            sample = variant.run(pty, writer, lines)
        except BaseException:
            writer.kill()
            raise
        writer.finish()
        if sample.lines != lines:
            raise RuntimeError(f"{variant.key}: counted {sample.lines} lines, wrote {lines}")
        return sample
    finally:
        pty.close()


def print_table(results: dict[str, list[Sample]], variants: list[Variant]) -> None:
    head = (
        f"{'variant':<8} {'description':<42} {'lines/s':>10} {'CPU s/100k':>10} "
        f"{'reads/100k':>10} {'hops/100k':>10} {'ctxsw/100k':>10} {'KiB/read':>8}"
    )
    print(head)
    print("-" * len(head))
    for v in variants:
        samples = results[v.key]

        def med(f: Callable[[Sample], float], samples: list[Sample] = samples) -> float:
            return statistics.median(f(s) for s in samples)

        print(
            f"{v.key:<8} {v.label:<42} {med(lambda s: s.lines / s.wall):>10,.0f} "
            f"{med(lambda s: s.cpu * PER / s.lines):>10.3f} "
            f"{med(lambda s: s.reads * PER / s.lines):>10,.0f} "
            f"{med(lambda s: s.hops * PER / s.lines):>10,.0f} "
            f"{med(lambda s: s.ctxsw * PER / s.lines):>10,.0f} "
            f"{med(lambda s: s.bytes / s.reads / 1024):>8.1f}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=200_000, help="lines per run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per variant (median)")
    parser.add_argument(
        "--only", nargs="+", choices=[v.key for v in VARIANTS], help="variants to run"
    )
    parser.add_argument("--writer-fd", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.writer_fd is not None:
        return writer_main(args.writer_fd, args.lines)

    variants = [v for v in VARIANTS if args.only is None or v.key in args.only]
    print(
        f"Python {platform.python_version()}, pyserial {version('pyserial')}, "
        f"pyserial-asyncio-fast {version('pyserial-asyncio-fast')}, "
        f"{platform.system()} {platform.release()}, {os.cpu_count()} CPUs, "
        f"load {os.getloadavg()[0]:.2f}; "
        f"{args.lines:,} lines x {args.repeat} runs, "
        f"{len(make_payload(args.lines)) / args.lines:.1f} B/line",
        flush=True,
    )
    results: dict[str, list[Sample]] = {v.key: [] for v in variants}
    t0 = time.perf_counter()
    for rep in range(args.repeat):
        for v in variants:  # round-robin, so drift hits every variant alike
            s = run_once(v, args.lines)
            results[v.key].append(s)
            print(
                f"  run {rep + 1} {v.key:<8} {s.lines / s.wall:>10,.0f} lines/s "
                f"cpu {s.cpu:6.3f}s reads {s.reads:>7,} hops {s.hops:>7,} ctxsw {s.ctxsw:>7,}",
                flush=True,
            )
    print(f"medians of {args.repeat} runs ({time.perf_counter() - t0:.1f} s in all):")
    print_table(results, variants)
    return 0


if __name__ == "__main__":
    sys.exit(main())
