"""The payload codecs as a manual: what each format accepts, what it rejects and why.

Every accepted case lists the readings it yields as ``(device, metric, value, ts, seq)``;
every rejected case names the ``DecodeError.reason`` a counter will show.
"""

from __future__ import annotations

from math import isfinite
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from gateway.errors import DecodeError
from gateway.model import Reading
from gateway.sources.codecs import (
    REASONS,
    CsvFormat,
    Format,
    JsonFormat,
    KvFormat,
    RegexFormat,
    build_decoder,
)

SRC = "src"
ARRIVAL = 1_700_000_999.0
T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z

JSON = JsonFormat()
JSON_LISTED = JsonFormat(metrics=["temp", "rpm"])
JSON_RENAMED = JsonFormat(
    device_field="dev", metric_field=None, value_field="v", timestamp_field="time", seq_field=None
)
CSV = CsvFormat(type="csv", columns=["device", "ts", "temp", "rpm"])
CSV_SINGLE = CsvFormat(
    type="csv", columns=["device", "metric", "value", "ts", "seq"], delimiter=";"
)
KV = KvFormat(type="kv")
KV_SEMI = KvFormat(type="kv", pair_separator=";", kv_separator=":")
RX = RegexFormat(
    type="regex",
    pattern=r"^(?P<device>\w+) T=(?P<temp>\S+) RH=(?P<hum>\S+)(?: #(?P<seq>\d+))?$",
)
ALL_FORMATS: list[Format] = [JSON, JSON_LISTED, JSON_RENAMED, CSV, CSV_SINGLE, KV, KV_SEMI, RX]

Row = tuple[str, str, float, float, int | None]


def ok(
    case_id: str,
    fmt: Format,
    payload: bytes | str,
    *rows: Row,
    device: str | None = None,
    metric: str | None = None,
) -> Any:
    raw = payload.encode() if isinstance(payload, str) else payload
    return pytest.param(fmt, raw, device, metric, list(rows), id=case_id)


def bad(
    case_id: str,
    fmt: Format,
    payload: bytes | str,
    reason: str,
    *,
    device: str | None = None,
    metric: str | None = None,
) -> Any:
    raw = payload.encode() if isinstance(payload, str) else payload
    return pytest.param(fmt, raw, device, metric, reason, id=case_id)


ACCEPTED = [
    # --- json, single metric: the name from the payload's metric field or the topic
    ok(
        "json/single: metric and value fields",
        JSON,
        '{"device": "pump1", "metric": "temp", "value": 21.5, "ts": 1700000000}',
        ("pump1", "temp", 21.5, T0, None),
    ),
    ok(
        "json/single: metric from the topic, no ts means arrival time",
        JSON,
        '{"device": "pump1", "value": 21.5}',
        ("pump1", "temp", 21.5, ARRIVAL, None),
        metric="temp",
    ),
    ok(
        "json/single: topic device and metric win over the payload",
        JSON,
        '{"device": "spoofed", "metric": "other", "value": 1}',
        ("pump1", "temp", 1.0, ARRIVAL, None),
        device="pump1",
        metric="temp",
    ),
    ok(
        "json/single: integer value becomes float",
        JSON,
        '{"device": "pump1", "metric": "rpm", "value": 1200}',
        ("pump1", "rpm", 1200.0, ARRIVAL, None),
    ),
    ok(
        "json/single: numeric string value is accepted",
        JSON,
        '{"device": "pump1", "metric": "temp", "value": " 21.5"}',
        ("pump1", "temp", 21.5, ARRIVAL, None),
    ),
    ok(
        "json/single: other fields are ignored",
        JSON,
        '{"device": "pump1", "metric": "temp", "value": 21.5, "rpm": 1200}',
        ("pump1", "temp", 21.5, ARRIVAL, None),
    ),
    ok(
        "json/single: integer device id becomes a string",
        JSON,
        '{"device": 17, "metric": "temp", "value": 1}',
        ("17", "temp", 1.0, ARRIVAL, None),
    ),
    ok(
        "json/single: null ts and seq count as absent",
        JSON,
        '{"device": "pump1", "metric": "temp", "value": 1, "ts": null, "seq": null}',
        ("pump1", "temp", 1.0, ARRIVAL, None),
    ),
    # --- timestamps
    ok(
        "ts: above 1e11 is milliseconds",
        JSON,
        '{"device": "p", "metric": "m", "value": 1, "ts": 1700000000250}',
        ("p", "m", 1.0, T0 + 0.25, None),
    ),
    ok(
        "ts: fractional seconds",
        JSON,
        '{"device": "p", "metric": "m", "value": 1, "ts": 1700000000.5}',
        ("p", "m", 1.0, T0 + 0.5, None),
    ),
    ok(
        "ts: numeric string, seconds",
        JSON,
        '{"device": "p", "metric": "m", "value": 1, "ts": "1700000000"}',
        ("p", "m", 1.0, T0, None),
    ),
    ok(
        "ts: numeric string, milliseconds",
        JSON,
        '{"device": "p", "metric": "m", "value": 1, "ts": "1700000000500"}',
        ("p", "m", 1.0, T0 + 0.5, None),
    ),
    ok(
        "ts: ISO 8601 with Z",
        JSON,
        '{"device": "p", "metric": "m", "value": 1, "ts": "2023-11-14T22:13:20Z"}',
        ("p", "m", 1.0, T0, None),
    ),
    ok(
        "ts: ISO 8601 with an offset",
        JSON,
        '{"device": "p", "metric": "m", "value": 1, "ts": "2023-11-14T23:13:20.5+01:00"}',
        ("p", "m", 1.0, T0 + 0.5, None),
    ),
    ok(
        "ts: naive ISO 8601 is UTC",
        JSON,
        '{"device": "p", "metric": "m", "value": 1, "ts": "2023-11-14 22:13:20"}',
        ("p", "m", 1.0, T0, None),
    ),
    # --- sequence numbers
    ok(
        "seq: integer",
        JSON,
        '{"device": "p", "metric": "m", "value": 1, "seq": 42}',
        ("p", "m", 1.0, ARRIVAL, 42),
    ),
    ok(
        "seq: integral float",
        JSON,
        '{"device": "p", "metric": "m", "value": 1, "seq": 42.0}',
        ("p", "m", 1.0, ARRIVAL, 42),
    ),
    ok(
        "seq: numeric string",
        JSON,
        '{"device": "p", "metric": "m", "value": 1, "seq": "42"}',
        ("p", "m", 1.0, ARRIVAL, 42),
    ),
    ok(
        "seq: largest signed 64-bit integer",
        JSON,
        '{"device": "p", "metric": "m", "value": 1, "seq": 9223372036854775807}',
        ("p", "m", 1.0, ARRIVAL, 2**63 - 1),
    ),
    # --- json, multi metric: no metric name known, every numeric unreserved field
    ok(
        "json/multi: numeric fields become readings, strings and bools are skipped",
        JSON,
        '{"device": "pump1", "ts": 1700000000, "seq": 7, "temp": 21.5, "rpm": 1200,'
        ' "status": "ok", "alarm": false, "fw": "1.2", "tags": [1]}',
        ("pump1", "temp", 21.5, T0, 7),
        ("pump1", "rpm", 1200.0, T0, 7),
    ),
    ok(
        "json/multi: topic device",
        JSON,
        '{"temp": 21.5}',
        ("pump1", "temp", 21.5, ARRIVAL, None),
        device="pump1",
    ),
    ok(
        "json/listed: only listed fields; numeric strings accepted there",
        JSON_LISTED,
        '{"device": "pump1", "temp": "21.5", "rpm": 1200, "other": 3}',
        ("pump1", "temp", 21.5, ARRIVAL, None),
        ("pump1", "rpm", 1200.0, ARRIVAL, None),
    ),
    ok(
        "json/listed: a listed field may be absent",
        JSON_LISTED,
        '{"device": "pump1", "rpm": 1200, "status": "ok"}',
        ("pump1", "rpm", 1200.0, ARRIVAL, None),
    ),
    ok(
        "json/renamed: reserved fields are skipped, seq field disabled",
        JSON_RENAMED,
        '{"dev": "pump1", "time": 1700000000, "v": 3, "seq": 5, "temp": 1}',
        ("pump1", "seq", 5.0, T0, None),
        ("pump1", "temp", 1.0, T0, None),
    ),
    ok(
        "json/renamed: with a topic metric the value field is read",
        JSON_RENAMED,
        '{"dev": "pump1", "v": 3, "temp": 1}',
        ("pump1", "level", 3.0, ARRIVAL, None),
        metric="level",
    ),
    # --- csv
    ok(
        "csv: one reading per metric column",
        CSV,
        "pump1,1700000000,21.5,1200",
        ("pump1", "temp", 21.5, T0, None),
        ("pump1", "rpm", 1200.0, T0, None),
    ),
    ok(
        "csv: trailing CRLF and blanks around cells are ignored",
        CSV,
        "pump1 , 1700000000 , 21.5 ,1200\r\n",
        ("pump1", "temp", 21.5, T0, None),
        ("pump1", "rpm", 1200.0, T0, None),
    ),
    ok(
        "csv: an empty metric cell is skipped, an empty ts means arrival",
        CSV,
        "pump1,,,1200",
        ("pump1", "rpm", 1200.0, ARRIVAL, None),
    ),
    ok(
        "csv: topic device wins, ISO ts",
        CSV,
        "spoofed,2023-11-14T22:13:20Z,21.5,",
        ("pump1", "temp", 21.5, T0, None),
        device="pump1",
    ),
    ok(
        "csv/single: metric and value columns, ms ts, seq",
        CSV_SINGLE,
        "pump1;temp;21.5;1700000000250;9",
        ("pump1", "temp", 21.5, T0 + 0.25, 9),
    ),
    ok(
        "csv/single: empty metric cell, metric from the topic",
        CSV_SINGLE,
        "pump1;;21.5;;",
        ("pump1", "level", 21.5, ARRIVAL, None),
        metric="level",
    ),
    # --- kv
    ok(
        "kv: pairs split on blanks",
        KV,
        "device=pump1 ts=1700000000 temp=21.5 rpm=1200",
        ("pump1", "temp", 21.5, T0, None),
        ("pump1", "rpm", 1200.0, T0, None),
    ),
    ok(
        "kv: pairs split on commas and blanks, trailing newline",
        KV,
        "device=pump1,temp=21.5, rpm=1200\n",
        ("pump1", "temp", 21.5, ARRIVAL, None),
        ("pump1", "rpm", 1200.0, ARRIVAL, None),
    ),
    ok(
        "kv: an empty value is skipped",
        KV,
        "device=pump1 temp= rpm=1200",
        ("pump1", "rpm", 1200.0, ARRIVAL, None),
    ),
    ok(
        "kv: a repeated key, the last wins",
        KV,
        "device=pump1 temp=1 temp=2",
        ("pump1", "temp", 2.0, ARRIVAL, None),
    ),
    ok(
        "kv/single: metric and value keys",
        KV,
        "device=pump1 metric=temp value=21.5 seq=3",
        ("pump1", "temp", 21.5, ARRIVAL, 3),
    ),
    ok(
        "kv/single: device and metric from the topic",
        KV,
        "value=21.5",
        ("pump1", "temp", 21.5, ARRIVAL, None),
        device="pump1",
        metric="temp",
    ),
    ok(
        "kv: custom separators, blanks around pairs",
        KV_SEMI,
        "device:pump1; temp : 21.5; seq:3;",
        ("pump1", "temp", 21.5, ARRIVAL, 3),
    ),
    # --- regex
    ok(
        "regex: named groups are metrics, optional seq present",
        RX,
        "pump1 T=21.5 RH=40 #12",
        ("pump1", "temp", 21.5, ARRIVAL, 12),
        ("pump1", "hum", 40.0, ARRIVAL, 12),
    ),
    ok(
        "regex: optional seq absent, topic device wins",
        RX,
        "spoofed T=21.5 RH=40\r\n",
        ("pump1", "temp", 21.5, ARRIVAL, None),
        ("pump1", "hum", 40.0, ARRIVAL, None),
        device="pump1",
    ),
]

REJECTED = [
    # --- json framing
    bad("malformed_json: not JSON", JSON, "{device: pump1}", "malformed_json"),
    bad("malformed_json: empty payload", JSON, b"", "malformed_json"),
    bad("malformed_json: invalid UTF-8", JSON, b'{"device": "\xff"}', "malformed_json"),
    bad("malformed_json: NaN literal", JSON, '{"device": "p", "temp": NaN}', "malformed_json"),
    bad(
        "malformed_json: 1e400 overflows", JSON, '{"device": "p", "temp": 1e400}', "malformed_json"
    ),
    bad("not_an_object: array", JSON, '[{"device": "p", "temp": 1}]', "not_an_object"),
    bad("not_an_object: number", JSON, "21.5", "not_an_object"),
    # --- device
    bad("no_device: neither topic nor payload", JSON, '{"temp": 1}', "no_device"),
    bad("no_device: null", JSON, '{"device": null, "temp": 1}', "no_device"),
    bad("no_device: csv empty cell", CSV, ",1700000000,21.5,1200", "no_device"),
    bad("no_device: kv", KV, "temp=1", "no_device"),
    bad("bad_device: empty", JSON, '{"device": "", "temp": 1}', "bad_device"),
    bad("bad_device: 129 chars", JSON, f'{{"device": "{"d" * 129}", "temp": 1}}', "bad_device"),
    bad("bad_device: bool", JSON, '{"device": true, "temp": 1}', "bad_device"),
    bad("bad_device: float", JSON, '{"device": 1.5, "temp": 1}', "bad_device"),
    bad("bad_device: object", JSON, '{"device": {"id": 1}, "temp": 1}', "bad_device"),
    bad("bad_device: empty topic level", JSON, '{"temp": 1}', "bad_device", device=""),
    # --- metric names
    bad("bad_metric: empty", JSON, '{"device": "p", "metric": "", "value": 1}', "bad_metric"),
    bad("bad_metric: list", JSON, '{"device": "p", "metric": [], "value": 1}', "bad_metric"),
    bad("bad_metric: empty field name", JSON, '{"device": "p", "": 1}', "bad_metric"),
    bad("bad_metric: kv key of 129 chars", KV, f"device=p {'k' * 129}=1", "bad_metric"),
    # --- values
    bad("no_value: metric but no value", JSON, '{"device": "p", "metric": "temp"}', "no_value"),
    bad("no_value: null value", JSON, '{"device": "p", "metric": "m", "value": null}', "no_value"),
    bad(
        "no_value: topic metric on a multi payload",
        JSON,
        '{"temp": 1}',
        "no_value",
        device="p",
        metric="m",
    ),
    bad("no_value: csv empty value cell", CSV_SINGLE, "p;temp;;;", "no_value"),
    bad("non_numeric: text", JSON, '{"device": "p", "metric": "m", "value": "hot"}', "non_numeric"),
    bad("non_numeric: bool", JSON, '{"device": "p", "metric": "m", "value": true}', "non_numeric"),
    bad(
        "non_numeric: 'nan'", JSON, '{"device": "p", "metric": "m", "value": "nan"}', "non_numeric"
    ),
    bad(
        "non_numeric: '-inf'",
        JSON,
        '{"device": "p", "metric": "m", "value": "-inf"}',
        "non_numeric",
    ),
    bad("non_numeric: list", JSON, '{"device": "p", "metric": "m", "value": [1]}', "non_numeric"),
    bad(
        "non_numeric: listed field is text",
        JSON_LISTED,
        '{"device": "p", "temp": "ok"}',
        "non_numeric",
    ),
    bad(
        "non_numeric: listed field is bool",
        JSON_LISTED,
        '{"device": "p", "temp": true}',
        "non_numeric",
    ),
    bad("non_numeric: csv cell", CSV, "p,1700000000,hot,1200", "non_numeric"),
    bad("non_numeric: csv 1e400 is infinite", CSV, "p,1700000000,1e400,1200", "non_numeric"),
    bad("non_numeric: kv values are all metrics", KV, "device=p status=ok temp=1", "non_numeric"),
    bad("non_numeric: regex group", RX, "p T=hot RH=40", "non_numeric"),
    # --- timestamps
    bad(
        "bad_timestamp: words",
        JSON,
        '{"device": "p", "temp": 1, "ts": "yesterday"}',
        "bad_timestamp",
    ),
    bad(
        "bad_timestamp: month 13",
        JSON,
        '{"device": "p", "temp": 1, "ts": "2023-13-01"}',
        "bad_timestamp",
    ),
    bad("bad_timestamp: 'nan'", JSON, '{"device": "p", "temp": 1, "ts": "nan"}', "bad_timestamp"),
    bad("bad_timestamp: bool", JSON, '{"device": "p", "temp": 1, "ts": true}', "bad_timestamp"),
    bad("bad_timestamp: list", JSON, '{"device": "p", "temp": 1, "ts": [1]}', "bad_timestamp"),
    bad("bad_timestamp: csv", CSV, "p,soon,1,2", "bad_timestamp"),
    # --- sequence numbers
    bad("bad_seq: fraction", JSON, '{"device": "p", "temp": 1, "seq": 1.5}', "bad_seq"),
    bad("bad_seq: text", JSON, '{"device": "p", "temp": 1, "seq": "abc"}', "bad_seq"),
    bad("bad_seq: bool", JSON, '{"device": "p", "temp": 1, "seq": true}', "bad_seq"),
    bad(
        "bad_seq: 2**63", JSON, '{"device": "p", "temp": 1, "seq": 9223372036854775808}', "bad_seq"
    ),
    bad("bad_seq: '1e30' too big", JSON, '{"device": "p", "temp": 1, "seq": "1e30"}', "bad_seq"),
    # --- nothing to read
    bad("no_metrics: only text fields", JSON, '{"device": "p", "status": "ok"}', "no_metrics"),
    bad(
        "no_metrics: value without a metric name", JSON, '{"device": "p", "value": 1}', "no_metrics"
    ),
    bad("no_metrics: no listed field", JSON_LISTED, '{"device": "p", "other": 1}', "no_metrics"),
    bad("no_metrics: csv all metric cells empty", CSV, "p,1700000000,,", "no_metrics"),
    bad("no_metrics: kv only special keys", KV, "device=p ts=1700000000", "no_metrics"),
    bad("no_metrics: kv empty line", KV, "\r\n", "no_metrics", device="p"),
    # --- text framing
    bad("bad_utf8: csv", CSV, b"p,1700000000,\xff,1", "bad_utf8"),
    bad("bad_utf8: kv", KV, b"device=\xc3\x28 temp=1", "bad_utf8"),
    bad("bad_utf8: regex", RX, b"\xed\xa0\x80 T=1 RH=2", "bad_utf8"),
    bad("bad_columns: too few", CSV, "p,1700000000,21.5", "bad_columns"),
    bad("bad_columns: too many", CSV, "p,1700000000,21.5,1200,9", "bad_columns"),
    bad("bad_columns: no quoting", CSV, '"pump,1",1700000000,21.5,1200', "bad_columns"),
    bad("bad_pair: no separator", KV, "device=p temp", "bad_pair"),
    bad("bad_pair: empty key", KV, "device=p =1", "bad_pair"),
    bad(
        "bad_pair: blanks around '=' with the default separators",
        KV,
        "device=p temp = 1",
        "bad_pair",
    ),
    bad("no_match: regex", RX, "pump1 temperature 21.5", "no_match"),
]


def _rows(readings: list[Reading]) -> list[Row]:
    for r in readings:
        assert r.source == SRC
        assert type(r.value) is float
        assert type(r.ts) is float
    return [(r.device, r.metric, r.value, r.ts, r.seq) for r in readings]


@pytest.mark.parametrize(("fmt", "payload", "device", "metric", "expected"), ACCEPTED)
def test_accepted(
    fmt: Format, payload: bytes, device: str | None, metric: str | None, expected: list[Row]
) -> None:
    decode = build_decoder(fmt)
    rows = _rows(decode(payload, SRC, device, metric, ARRIVAL))
    assert rows == expected


@pytest.mark.parametrize(("fmt", "payload", "device", "metric", "reason"), REJECTED)
def test_rejected(
    fmt: Format, payload: bytes, device: str | None, metric: str | None, reason: str
) -> None:
    decode = build_decoder(fmt)
    with pytest.raises(DecodeError) as caught:
        decode(payload, SRC, device, metric, ARRIVAL)
    assert caught.value.reason == reason
    assert reason in REASONS
    assert caught.value.detail


def test_every_reason_is_exercised() -> None:
    used = {param.values[-1] for param in REJECTED}
    assert used == REASONS


def test_detail_is_truncated() -> None:
    decode = build_decoder(RX)
    with pytest.raises(DecodeError) as caught:
        decode(b"x" * 10_000, SRC, None, None, ARRIVAL)
    assert caught.value.reason == "no_match"
    assert 0 < len(caught.value.detail) <= 200


# --- config -------------------------------------------------------------------------------

FORMAT = TypeAdapter(Format)


@pytest.mark.parametrize(
    ("config", "model"),
    [
        ({"type": "json"}, JsonFormat),
        ({"type": "json", "metric_field": None, "metrics": ["temp"]}, JsonFormat),
        ({"type": "csv", "columns": ["device", "temp"], "delimiter": "\t"}, CsvFormat),
        ({"type": "csv", "columns": ["value"]}, CsvFormat),
        ({"type": "kv"}, KvFormat),
        ({"type": "kv", "pair_separator": ";", "kv_separator": ":"}, KvFormat),
        ({"type": "regex", "pattern": r"(?P<temp>\d+)"}, RegexFormat),
    ],
)
def test_config_accepted(config: dict[str, Any], model: type[Any]) -> None:
    assert isinstance(FORMAT.validate_python(config), model)


@pytest.mark.parametrize(
    ("config", "complaint"),
    [
        ({"type": "xml"}, "does not match any of the expected tags"),
        ({"type": "json", "value_fields": "v"}, "Extra inputs are not permitted"),
        ({"type": "json", "value_field": ""}, "at least 1 character"),
        ({"type": "json", "device_field": ""}, "at least 1 character"),
        ({"type": "json", "metrics": []}, "at least 1 item"),
        ({"type": "json", "metrics": ["temp", "temp"]}, "must not repeat"),
        ({"type": "json", "metrics": ["ts"]}, "reserved field"),
        ({"type": "json", "device_field": "id", "metric_field": "id"}, "must differ"),
        ({"type": "csv"}, "Field required"),
        ({"type": "csv", "columns": []}, "at least 1 item"),
        ({"type": "csv", "columns": ["device", "device", "temp"]}, "must not repeat"),
        ({"type": "csv", "columns": ["device", ""]}, "must not be empty"),
        ({"type": "csv", "columns": ["device", "ts"]}, "at least one metric column"),
        ({"type": "csv", "columns": ["temp"], "delimiter": ""}, "at least 1 character"),
        ({"type": "kv", "kv_separator": ""}, "at least 1 character"),
        ({"type": "kv", "kv_separator": ","}, "blanks or commas"),
        ({"type": "kv", "pair_separator": ";", "kv_separator": ";"}, "must not overlap"),
        ({"type": "regex", "pattern": "(?P<temp>"}, "invalid regular expression"),
        ({"type": "regex", "pattern": "a{4294967296}(?P<t>x)"}, "invalid regular expression"),
        ({"type": "regex", "pattern": r"\d+"}, "at least one named group"),
        ({"type": "regex", "pattern": r"(?P<device>\w+)"}, "at least one metric group"),
    ],
)
def test_config_rejected(config: dict[str, Any], complaint: str) -> None:
    with pytest.raises(ValidationError, match=complaint):
        FORMAT.validate_python(config)


# --- properties ---------------------------------------------------------------------------


def _check_total(fmt: Format, payload: bytes, device: str | None, metric: str | None) -> None:
    """Decoding either yields sound readings or raises a DecodeError with a known reason."""
    error: DecodeError | None = None
    try:
        readings = build_decoder(fmt)(payload, SRC, device, metric, ARRIVAL)
    except DecodeError as exc:
        readings, error = [], exc
    if error is not None:
        assert error.reason in REASONS
        assert len(error.detail) <= 200
        return
    assert readings
    for r in readings:
        assert type(r.value) is float
        assert isfinite(r.value)
        assert type(r.ts) is float
        assert isfinite(r.ts)
        assert r.seq is None or -(2**63) <= r.seq < 2**63
        assert 0 < len(r.device) <= 128
        assert 0 < len(r.metric) <= 128
        if device is not None:
            assert r.device == device
        if metric is not None:
            assert r.metric == metric
    if metric is not None:
        assert len(readings) == 1


topic_ids = st.none() | st.sampled_from(["pump1", "", "x" * 129]) | st.text(max_size=12)
format_ids = [type(f).__name__ + str(i) for i, f in enumerate(ALL_FORMATS)]


@pytest.mark.parametrize("fmt", ALL_FORMATS, ids=format_ids)
@given(payload=st.binary(max_size=256), device=topic_ids, metric=topic_ids)
def test_arbitrary_bytes_raise_only_decode_error(
    fmt: Format, payload: bytes, device: str | None, metric: str | None
) -> None:
    _check_total(fmt, payload, device, metric)


field_names = st.sampled_from(
    ["device", "metric", "value", "ts", "seq", "dev", "v", "time", "temp", "rpm", "", "k" * 129]
) | st.text(max_size=8)
tricky_text = st.sampled_from(
    ["pump1", "21.5", " 7 ", "1700000000", "1700000000123", "2023-11-14T22:13:20Z", "9999-12-31",
     "nan", "-inf", "1e400", "1e30", "0x10", "", " ", "ok", "x" * 129]
) | st.text(max_size=12)  # fmt: skip
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | tricky_text
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(field_names, inner, max_size=3),
    max_leaves=8,
)
json_payloads = (st.dictionaries(field_names, json_values, max_size=8) | json_values).map(
    orjson.dumps
)


@pytest.mark.parametrize(
    "fmt", [JSON, JSON_LISTED, JSON_RENAMED], ids=["json", "listed", "renamed"]
)
@given(payload=json_payloads, device=topic_ids, metric=topic_ids)
def test_json_shaped_payloads_raise_only_decode_error(
    fmt: Format, payload: bytes, device: str | None, metric: str | None
) -> None:
    _check_total(fmt, payload, device, metric)


kv_lines = st.lists(st.tuples(field_names, tricky_text), max_size=6).map(
    lambda pairs: " ".join(f"{k}={v}" for k, v in pairs)
)
semi_lines = st.lists(st.tuples(field_names, tricky_text), max_size=6).map(
    lambda pairs: ";".join(f"{k}:{v}" for k, v in pairs)
)
csv_lines = st.lists(tricky_text, min_size=3, max_size=6).flatmap(
    lambda cells: st.sampled_from([",", ";"]).map(lambda sep: sep.join(cells))
)
rx_lines = st.tuples(tricky_text, tricky_text, tricky_text, tricky_text).map(
    lambda t: f"{t[0]} T={t[1]} RH={t[2]} #{t[3]}"
)
text_payloads = (kv_lines | semi_lines | csv_lines | rx_lines).map(
    lambda line: line.encode("utf-8", "surrogatepass")
)


@pytest.mark.parametrize("fmt", [CSV, CSV_SINGLE, KV, KV_SEMI, RX], ids=format_ids[3:])
@given(payload=text_payloads, device=topic_ids, metric=topic_ids)
def test_line_shaped_payloads_raise_only_decode_error(
    fmt: Format, payload: bytes, device: str | None, metric: str | None
) -> None:
    _check_total(fmt, payload, device, metric)


metric_names = st.text(st.characters(codec="ascii", categories=["L", "N"]), min_size=1, max_size=16)


@given(
    values=st.dictionaries(
        metric_names.filter(lambda k: k not in {"device", "metric", "value", "ts", "seq"}),
        st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**53), 2**53),
        min_size=1,
        max_size=8,
    )
)
def test_json_multi_metric_round_trip(values: dict[str, float]) -> None:
    payload = orjson.dumps({"device": "pump1", "ts": 1_700_000_000, **values})
    readings = build_decoder(JSON)(payload, SRC, None, None, ARRIVAL)
    assert {r.metric: r.value for r in readings} == {k: float(v) for k, v in values.items()}
    assert {r.ts for r in readings} == {T0}
