"""The systemd unit as shipped: systemd-analyze verifies it, and it keeps its promises."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "edge-gateway.service"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    ANALYZE is None, reason="systemd-analyze is not installed (apt-get install systemd)"
)


def settings() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


def installed_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this environment's edge-gateway script."""
    exe = Path(sys.executable).parent / "edge-gateway"
    assert exe.exists(), "the project is not installed in this environment"
    unit = tmp_path / "edge-gateway.service"
    unit.write_text(UNIT.read_text().replace("/opt/edge-gateway/bin/edge-gateway", str(exe)))
    return unit


@needs_analyze
def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    assert ANALYZE is not None
    result = subprocess.run(
        [ANALYZE, "verify", "--man=no", str(installed_copy(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (result.returncode, result.stderr) == (0, "")


@needs_analyze
def test_security_exposure_stays_low(tmp_path: Path) -> None:
    assert ANALYZE is not None
    result = subprocess.run(
        [ANALYZE, "security", "--offline=yes", str(installed_copy(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.0  # README reports 1.5 ("OK")


def test_notify_watchdog_and_hardening_promises() -> None:
    s = settings()
    assert s["Type"] == ["notify"]
    assert s["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert s["WatchdogSec"] == ["30s"]
    assert s["DynamicUser"] == ["yes"]
    assert s["SupplementaryGroups"] == ["dialout"]
    assert s["StateDirectory"] == s["ConfigurationDirectory"] == ["edge-gateway"]
    assert s["CapabilityBoundingSet"] == [""]
    assert "@system-service" in s["SystemCallFilter"]
    assert {"char-ttyUSB rw", "char-ttyACM rw"} <= set(s["DeviceAllow"])
    assert "PrivateDevices" not in s  # it would hide the serial ports
    for key in ("ProtectHome", "PrivateTmp", "NoNewPrivileges"):
        assert s[key] == ["yes"], key
    assert s["ProtectSystem"] == ["strict"]
    assert s["LoadCredential"] == ["secrets:/etc/edge-gateway/credentials"]
    assert not any(k.startswith("Environment") for k in s)  # secrets never in the environment
