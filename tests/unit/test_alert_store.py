"""Detector alerts are stored whole: score and evidence included, in old files too."""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path

from gateway.counters import Counters
from gateway.model import Alert
from gateway.store.config import StoreConfig
from gateway.store.store import Store

RAISED = Alert(
    "line",
    "vibration-z",
    "press-1",
    "vibration",
    "zscore",
    "raised",
    "warning",
    1_700_000_000.0,
    7.4,
    4.0,
    "press-1 vibration = 7.4: z-score +6.10 over the last 100 readings",
    6.1,
    {"mean": 2.0, "std": 0.885, "z": 6.1, "n": 100.0},
)


async def test_score_and_evidence_are_stored(tmp_path: Path) -> None:
    async with Store(StoreConfig(path=tmp_path / "gw.db"), Counters()) as store:
        store.add_alert(RAISED)
        store.add_alert(
            Alert("p", "s", "d", "m", "threshold", "cleared", "info", 1.0, 2.0, 3.0, "x")
        )
        await store.flush()
        rows = await store.query("SELECT step, kind, score, evidence FROM alerts ORDER BY ts")
    assert rows == [
        {"step": "s", "kind": "threshold", "score": None, "evidence": None},
        {
            "step": "vibration-z",
            "kind": "zscore",
            "score": 6.1,
            "evidence": '{"mean":2.0,"std":0.885,"z":6.1,"n":100.0}',
        },
    ]
    assert math.isnan(Alert("p", "s", "d", "m", "k", "raised", "i", 0, 0, 0, "").score)


async def test_a_file_from_before_gains_the_columns(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE alerts (pipeline TEXT, step TEXT, device TEXT, metric TEXT, kind TEXT,"
            " state TEXT, severity TEXT, ts FLOAT, value FLOAT, threshold FLOAT, message TEXT)"
        )
        conn.execute(
            "INSERT INTO alerts VALUES ('p','s','d','m','threshold','raised','info',1,2,3,'x')"
        )
        conn.execute("PRAGMA user_version = 1")
    conn.close()
    async with Store(StoreConfig(path=path), Counters()) as store:
        store.add_alert(RAISED)
        await store.flush()
        rows = await store.query("SELECT kind, score FROM alerts ORDER BY ts")
    assert rows == [{"kind": "threshold", "score": None}, {"kind": "zscore", "score": 6.1}]
