"""Shared fixtures: a private mosquitto on a free loopback port, per test."""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import settings

# No per-example deadline: on a loaded 2-core machine one slow example is not a bug, and
# tests must not assert timings.
settings.register_profile("edge-gateway", deadline=None)
settings.load_profile("edge-gateway")

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_listening(port: int, proc: subprocess.Popen[bytes], deadline_s: float = 10.0) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"mosquitto exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"mosquitto did not listen on 127.0.0.1:{port}")


@dataclass
class Broker:
    """A mosquitto process we own: started on a free loopback port, stopped by its PID."""

    workdir: Path
    port: int = field(default_factory=free_port)
    host: str = "127.0.0.1"
    proc: subprocess.Popen[bytes] | None = None
    persistence: bool = False

    def start(self) -> None:
        conf = self.workdir / f"mosquitto-{self.port}.conf"
        store = self.workdir / f"mosquitto-{self.port}-data"
        store.mkdir(exist_ok=True)
        persist = (
            f"persistence true\npersistence_location {store}/\nautosave_interval 0\n"
            if self.persistence
            else "persistence false\n"
        )
        conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            # as root mosquitto would switch to its own user, which cannot write its
            # persistence file into our tmp dir: sessions would not survive a restart
            f"user {getpass.getuser()}\n"
            f"{persist}"
            "max_queued_messages 100000\n"
            "max_inflight_messages 100\n"
            "log_dest stderr\n"
            "log_type error\n"
        )
        log = open(self.workdir / f"mosquitto-{self.port}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=log, stderr=log)
        log.close()
        _wait_listening(self.port, self.proc)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def restart(self) -> None:
        self.stop()
        self.start()


def _own_broker(workdir: Path) -> Iterator[Broker]:
    if not Path(MOSQUITTO).exists():
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    b = Broker(workdir)
    b.start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A fresh mosquitto for one test: the local broker devices publish to."""
    yield from _own_broker(tmp_path)


@pytest.fixture
def upstream_broker(tmp_path: Path) -> Iterator[Broker]:
    """A second, independent mosquitto standing for the upstream (cloud) broker."""
    yield from _own_broker(tmp_path)
