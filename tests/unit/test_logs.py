"""Log lines: JSON objects with --log-format json, journald detection, repeats held back."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

from gateway.logs import JsonFormatter, RepeatFilter, under_journald


def record(msg: str, *args: object, level: int = logging.WARNING) -> logging.LogRecord:
    return logging.LogRecord("gateway.test", level, __file__, 1, msg, args, None)


def test_json_line_has_level_logger_message_and_time() -> None:
    line = JsonFormatter().format(record('source %s: "bad"\nline', "fleet"))
    doc = json.loads(line)
    assert "\n" not in line
    assert doc["level"] == "warning"
    assert doc["logger"] == "gateway.test"
    assert doc["msg"] == 'source fleet: "bad"\nline'
    assert isinstance(doc["ts"], float)
    assert "ts" not in json.loads(JsonFormatter(with_time=False).format(record("x")))


def test_json_line_carries_the_traceback() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        rec = logging.LogRecord("g", logging.ERROR, __file__, 1, "crashed", (), sys.exc_info())
    doc = json.loads(JsonFormatter().format(rec))
    assert "ValueError: boom" in doc["exc"]


def test_identical_warnings_are_held_back_then_counted() -> None:
    now = [0.0]
    f = RepeatFilter(interval=10.0, clock=lambda: now[0])
    assert f.filter(record("broker down"))
    assert not any(f.filter(record("broker down")) for _ in range(5))
    assert f.filter(record("another problem"))  # a different line is not held back
    assert f.filter(record("info line", level=logging.INFO))
    assert f.filter(record("info line", level=logging.INFO))  # info always passes
    now[0] = 11.0
    again = record("broker down")
    assert f.filter(again)
    assert again.getMessage() == "broker down (repeated 5 more times)"


def test_journald_is_recognised_by_the_stream_it_owns() -> None:
    st = os.fstat(sys.stderr.fileno())
    assert under_journald({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
    # Inherited by a child whose stderr goes elsewhere: not the journal.
    assert not under_journald({"JOURNAL_STREAM": "1:2"})
    assert not under_journald({})


def log_one_line(tmp_path: Path, fmt: str, journald: bool) -> str:
    """What ``setup`` writes for one warning in a child process whose stderr is a file;
    with ``journald`` the child's $JOURNAL_STREAM names that file, as systemd's would."""
    out = tmp_path / f"stderr-{fmt}-{journald}"
    with out.open("wb") as stderr:
        env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
        if journald:
            st = os.fstat(stderr.fileno())
            env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        code = (
            "import logging; from gateway.logs import setup; "
            f"setup('info', {fmt!r}); logging.getLogger('gateway.x').warning('broker down')"
        )
        subprocess.run([sys.executable, "-c", code], stderr=stderr, env=env, check=True)
    return out.read_text().strip()


def test_no_timestamp_of_our_own_under_journald(tmp_path: Path) -> None:
    assert log_one_line(tmp_path, "text", journald=True) == "WARNING gateway.x: broker down"
    on_terminal = log_one_line(tmp_path, "text", journald=False)
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} WARNING gateway.x: broker down", on_terminal
    )
    assert json.loads(log_one_line(tmp_path, "json", journald=True)) == {
        "level": "warning",
        "logger": "gateway.x",
        "msg": "broker down",
    }
    assert "ts" in json.loads(log_one_line(tmp_path, "json", journald=False))
