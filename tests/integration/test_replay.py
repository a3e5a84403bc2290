"""``edge-gateway replay`` as a user runs it: a recording in, JSON lines out, no broker."""

from __future__ import annotations

import json
import math
import random
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.store.schema import create_schema

ROOT = Path(__file__).resolve().parents[2]
ANOMALY_YAML = ROOT / "config" / "examples" / "anomaly.yaml"
START = datetime(2024, 3, 1, tzinfo=UTC)


def replay(*args: str) -> tuple[list[dict[str, Any]], str, int]:
    """Run the command; (stdout JSON lines, stderr, exit code)."""
    proc = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "replay", *args],
        capture_output=True,
        timeout=120,
        check=False,
    )
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    return lines, proc.stderr.decode(), proc.returncode


def nab_csv(path: Path, values: list[float]) -> list[datetime]:
    """A NAB-style file: ``timestamp,value``, five minutes apart, naive UTC timestamps."""
    stamps = [START + timedelta(minutes=5 * i) for i in range(len(values))]
    rows = [f"{t:%Y-%m-%d %H:%M:%S},{v:.4f}" for t, v in zip(stamps, values, strict=True)]
    path.write_text("timestamp,value\n" + "\n".join(rows) + "\n")
    return stamps


def daily(n: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    return [20 + 8 * math.sin(2 * math.pi * i / 288) + rng.gauss(0, 0.4) for i in range(n)]


def write_config(path: Path, steps: list[dict[str, Any]], forward: list[str]) -> Path:
    config = {
        "sources": [{"id": "plant", "type": "mqtt", "topics": ["s/{device}/{metric}"]}],
        "pipelines": [
            {"id": "p", "from": ["plant"], "steps": steps, "to": ["up"], "forward": forward}
        ],
        "sinks": [
            {
                "id": "up",
                "type": "mqtt",
                "broker": {"port": 1},
                "topics": {"alert": "s/{device}/{metric}/alert"},
            }
        ],
    }
    path.write_text(yaml.safe_dump(config))
    return path


def test_nab_csv_with_the_example_config_unchanged(tmp_path: Path) -> None:
    values = daily(288 * 7, seed=1)
    broken_at = 288 * 5 + 100
    values[broken_at] = 80.0  # a reading no sensor of this kind should give
    stamps = nab_csv(tmp_path / "machine_7.csv", values)
    lines, err, code = replay("-c", str(ANOMALY_YAML), "--input", str(tmp_path / "machine_7.csv"))
    assert code == 0, err
    assert [line["payload"]["state"] for line in lines] == ["raised", "cleared"]
    raised = lines[0]
    assert raised["topic"] == "site/edge-gateway/machine_7/value/alert"
    payload = raised["payload"]
    assert payload["kind"] == "alert"
    assert (payload["device"], payload["metric"], payload["detector"]) == (
        "machine_7",
        "value",
        "anomaly",
    )
    assert payload["step"] == "default-anomaly"
    assert payload["ts"] == stamps[broken_at].timestamp()  # event time of the reading
    assert payload["value"] == 80.0
    assert payload["score"] > payload["threshold"]
    assert set(payload["evidence"]) >= {"median", "z_level", "z_seasonal"}
    assert f"replayed {len(values)} readings" in err


def test_device_and_metric_name_a_plain_csv_and_filter_a_rich_one(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text(
        "ts,device,temperature,rpm\n"
        "1700000000,pump1,20,1000\n"
        "1700000001,pump2,95,1000\n"
        "1700000002,pump1,96,1000\n"
    )
    config = write_config(tmp_path / "g.yaml", [{"range": {"min": 0, "max": 90}}], ["alerts"])
    lines, err, code = replay("-c", str(config), "--input", str(path), "--device", "pump1")
    assert code == 0, err
    assert [(x["payload"]["metric"], x["payload"]["ts"]) for x in lines] == [
        ("rpm", 1700000000.0),
        ("temperature", 1700000002.0),
    ]
    lines, _, _ = replay("-c", str(config), "--input", str(path), "--metric", "temperature")
    assert [(x["payload"]["device"], x["payload"]["ts"]) for x in lines] == [
        ("pump2", 1700000001.0),
        ("pump1", 1700000002.0),
    ]
    plain = tmp_path / "plain.csv"
    plain.write_text("timestamp,value\n2024-03-01T00:00:00+01:00,95\n")
    lines, _, _ = replay(
        "-c", str(config), "--input", str(plain), "--device", "kiln", "--metric", "temp"
    )
    assert [
        (x["payload"]["device"], x["payload"]["metric"], x["payload"]["ts"]) for x in lines
    ] == [("kiln", "temp", datetime(2024, 2, 29, 23, tzinfo=UTC).timestamp())]


def test_bad_rows_are_counted_and_skipped(tmp_path: Path) -> None:
    path = tmp_path / "dirty.csv"
    path.write_text(
        "timestamp,value\n"
        "2024-03-01 00:00:00,1\n"
        "yesterday,2\n"
        "2024-03-01 00:10:00,hot\n"
        "2024-03-01 00:15:00\n"
        f"2024-03-01 00:17:00,{'9' * 200_000}\n"  # beyond the csv module's field limit
        "2024-03-01 00:20:00,500\n"
    )
    config = write_config(tmp_path / "g.yaml", [{"range": {"min": 0, "max": 100}}], ["alerts"])
    lines, err, code = replay("-c", str(config), "--input", str(path))
    assert code == 0, err
    assert [x["payload"]["value"] for x in lines] == [500.0]
    assert (
        "skipped 4 input records: bad_columns 1, bad_csv 1, bad_timestamp 1, non_numeric 1" in err
    )


def test_jsonl_windows_close_in_event_time_and_late_readings_have_a_topic(tmp_path: Path) -> None:
    path = tmp_path / "rec.jsonl"
    docs = [{"device": "d", "metric": "t", "value": float(i), "ts": 1000.0 + i} for i in range(25)]
    docs.append({"device": "d", "metric": "t", "value": 99.0, "ts": 1001.0})  # too late
    path.write_text("\n".join(json.dumps(d) for d in docs) + "\n{broken\n")
    window = {
        "size": "10s",
        "aggregates": ["count", "mean"],
        "lateness": 0,
        "late_topic": "late/{device}",
    }
    config = write_config(tmp_path / "g.yaml", [{"window": window}], ["aggregates"])
    lines, err, code = replay("-c", str(config), "--input", str(path))
    assert code == 0, err
    aggregates = [x["payload"] for x in lines if x["payload"]["kind"] == "aggregate"]
    assert [(a["start"], a["count"]) for a in aggregates] == [
        (1000.0, 10),
        (1010.0, 10),
        (1020.0, 5),
    ]
    [late] = [x for x in lines if x["payload"]["kind"] == "late"]
    assert late["topic"] == "late/d"
    assert (late["payload"]["ts"], late["payload"]["value"], late["payload"]["watermark"]) == (
        1001.0,
        99.0,
        1024.0,
    )
    assert "1 late readings" in err
    assert "malformed_json 1" in err


def test_from_store_reruns_rules_on_history(tmp_path: Path) -> None:
    db_path = tmp_path / "gateway.db"
    from sqlite_utils import Database

    db = Database(db_path)
    create_schema(db)
    rows = [
        ("plant", "press", "vibration", float(t), 9.0 if t == 40 else 1.0, t) for t in range(60)
    ]
    rows.append(("plant", "other", "vibration", 41.0, 9.0, None))
    db.conn.executemany(
        "INSERT INTO readings (source, device, metric, ts, value, seq) VALUES (?,?,?,?,?,?)", rows
    )
    db.conn.commit()
    db.close()
    config = write_config(tmp_path / "g.yaml", [{"range": {"min": 0, "max": 5}}], ["alerts"])
    lines, err, code = replay(
        "-c", str(config), "--from-store", str(db_path), "--since", "30", "--device", "press"
    )
    assert code == 0, err
    assert [(x["payload"]["state"], x["payload"]["ts"]) for x in lines] == [
        ("raised", 40.0),
        ("cleared", 41.0),
    ]
    _, err, code = replay("-c", str(config), "--from-store", str(tmp_path / "nope.db"))
    assert code == 2
    assert "no such store" in err


def test_input_and_store_are_exclusive(tmp_path: Path) -> None:
    config = write_config(tmp_path / "g.yaml", [], ["alerts"])
    _, err, code = replay("-c", str(config))
    assert code == 2
    assert "exactly one of --input or --from-store" in err


@pytest.fixture
def unreadable(tmp_path: Path) -> Path:
    return tmp_path / "missing.csv"


def test_missing_input_is_a_clear_error(tmp_path: Path, unreadable: Path) -> None:
    config = write_config(tmp_path / "g.yaml", [], ["alerts"])
    _, err, code = replay("-c", str(config), "--input", str(unreadable))
    assert code == 2
    assert "cannot read" in err
    assert sqlite3.sqlite_version  # the stdlib sqlite used by --from-store is there


def test_actions_are_published_on_their_own_topic(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text("ts,device,temperature\n1700000000,pump1,20\n1700000001,pump1,150\n")
    steps = [
        {"range": {"min": 0, "max": 120}},
        {"action": {"topic": "plant/{device}/orders", "payload": {"part": "sensor {metric}"}}},
    ]
    config = write_config(tmp_path / "g.yaml", steps, ["alerts"])
    lines, err, code = replay("-c", str(config), "--input", str(path))
    assert code == 0, err
    assert [x["topic"] for x in lines] == ["s/pump1/temperature/alert", "plant/pump1/orders"]
    order = lines[1]["payload"]
    assert (order["kind"], order["part"], order["ts"]) == (
        "action",
        "sensor temperature",
        1700000001.0,
    )


def test_source_feeds_only_the_pipelines_reading_from_it(tmp_path: Path) -> None:
    config = {
        "sources": [
            {"id": "plant", "type": "mqtt", "topics": ["s/{device}/{metric}"]},
            {"id": "lab", "type": "mqtt", "topics": ["l/{device}/{metric}"]},
        ],
        "pipelines": [
            {
                "id": f"{name}-limits",
                "from": [name],
                "steps": [{"range": {"min": 0, "max": 10}}],
                "to": ["up"],
                "forward": ["alerts"],
            }
            for name in ("plant", "lab")
        ],
        "sinks": [{"id": "up", "type": "mqtt", "broker": {"port": 1}}],
    }
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(config))
    data = tmp_path / "x.csv"
    data.write_text("ts,value\n1700000000,50\n")
    for source, expected in ((None, ["lab-limits", "plant-limits"]), ("lab", ["lab-limits"])):
        args = ["-c", str(path), "--input", str(data)] + (["--source", source] if source else [])
        lines, err, code = replay(*args)
        assert code == 0, err
        assert sorted(x["payload"]["pipeline"] for x in lines) == expected


def test_a_pipeline_without_steps_forwards_every_reading_in_order(tmp_path: Path) -> None:
    path = write_config(tmp_path / "g.yaml", [], ["readings"])
    data = tmp_path / "x.jsonl"
    docs = [
        {"device": f"d{i % 3}", "metric": "t", "value": i / 2, "ts": 1.7e9 + i} for i in range(9)
    ]
    data.write_text("".join(json.dumps(d) + "\n" for d in docs))
    lines, err, code = replay("-c", str(path), "--input", str(data))
    assert code == 0, err
    assert [(x["topic"], x["payload"]["value"]) for x in lines] == [
        (f"site/edge-gateway/{d['device']}/t/reading", d["value"]) for d in docs
    ]
