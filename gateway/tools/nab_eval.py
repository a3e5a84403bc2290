"""Score a config's alerts on NAB-style labelled series with a NAB scorer.

Replays every ``<category>/<file>.csv`` listed in ``labels.json`` through the config exactly
as ``edge-gateway replay`` does (one configuration for every file, no per-file tuning),
collects the event times of raised alerts, writes them as a detections JSON and runs the
scorer on it::

    python -m gateway.tools.nab_eval -c config/examples/anomaly.yaml \\
        --data-dir ../shared/data/nab --scorer ../shared/tools/nab_score.py

The scorer's output is printed as it is; its last line is the normalized score.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import orjson

from gateway.config.loader import load
from gateway.config.model import Config
from gateway.replay import Rejects, read_csv, replay


def detections(config: Config, data_dir: Path, names: Sequence[str]) -> dict[str, list[float]]:
    """Relative path -> event times (epoch s) of every alert raised on that file."""
    found: dict[str, list[float]] = {}
    for name in names:
        out = io.BytesIO()
        with open(data_dir / name, newline="", encoding="utf-8") as handle:
            readings = read_csv(handle, Path(name).stem, None, "replay", Rejects())
            replay(config, readings, out)
        found[name] = [
            doc["payload"]["ts"]
            for doc in map(orjson.loads, out.getvalue().splitlines())
            if doc["payload"].get("kind") == "alert" and doc["payload"].get("state") == "raised"
        ]
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "-c",
        "--config",
        default=str(Path(__file__).resolve().parents[2] / "config" / "examples" / "anomaly.yaml"),
    )
    parser.add_argument("--data-dir", required=True, help="holds labels.json and the CSVs")
    parser.add_argument("--scorer", required=True, help="path of nab_score.py")
    parser.add_argument("--profile", default="standard")
    parser.add_argument("--json", action="store_true", help="the scorer's JSON output")
    parser.add_argument("--keep", help="also write the detections JSON here")
    args = parser.parse_args(argv)
    data_dir = Path(args.data_dir)
    labels = data_dir / "labels.json"
    names = sorted(json.loads(labels.read_text()))
    found = detections(load(args.config), data_dir, names)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(found, handle)
    if args.keep:
        Path(args.keep).write_text(json.dumps(found, indent=1))
    command = [
        sys.executable,
        args.scorer,
        "--data-dir",
        str(data_dir),
        "--labels",
        str(labels),
        "--detections",
        handle.name,
        "--profile",
        args.profile,
    ]
    if args.json:
        command.append("--json")
    try:
        return subprocess.run(command, check=False).returncode
    finally:
        Path(handle.name).unlink()


if __name__ == "__main__":
    sys.exit(main())
