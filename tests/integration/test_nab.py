"""The default detector on the labelled NAB sample in ../shared (skipped when it is absent)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NAB = ROOT.parent / "shared" / "data" / "nab"
SCORER = ROOT.parent / "shared" / "tools" / "nab_score.py"
RELEASED_SCORE = 79.41
"""What config/examples/anomaly.yaml scored when it was tuned (README, "Detectors")."""


@pytest.mark.skipif(
    not (NAB / "labels.json").is_file() or not SCORER.is_file(),
    reason="needs ../shared/data/nab and ../shared/tools/nab_score.py beside the repository",
)
def test_example_config_keeps_its_nab_score() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway.tools.nab_eval",
            "-c",
            str(ROOT / "config" / "examples" / "anomaly.yaml"),
            "--data-dir",
            str(NAB),
            "--scorer",
            str(SCORER),
            "--json",
        ],
        capture_output=True,
        timeout=300,
        check=True,
        cwd=ROOT,
    )
    result = json.loads(proc.stdout)
    assert result["score"] >= RELEASED_SCORE - 0.01, result["score"]
    # one configuration for every file, and still quiet on the files without anomalies
    clean = [f for f in result["files"] if f["file"].startswith("artificialNoAnomaly/")]
    assert clean
    assert all(f["fp"] == 0 for f in clean)
