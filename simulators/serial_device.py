"""A simulated serial sensor on a pseudo-terminal.

:class:`SerialDevice` owns a pty pair: it writes to the master, and a reader opens the slave
(``/dev/pts/N``, see :attr:`SerialDevice.path`) as if it were a USB serial port. The slave is
set raw (no echo, no CR/LF translation) and the simulator keeps its own slave fd open, so the
port stays up between readers. With ``link``, a symlink (think ``/dev/serial/by-id/...``)
always points at the current slave; it is replaced atomically and removed while unplugged.

Line formats (one reading per ``\\n``-terminated line, UTF-8):

* ``csv``  -- ``device,metric,value,ts,seq`` without a header, e.g.
  ``dev-001,temperature,21.37,1700000000.25,17``
* ``kv``   -- ``device=dev-001 metric=temperature value=21.37 ts=1700000000.25 seq=17``
* ``json`` -- ``{"device":"dev-001","metric":"temperature","value":21.37,"ts":...,"seq":17}``

``ts`` is UTC epoch seconds; ``seq`` counts the lines of one device+metric from 1 and keeps
counting across unplugs.

Back-pressure: a pty holds only some 20 kB; if nobody reads the slave, a blocking write would
hang the simulator. The master is non-blocking instead: a write waits at most
``write_timeout`` for room, then the rest of the line is dropped and counted in
:attr:`SerialDevice.lines_dropped`. Once a write has timed out, later writes do not wait until
one gets through again. A line cut short by a timeout is finished before anything else is
written, so a reader never sees two lines spliced together.

Unplugging closes both pty fds: a reader gets ``EIO``/hangup (pyserial raises
``SerialException``) and buffered data is lost, like a real cable pull. Replugging creates a
*new* pty, usually with another name, and re-points the link.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import random
import select
import struct
import termios
import threading
import time
import tty
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal

import orjson

from simulators.pacing import Pacer
from simulators.signals import Fault, ReadingSource, SimReading, check_faults, device_names
from simulators.summary import RunSummary

__all__ = [
    "FORMATS",
    "GARBAGE_KINDS",
    "LineFormat",
    "SerialDevice",
    "SerialSummary",
    "format_line",
    "run_serial",
]

LineFormat = Literal["csv", "kv", "json"]
FORMATS: tuple[LineFormat, ...] = ("csv", "kv", "json")
GARBAGE_KINDS = ("binary", "overlong", "split")
"""Rotation of ``garbage_every``: a line of non-UTF-8 bytes; 10 kB without a newline, then the
newline in a second write; the next good line written in two halves (valid, but split)."""
OVERLONG_SIZE = 10 * 1024


def _queued_bytes(slave: int) -> int:
    """Bytes waiting in the slave's input queue (not yet read by the reader)."""
    raw = fcntl.ioctl(slave, termios.FIONREAD, b"\0\0\0\0")
    return int(struct.unpack("i", raw)[0])


def format_line(reading: SimReading, fmt: LineFormat) -> bytes:
    """One reading as a ``\\n``-terminated line in ``fmt``."""
    r = reading
    if fmt == "csv":
        return f"{r.device},{r.metric},{r.value!r},{r.ts!r},{r.seq}\n".encode()
    if fmt == "kv":
        return (
            f"device={r.device} metric={r.metric} value={r.value!r} ts={r.ts!r} seq={r.seq}\n"
        ).encode()
    if fmt == "json":
        return orjson.dumps(r.as_dict()) + b"\n"
    raise ValueError(f"unknown line format {fmt!r} (expected one of: {', '.join(FORMATS)})")


class SerialDevice:
    """A pty standing in for a serial port; thread-safe.

    Use as a context manager, or call :meth:`open` and :meth:`close`.
    """

    def __init__(self, link: str | os.PathLike[str] | None = None, *, write_timeout: float = 0.5):
        self.link = None if link is None else Path(link)
        self.write_timeout = write_timeout
        self.lines_written = 0
        self.lines_dropped = 0
        self.bytes_written = 0
        self._lock = threading.RLock()
        self._master: int | None = None
        self._slave: int | None = None
        self._path: str | None = None
        self._pending = b""
        self._stalled = False

    # -- lifecycle

    @property
    def path(self) -> str:
        """The slave device a reader opens (``/dev/pts/N``); raises when unplugged."""
        if self._path is None:
            raise RuntimeError("serial device is unplugged")
        return self._path

    @property
    def plugged(self) -> bool:
        """Whether a pty currently exists."""
        return self._master is not None

    def open(self) -> str:
        """Create the pty (if not open yet), point the link at it, return the slave path."""
        with self._lock:
            if self._master is not None:
                return self.path
            master, slave = os.openpty()
            tty.setraw(slave)
            os.set_blocking(master, False)
            self._master, self._slave = master, slave
            self._path = os.ttyname(slave)
            self._pending = b""
            self._stalled = False
            if self.link is not None:
                tmp = self.link.with_name(f".{self.link.name}.{os.getpid()}.tmp")
                tmp.unlink(missing_ok=True)
                os.symlink(self._path, tmp)
                os.replace(tmp, self.link)
            return self._path

    def unplug(self) -> None:
        """Pull the cable: remove the link and close both fds; readers see a hangup."""
        with self._lock:
            if self.link is not None and self._path is not None:
                with contextlib.suppress(OSError):
                    if os.readlink(self.link) == self._path:
                        self.link.unlink()
            for fd in (self._master, self._slave):
                if fd is not None:
                    os.close(fd)
            self._master = self._slave = None
            self._path = None
            self._pending = b""

    def replug(self) -> str:
        """Plug in again: a new pty, the link re-pointed; returns the new slave path."""
        with self._lock:
            self.unplug()
            return self.open()

    def drain(self, timeout: float = 1.0, *, idle: float = 0.2) -> bool:
        """Wait until the reader has taken every byte written; ``True`` if it did.

        Gives up after ``timeout``, or after ``idle`` seconds in which the reader took
        nothing (nobody is reading).
        """
        deadline = time.monotonic() + timeout
        last, last_change, empty_checks = -1, time.monotonic(), 0
        while (now := time.monotonic()) < deadline:
            with self._lock:
                if self._master is None or self._slave is None:
                    return False
                if self._pending:
                    self._pending = self._write(self._master, self._pending)
                queued = len(self._pending) + _queued_bytes(self._slave)
            if queued != last:
                last, last_change = queued, now
            empty_checks = empty_checks + 1 if queued == 0 else 0
            if empty_checks >= 2:  # the kernel hands bytes to the tty asynchronously
                return True
            if now - last_change > idle:
                return False
            time.sleep(0.01)
        return False

    def close(self, drain_timeout: float = 1.0) -> None:
        """Let a reader take what is buffered (bounded by ``drain_timeout``), then unplug."""
        if drain_timeout > 0:
            self.drain(drain_timeout)
        self.unplug()

    def __enter__(self) -> SerialDevice:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- writing

    def write_line(self, line: str | bytes) -> bool:
        """Write one line (``\\n`` added if missing); ``False`` if it was dropped."""
        data = line.encode() if isinstance(line, str) else line
        if not data.endswith(b"\n"):
            data += b"\n"
        with self._lock:
            ok = self.write_raw(data)
            if ok:
                self.lines_written += 1
            else:
                self.lines_dropped += 1
            return ok

    def write_raw(self, data: bytes) -> bool:
        """Write bytes as they are; ``False`` if they were dropped (full, or unplugged).

        Bytes a timeout cuts off are kept and written before anything else, so the caller's
        chunk boundaries are never interleaved with later writes.
        """
        with self._lock:
            master = self._master
            if master is None:
                return False
            self._discard_input(master)
            if self._pending:
                self._pending = self._write(master, self._pending)
                if self._pending:
                    return False
            rest = self._write(master, data)
            if len(rest) == len(data):
                return False
            self._pending = rest
            return True

    def _write(self, fd: int, data: bytes) -> bytes:
        """Write as much as fits within the timeout; return what is left."""
        view = memoryview(data)
        deadline = time.monotonic() + (0.0 if self._stalled else self.write_timeout)
        while view:
            try:
                n = os.write(fd, view)
            except BlockingIOError:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([], [fd], [], left)[1]:
                    self._stalled = True
                    return bytes(view)
                continue
            self.bytes_written += n
            view = view[n:]
        self._stalled = False
        return b""

    @staticmethod
    def _discard_input(fd: int) -> None:
        """Throw away whatever the reader wrote to us, so its writes never block."""
        while True:
            try:
                if not os.read(fd, 65536):
                    return
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno == errno.EIO:
                    return
                raise


@dataclass
class SerialSummary(RunSummary):
    """A :class:`RunSummary` plus serial-specific counters."""

    overflow: int = 0
    """Lines dropped because nobody read the port (see the module docstring)."""
    split: int = 0
    """Good lines deliberately written in two halves."""
    unplugs: int = 0

    def extra(self) -> dict[str, float | int]:
        """Adds ``overflow``, ``split`` and ``unplugs``."""
        return {"overflow": self.overflow, "split": self.split, "unplugs": self.unplugs}


def run_serial(
    device: SerialDevice,
    *,
    devices: int = 1,
    metrics: Sequence[str] = ("temperature",),
    fmt: LineFormat = "csv",
    rate: float | None = 10.0,
    count: int | None = None,
    duration: float | None = None,
    seed: int = 0,
    faults: Sequence[Fault] = (),
    garbage_every: int = 0,
    unplug_at: int | None = None,
    unplug_for: float = 5.0,
    start_ts: float | None = None,
    summary_json: str | os.PathLike[str] | None = None,
    on_plug: Callable[[str], object] | None = None,
    stop: threading.Event | None = None,
) -> SerialSummary:
    """Write simulated readings to ``device`` (opened if needed) and return what was sent.

    ``count`` bounds scheduled lines, ``duration`` the schedule in seconds (the unplugged
    time included); with neither, it runs until ``stop`` is set or Ctrl-C. After
    ``unplug_at`` good lines the device is unplugged for ``unplug_for`` seconds and replugged;
    ``on_plug`` gets every slave path this call creates (the first too, if it opened the
    device). Blocking: run it in a thread from async code. The device stays open on return.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown line format {fmt!r} (expected one of: {', '.join(FORMATS)})")
    for name, value in (("count", count), ("garbage_every", garbage_every)):
        if value is not None and value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    if unplug_at is not None and unplug_at < 1:
        raise ValueError(f"unplug_at must be >= 1, got {unplug_at}")
    if unplug_for < 0 or (duration is not None and duration < 0):
        raise ValueError("durations must be >= 0")
    names = device_names(devices)
    check_faults(faults, names, metrics)
    stop = stop or threading.Event()
    wall0 = time.time() if start_ts is None else start_ts
    source = ReadingSource(names, metrics, seed=seed, start_ts=wall0, faults=faults)
    garbage_rng = random.Random(f"{seed}:garbage")
    summary = SerialSummary()
    was_unplugged = not device.plugged
    path = device.open()
    if on_plug is not None and was_unplugged:
        on_plug(path)
    pacer = Pacer(rate, sleep=stop.wait)
    split_gap = 0.02 if rate is None else min(0.02, 0.5 / rate)
    slots = garbage = 0
    split_next = False
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
            reading = source.take(round(wall0 + offset, 6))
            if reading is None:
                summary.dropped += 1
                continue
            line = format_line(reading, fmt)
            if split_next:
                split_next = False
                cut = len(line) // 2
                ok = device.write_raw(line[:cut])
                stop.wait(split_gap)
                ok = device.write_line(line[cut:]) and ok
                summary.split += ok
            else:
                ok = device.write_line(line)
            if not ok:
                summary.overflow += 1
                continue
            summary.add(reading)
            if garbage_every and summary.sent % garbage_every == 0:
                kind = GARBAGE_KINDS[garbage % len(GARBAGE_KINDS)]
                garbage += 1
                if kind == "split":
                    split_next = True
                else:
                    _write_garbage(device, kind, garbage_rng)
                    summary.bad += 1
            if unplug_at is not None and summary.sent == unplug_at:
                device.unplug()
                summary.unplugs += 1
                stop.wait(unplug_for)
                path = device.open()
                if on_plug is not None:
                    on_plug(path)
                pacer.reanchor()
    except KeyboardInterrupt:
        summary.interrupted = True
    summary.elapsed = pacer.elapsed
    if summary_json is not None:
        summary.write_json(summary_json)
    return summary


def _write_garbage(device: SerialDevice, kind: str, rng: random.Random) -> None:
    if kind == "binary":
        # 0xFF never occurs in UTF-8; no 0x0A, so it stays one line.
        noise = bytes(rng.choice(range(0x80, 0x100)) for _ in range(rng.randint(8, 48)))
        device.write_raw(b"\xff" + noise + b"\n")
    elif kind == "overlong":
        row = b"dev-000,temperature,21.0,0.0,0;"
        device.write_raw((row * (OVERLONG_SIZE // len(row) + 1))[:OVERLONG_SIZE])
        device.write_raw(b"\n")
    else:
        raise ValueError(f"unknown garbage kind {kind!r}")
