"""Replay input: the JSON-lines reader's fast path reads every line as the JSON decoder does."""

from __future__ import annotations

import io
import math

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import DecodeError
from gateway.model import Reading
from gateway.replay import Rejects, read_jsonl
from gateway.sources.codecs import JsonFormat, build_decoder


def decoded(lines: list[bytes], device: str) -> tuple[list[Reading], dict[str, int]]:
    """What the gateway's JSON decoder makes of each line (the reference)."""
    decode = build_decoder(JsonFormat())
    out: list[Reading] = []
    rejects: dict[str, int] = {}
    for line in lines:
        if not line.strip():
            continue
        try:
            try:
                readings = decode(line, "replay", None, None, math.nan)
            except DecodeError as exc:
                if exc.reason != "no_device":
                    raise
                readings = decode(line, "replay", device, None, math.nan)
        except DecodeError as exc:
            rejects[exc.reason] = rejects.get(exc.reason, 0) + 1
            continue
        for r in readings:
            if math.isnan(r.ts):
                rejects["no_timestamp"] = rejects.get("no_timestamp", 0) + 1
            else:
                out.append(r)
    return out, rejects


def replayed(lines: list[bytes], device: str) -> tuple[list[Reading], dict[str, int]]:
    rejects = Rejects()
    readings = list(read_jsonl(io.BytesIO(b"".join(lines)), device, None, "replay", rejects))
    return readings, dict(rejects.reasons)


names = st.one_of(st.text(max_size=3), st.sampled_from(["", "d" * 128, "d" * 129, "pump-1"]))
numbers = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.sampled_from([1.7e9, 1.7e12, 1e11, 1e11 + 1]),
)
values = st.one_of(st.none(), st.booleans(), names, numbers, st.just([1.0]))
fields = st.fixed_dictionaries(
    {},
    optional={
        "device": values,
        "metric": values,
        "value": values,
        "ts": values,
        "seq": values,
        "temp": values,
    },
)


@settings(max_examples=400, deadline=None)
@given(st.lists(fields, max_size=6), st.lists(st.sampled_from([b"", b"{", b"[1]", b" \n"])))
def test_every_line_is_read_as_the_json_decoder_reads_it(
    docs: list[dict[str, object]], odd: list[bytes]
) -> None:
    lines = [orjson.dumps(d) + b"\n" for d in docs] + [line + b"\n" for line in odd]
    assert replayed(lines, "file") == decoded(lines, "file")


def test_the_usual_line_and_its_variants() -> None:
    lines = [
        b'{"device": "a", "metric": "t", "value": 1.5, "ts": 1700000000.0}\n',
        b'{"device": "a", "metric": "t", "value": 2, "ts": 1700000000}\n',  # ints
        b'{"device": "a", "metric": "t", "value": 1.5, "ts": 1700000000000.0}\n',  # ms
        b'{"device": "a", "metric": "t", "value": 1.5, "ts": 1700000000.0, "seq": 7}\n',
        b'{"metric": "t", "value": 1.5, "ts": 1700000000.0}\n',  # default device
        b'{"device": "a", "metric": "t", "value": 1.5}\n',  # no timestamp
        b"not json\n",
        b'{"device": "a", "metric": "t", "value": 1.5, "ts": 1700000000.0, "x": 1e400}\n',
        b'{"device": "a", "metric": "t", "value": 1.5, "ts": 1700000000.0, "x": "\xff"}\n',
        b'{"device": "a", "metric": "t", "value": true, "ts": 1700000000.0}\n',
        b'{"device": "", "metric": "t", "value": 1.5, "ts": 1700000000.0}\n',
    ]
    readings, rejects = replayed(lines, "file")
    assert readings == [
        Reading("replay", "a", "t", 1.5, 1700000000.0),
        Reading("replay", "a", "t", 2.0, 1700000000.0),
        Reading("replay", "a", "t", 1.5, 1700000000.0),
        Reading("replay", "a", "t", 1.5, 1700000000.0, 7),
        Reading("replay", "file", "t", 1.5, 1700000000.0),
    ]
    assert rejects == {"no_timestamp": 1, "malformed_json": 3, "non_numeric": 1, "bad_device": 1}
    assert (readings, rejects) == decoded(lines, "file")
