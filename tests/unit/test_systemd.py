"""The sd_notify protocol, spoken to a real unix datagram socket standing for systemd."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.systemd import Notifier, watchdog_interval


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    """A bound datagram socket in place of systemd's notify socket."""
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    yield path, sock
    sock.close()


def received(sock: socket.socket) -> dict[str, str]:
    data = sock.recv(4096).decode()
    return dict(line.split("=", 1) for line in data.split("\n"))


def test_each_state_change_is_one_datagram_of_key_value_lines(
    manager: tuple[str, socket.socket],
) -> None:
    path, sock = manager
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    assert notifier.ready("running: 2 sources")
    assert received(sock) == {"READY": "1", "STATUS": "running: 2 sources"}
    notifier.status("fleet: 12 readings\nsecond line")
    assert received(sock) == {"STATUS": "fleet: 12 readings second line"}
    notifier.watchdog()
    assert received(sock) == {"WATCHDOG": "1"}
    notifier.reloading()
    reloading = received(sock)
    assert reloading["RELOADING"] == "1"
    assert int(reloading["MONOTONIC_USEC"]) > 0
    notifier.stopping()
    assert received(sock) == {"STOPPING": "1"}
    notifier.close()


def test_abstract_namespace_address(tmp_path: Path) -> None:
    name = f"edge-gateway-test-{os.getpid()}-{id(tmp_path)}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    try:
        notifier = Notifier(f"@{name}")
        notifier.ready()
        notifier.close()
        assert received(sock) == {"READY": "1"}
    finally:
        sock.close()


def test_without_a_service_manager_nothing_is_sent_and_nothing_fails(tmp_path: Path) -> None:
    assert not Notifier.from_environment({}).ready()
    assert not Notifier("not-a-path").watchdog()
    # The manager went away: sending fails quietly instead of stopping the daemon.
    gone = Notifier(str(tmp_path / "gone.sock"))
    assert not gone.watchdog()
    gone.close()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 30.0),
        ({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": str(os.getpid())}, 0.5),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # meant for another process
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval_from_the_environment(
    env: dict[str, str], expected: float | None
) -> None:
    assert watchdog_interval(env) == expected
