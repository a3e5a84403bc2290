"""Scenario 5: the store on a small tmpfs that fills up, then space is freed (root only)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Broker
from tests.faults.support import (
    FaultCollector,
    Gateway,
    faults_config,
    fleet_source,
    reconcile,
    sent_keys,
    wait_stored,
)
from tests.faults.test_faults import Fleet
from tests.integration.harness import wait_until

pytestmark = pytest.mark.integration

DISK_MB = 16
FREE_AT_START = 1_500_000


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    if shutil.which("mount") is None:
        pytest.skip("no mount command here")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_MB}m", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_then_space_freed(
    tmp_path: Path, small_disk: Path, local_broker: Broker, cloud_broker: Broker
) -> None:
    filler = small_disk / "filler"
    with open(filler, "wb") as f:
        f.write(b"\0" * (DISK_MB * 1024 * 1024 - FREE_AT_START))
    config = faults_config(
        tmp_path,
        sources=[fleet_source(local_broker.port)],
        upstream_port=cloud_broker.port,
        store={"path": str(small_disk / "gateway.db")},
    )
    gw = Gateway(tmp_path, config)
    gw.start()
    gw.wait_subscribed()
    collector = FaultCollector(cloud_broker.host, cloud_broker.port)
    try:
        fleet = Fleet(local_broker, devices=10, count=10_000, rate=1000)
        wait_until(
            lambda: gw.log().count("disk is full") >= 3 and "store: committing" in gw.log(),
            60,
            "the store to hit a full disk, more than once",
        )
        full_at = gw.stored()
        assert full_at < 10_000
        assert gw.proc is not None
        assert gw.proc.poll() is None, "the daemon must keep running on a full disk"
        filler.unlink()  # space comes back; the gateway recovers by itself
        summary = fleet.join(120)
        wait_stored(gw, summary.sent, 60)
        tally = reconcile("5 disk full", gw, collector, sent_keys(summary))
        # One alert for the episode: raised when commits began failing, cleared on recovery
        # (sent once the store can commit again: the outbox lives in the same file).
        collector.wait_for(
            lambda c: (
                {"raised", "cleared"}
                <= {a["state"] for a in c.of_kind("alert") if a["detector"] == "store_write"}
            ),
            30,
            "the store_write alert raised and cleared upstream",
        )
        assert gw.stop() == 0
        assert tally.lost == 0
    finally:
        collector.close()
