"""Log lines: JSON objects with --log-format json, journald detection, repeats held back."""

from __future__ import annotations

import json
import logging
import os
import sys

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
