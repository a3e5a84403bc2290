"""What the benchmark drives and measures: the systems under test and their load generators.

Every system under test is a child process (the real ``edge-gateway run``, or the bare paho
ceiling), so its CPU time and peak RSS are read from ``/proc`` the same way for all of them.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gateway.bench.collector import Collector

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def _status_mb(pid: int, *keys: str) -> tuple[float, ...]:
    """The ``kB`` fields ``keys`` (such as ``VmRSS``) of ``/proc/PID/status``, in MB (0 if
    absent)."""
    found: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in keys:
            found[key] = int(value.split()[0]) / 1024
    return tuple(found.get(key, 0.0) for key in keys)


def memory_mb(pid: int) -> tuple[float, float]:
    """(current RSS, peak RSS) of a process in MB."""
    rss, peak = _status_mb(pid, "VmRSS", "VmHWM")
    return rss, peak


def rss_parts_mb(pid: int) -> tuple[float, float]:
    """(anonymous, file-backed) RSS of a process in MB: its own heap, and the pages of the
    libraries it maps (shared with other processes, and reclaimable)."""
    anon, mapped = _status_mb(pid, "RssAnon", "RssFile")
    return anon, mapped


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.02)


def _stop(proc: subprocess.Popen[Any], timeout: float = 20) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


class Agent:
    """A helper process of ``gateway.bench.agents`` driven by JSON lines on stdin/stdout."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.bench.agents", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"benchmark agent exited with {self.proc.wait()}")
        doc: dict[str, Any] = json.loads(line)
        return doc

    def send(self, **command: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        return self.read()

    def stop(self) -> None:
        if self.proc.stdin is not None and self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.close()
            except BrokenPipeError:
                pass
        _stop(self.proc, 5)


@dataclass
class Load:
    """Sends ``count`` readings at ``rate``; returns (sent, seconds it took)."""

    agent: Agent
    devices: int = 1000

    def send(self, rate: float, count: int, seq: int) -> tuple[int, float]:
        answer = self.agent.send(rate=rate, count=count, seq=seq, devices=self.devices)
        return int(answer["sent"]), float(answer["elapsed"])


class System:
    """A system under test: a process and a count of readings it has fully processed."""

    name: str
    proc: subprocess.Popen[Any]

    def progress(self) -> int:
        raise NotImplementedError

    def stop(self) -> None:
        _stop(self.proc)

    @property
    def pid(self) -> int:
        return self.proc.pid


class Ceiling(System):
    """The bare paho-mqtt forwarder or parse-only subscriber (``agents ceiling``)."""

    def __init__(self, mode: str, qos: int, local: int, upstream: int, collector: Collector):
        self.agent = Agent(
            "ceiling", "--port", str(local), "--up-port", str(upstream), "--qos", str(qos),
            "--mode", mode,
        )  # fmt: skip
        self.proc = self.agent.proc
        self._collector = collector
        self._forward = mode == "forward"
        self.agent.read()  # {"ready": true} once subscribed

    def progress(self) -> int:
        c = self._collector
        return c.received if self._forward else c.progress


class GatewayRun(System):
    """``edge-gateway run -c CONFIG`` as a child process."""

    def __init__(
        self,
        workdir: Path,
        config: dict[str, Any],
        ready_line: str,
        collector: Collector,
        count_upstream: bool,
    ) -> None:
        self.workdir = workdir
        self.db = Path(config["store"]["path"])
        cfg = workdir / "gateway.yaml"
        cfg.write_text(yaml.safe_dump(config, sort_keys=False))
        self.log_path = workdir / "gateway.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "run", "-c", str(cfg)],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=workdir,
            )
        self._collector = collector
        self._count_upstream = count_upstream
        self._db: sqlite3.Connection | None = None
        wait_for(lambda: ready_line in self.log() or self.proc.poll() is not None, 30, ready_line)
        if self.proc.poll() is not None:
            raise RuntimeError(f"edge-gateway exited: {self.log()[-2000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def progress(self) -> int:
        if self._count_upstream:
            return self._collector.received
        # Polled every 10-50 ms: the newest rowid, a lookup, equals the count while nothing
        # is deleted (the bench turns retention off); count(*) scanned a growing index on a
        # core the gateway shares, and its read transaction held back WAL checkpoints.
        return self._scalar("SELECT coalesce(max(rowid), 0) FROM readings")

    def stored(self) -> int:
        """Readings committed to the store so far."""
        return self._scalar("SELECT count(*) FROM readings")

    def _scalar(self, sql: str) -> int:
        if self._db is None:
            if not self.db.exists():
                return 0
            self._db = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=10)
        try:
            row = self._db.execute(sql).fetchone()
        except sqlite3.OperationalError:
            return 0
        return int(row[0])

    def stop(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        super().stop()
