"""Run the fault suite and print one table: scenario x (sent, stored, delivered upstream,
duplicates upstream, dropped by policy, lost).

    python -m tests.faults.table            # the whole suite, CI's outage lengths
    FAULTS_OUTAGE_S=5 python -m tests.faults.table -k "not burst"

Extra arguments go to pytest. Exit status: pytest's, or 1 if any scenario lost a reading.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

COLUMNS = ("scenario", "sent", "stored", "delivered", "duplicates", "dropped", "lost")


def render(rows: list[dict[str, object]]) -> str:
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in COLUMNS]
    line = "-|-".join("-" * w for w in widths)
    out = [
        " | ".join(c.ljust(w) for c, w in zip(COLUMNS, widths, strict=True)),
        line,
    ]
    for r in rows:
        cells = [
            str(r[c]).ljust(w) if c == "scenario" else str(r[c]).rjust(w)
            for c, w in zip(COLUMNS, widths, strict=True)
        ]
        out.append(" | ".join(cells))
    return "\n".join(out)


def main(argv: list[str]) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        results = Path(tmp) / "faults.jsonl"
        env = {**os.environ, "FAULTS_RESULTS": str(results)}
        root = Path(__file__).resolve().parents[2]
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/faults"]
        rc = subprocess.call([*cmd, *argv], cwd=root, env=env)
        rows = [json.loads(x) for x in results.read_text().splitlines()] if results.exists() else []
    if not rows:
        print("no scenario reported a result", file=sys.stderr)
        return rc or 1
    merged: dict[str, dict[str, object]] = {}
    for r in rows:  # a scenario run several times (hypothesis examples) is summed
        name = str(r["scenario"])
        if name in merged:
            for c in COLUMNS[1:]:
                merged[name][c] = int(merged[name][c]) + int(r[c])  # type: ignore[call-overload]
        else:
            merged[name] = dict(r)
    rows = sorted(merged.values(), key=lambda r: str(r["scenario"]))
    print()
    print(render(rows))
    lost = sum(int(r["lost"]) for r in rows)  # type: ignore[call-overload]
    return rc or (1 if lost else 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
