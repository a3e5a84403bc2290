"""The systemd notify protocol: ``READY=1``, ``STATUS=``, ``WATCHDOG=1``, ``RELOADING=1``,
``STOPPING=1`` sent as datagrams to ``$NOTIFY_SOCKET`` (see ``sd_notify(3)``).

A dozen lines of socket code instead of a dependency: the protocol is one ``sendto`` of
newline-separated ``KEY=value`` pairs. Outside systemd (no ``NOTIFY_SOCKET``) every call is a
no-op, so the daemon runs the same under a terminal, in tests and as a ``Type=notify`` unit.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger("gateway.systemd")


class Notifier:
    """Sends state changes to the service manager; silent when there is none."""

    def __init__(self, address: str | None) -> None:
        self._address: str | bytes | None = None
        self._sock: socket.socket | None = None
        if not address:
            return
        if address.startswith("@"):  # abstract namespace socket
            self._address = b"\0" + address[1:].encode()
        elif address.startswith("/"):
            self._address = address
        else:
            log.warning("NOTIFY_SOCKET %r is not a unix socket path; not notifying", address)
            return
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None) -> Notifier:
        """The notifier ``$NOTIFY_SOCKET`` asks for (a no-op one when it is unset)."""
        env = os.environ if env is None else env
        return cls(env.get("NOTIFY_SOCKET"))

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, **fields: str | int) -> bool:
        """Send ``KEY=value`` lines (``notify(READY=1, STATUS="...")``); True if sent."""
        if self._sock is None or self._address is None:
            return False
        message = "\n".join(f"{k}={_one_line(str(v))}" for k, v in fields.items())
        try:
            self._sock.sendto(message.encode(), self._address)
        except OSError as exc:  # the manager went away or is overloaded: never fatal
            log.debug("sd_notify failed: %s", exc)
            return False
        return True

    def ready(self, status: str = "") -> bool:
        return self.notify(READY=1, STATUS=status) if status else self.notify(READY=1)

    def status(self, text: str) -> bool:
        return self.notify(STATUS=text)

    def watchdog(self) -> bool:
        return self.notify(WATCHDOG=1)

    def reloading(self) -> bool:
        # MONOTONIC_USEC lets Type=notify-reload units match the reload to this message.
        return self.notify(
            RELOADING=1, MONOTONIC_USEC=time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        )

    def stopping(self) -> bool:
        return self.notify(STOPPING=1)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """Seconds within which systemd expects ``WATCHDOG=1`` (``WatchdogSec=``), or None.

    ``WATCHDOG_PID``, when set, must be this process (it is not set for forked helpers).
    """
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC")
    pid = env.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        seconds = int(usec) / 1_000_000
    except ValueError:
        return None
    return seconds if seconds > 0 else None


def _one_line(value: str) -> str:
    return value.replace("\n", " ")
