"""Fault-suite fixtures: brokers that keep sessions across restarts."""

from __future__ import annotations

import getpass
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import MOSQUITTO, Broker, _wait_listening
from tests.integration.harness import RUNNING


@dataclass
class PersistentBroker(Broker):
    """A mosquitto that saves sessions and queued messages on exit and reloads them.

    Started as root, mosquitto drops to the ``mosquitto`` user, which cannot write into
    pytest's private tmp dirs; ``user`` keeps it as the current user so persistence works.
    """

    extra: str = ""
    """More mosquitto.conf lines (e.g. an ``acl_file``)."""

    def start(self) -> None:
        conf = self.workdir / f"mosquitto-{self.port}.conf"
        data = self.workdir / f"mosquitto-{self.port}-data"
        data.mkdir(exist_ok=True)
        conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            f"user {getpass.getuser()}\n"
            f"persistence true\npersistence_location {data}/\nautosave_interval 0\n"
            "max_queued_messages 100000\n"
            "max_inflight_messages 100\n"
            "log_dest stderr\n"
            "log_type error\n"
            f"{self.extra}"
        )
        log = open(self.workdir / f"mosquitto-{self.port}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=log, stderr=log)
        log.close()
        _wait_listening(self.port, self.proc)


def _persistent(workdir: Path) -> Iterator[Broker]:
    if not Path(MOSQUITTO).exists():
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    workdir.mkdir(exist_ok=True)
    b = PersistentBroker(workdir, persistence=True)
    b.start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture(autouse=True)
def _no_leftover_gateways() -> Iterator[None]:
    """A failed test's gateway is killed, not left running for the rest of the suite."""
    yield
    while RUNNING:
        RUNNING.pop().kill()


@pytest.fixture
def local_broker(tmp_path: Path) -> Iterator[Broker]:
    """The broker devices publish to; it keeps the gateway's session over a restart."""
    yield from _persistent(tmp_path / "local")


@pytest.fixture
def cloud_broker(tmp_path: Path) -> Iterator[Broker]:
    """The upstream broker; it keeps the collector's session over a restart."""
    yield from _persistent(tmp_path / "cloud")
