"""Payload codecs: pure functions from one message's bytes to Readings.

A codec is built once from its config block (``build_decoder``) and then called per
message. It does no I/O and keeps no state. It raises nothing but ``DecodeError``, whose
``reason`` is one of ``REASONS`` (a short label the caller counts); the human detail is
in ``DecodeError.detail``.

Rules shared by every format:

* ``device`` and ``metric`` given by the caller (taken from the MQTT topic) win over the
  payload, because broker ACLs protect the topic, not the payload.
* Field names ``device``, ``metric``, ``value``, ``ts`` and ``seq`` are special (in JSON
  their names are configurable); every other field is a metric.
* Single-metric shape: a metric name is known (from the topic or the metric field), so
  the reading's value is the value field and every other field is ignored.
  Multi-metric shape: no metric name is known, so each metric field becomes a reading.
* Device and metric ids: a string, or an integer turned into a string, 1..128 chars.
* ``ts``: a number is epoch seconds, or milliseconds if above 1e11. A string is a number
  in the same units or ISO 8601 (``Z`` or an offset; naive means UTC). No ts: ``arrival``.
* ``seq``: an integer, an integral float or a string holding one, within SQLite's
  signed 64-bit range.
* Values are finite floats: bool, NaN and infinity are not numbers.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from contextlib import suppress
from datetime import UTC, datetime
from math import isfinite
from typing import Annotated, Literal, Protocol

import orjson
from pydantic import Field, field_validator, model_validator

from gateway.config.types import StrictModel
from gateway.errors import DecodeError
from gateway.model import Reading

__all__ = [
    "REASONS",
    "CsvFormat",
    "Decoder",
    "Format",
    "JsonFormat",
    "KvFormat",
    "RegexFormat",
    "build_decoder",
]

REASONS: frozenset[str] = frozenset(
    {
        "malformed_json",  # not JSON (orjson also rejects invalid UTF-8, NaN, 1e400)
        "not_an_object",  # JSON, but not an object
        "bad_utf8",  # text formats: payload is not UTF-8
        "bad_columns",  # csv: wrong number of cells
        "bad_pair",  # kv: a token without the key/value separator, or an empty key
        "no_match",  # regex: the pattern does not match
        "no_device",  # neither the topic nor the payload names a device
        "bad_device",  # device id is not a 1..128 char string or an integer
        "bad_metric",  # metric name is not a 1..128 char string or an integer
        "no_value",  # single-metric shape without a value
        "non_numeric",  # a value that is not a finite number
        "bad_timestamp",  # ts present but not a finite number or ISO 8601 string
        "bad_seq",  # seq present but not an integer in the signed 64-bit range
        "no_metrics",  # the message holds no reading at all
    }
)
"""Every ``DecodeError.reason`` a decoder raises: the counter names to pre-register."""

SPECIAL_FIELDS: tuple[str, ...] = ("device", "metric", "value", "ts", "seq")
"""Field names with a fixed meaning in csv, kv and regex formats."""

_SPECIAL = frozenset(SPECIAL_FIELDS)
_MAX_ID = 128
_MS_ABOVE = 1e11  # epoch numbers above this are milliseconds (1e11 s is the year 5138)
_SEQ_MIN, _SEQ_MAX = -(2**63), 2**63 - 1
_DETAIL_MAX = 200
_SHOW_MAX = 60
_WS_OR_COMMA = re.compile(r"[\s,]+")


# --- config -------------------------------------------------------------------------------


class JsonFormat(StrictModel):
    """A JSON object per message, e.g. ``{"device": "pump1", "temp": 21.5, "ts": 1.7e9}``.

    Set a ``*_field`` to null when the payload never carries it (a multi-metric payload
    with a data field called ``metric`` needs ``metric_field: null``). In the single-metric
    shape a numeric string value such as ``"21.5"`` is accepted. In the multi-metric shape,
    unlisted fields that are not numbers (``"status": "ok"``, ``true``) are skipped; with a
    ``metrics`` allow-list only those fields are read, numeric strings are accepted, and
    anything else in a listed field rejects the message. JSON null counts as absent.
    """

    type: Literal["json"] = "json"
    device_field: str | None = Field(default="device", min_length=1)
    metric_field: str | None = Field(default="metric", min_length=1)
    value_field: str = Field(default="value", min_length=1)
    timestamp_field: str | None = Field(default="ts", min_length=1)
    seq_field: str | None = Field(default="seq", min_length=1)
    metrics: list[str] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _distinct_fields(self) -> JsonFormat:
        reserved = self.reserved_fields()
        if len(reserved) != len(set(reserved)):
            raise ValueError(f"device/metric/value/ts/seq fields must differ, got {reserved}")
        if self.metrics is not None:
            if len(self.metrics) != len(set(self.metrics)):
                raise ValueError("metrics must not repeat a name")
            if clash := sorted(set(self.metrics) & set(reserved)):
                raise ValueError(f"metrics must not name a reserved field: {clash}")
            if "" in self.metrics:
                raise ValueError("metrics must not contain an empty name")
        return self

    def reserved_fields(self) -> list[str]:
        """The configured device/metric/value/ts/seq field names, in that order."""
        fields = (
            self.device_field,
            self.metric_field,
            self.value_field,
            self.timestamp_field,
            self.seq_field,
        )
        return [f for f in fields if f is not None]


class CsvFormat(StrictModel):
    """One delimited line per message, e.g. ``pump1,1700000000,21.5,1200``.

    ``columns`` names each cell; special names are ``device``, ``metric``, ``value``,
    ``ts`` and ``seq``, any other name is a metric. Cells are split on ``delimiter``
    (no quoting) and stripped of surrounding blanks; an empty cell counts as absent.
    """

    type: Literal["csv"]
    columns: list[str] = Field(min_length=1)
    delimiter: str = Field(default=",", min_length=1)

    @field_validator("columns")
    @classmethod
    def _columns_ok(cls, columns: list[str]) -> list[str]:
        if any(not c for c in columns):
            raise ValueError("column names must not be empty")
        if len(columns) != len(set(columns)):
            raise ValueError("column names must not repeat")
        if "value" not in columns and all(c in _SPECIAL for c in columns):
            raise ValueError("columns need a 'value' column or at least one metric column")
        return columns


class KvFormat(StrictModel):
    """``key=value`` pairs, e.g. ``device=pump1 ts=1700000000 temp=21.5 rpm=1200``.

    Pairs are separated by ``pair_separator`` (default: any run of whitespace or commas).
    Special keys as in csv; any other key is a metric, so its value must be numeric
    (an empty value is skipped). Values cannot be quoted. A repeated key: the last wins.
    """

    type: Literal["kv"]
    pair_separator: str | None = Field(default=None, min_length=1)
    kv_separator: str = Field(default="=", min_length=1)

    @model_validator(mode="after")
    def _separators_ok(self) -> KvFormat:
        if self.pair_separator is None:
            if _WS_OR_COMMA.search(self.kv_separator):
                raise ValueError("kv_separator cannot hold blanks or commas (the pair separators)")
        elif self.pair_separator in self.kv_separator or self.kv_separator in self.pair_separator:
            raise ValueError("pair_separator and kv_separator must not overlap")
        return self


class RegexFormat(StrictModel):
    """A regular expression with named groups, searched in the text (anchor it yourself).

    Special group names as in csv; any other named group is a metric. A group that did
    not take part in the match, or matched only blanks, counts as absent.
    """

    type: Literal["regex"]
    pattern: str

    @field_validator("pattern")
    @classmethod
    def _pattern_ok(cls, pattern: str) -> str:
        try:
            compiled = re.compile(pattern)
        except (re.error, OverflowError, RecursionError) as exc:
            raise ValueError(f"invalid regular expression: {exc}") from None
        names = set(compiled.groupindex)
        if not names:
            raise ValueError("pattern needs at least one named group, e.g. (?P<temp>[0-9.]+)")
        if "value" not in names and names <= _SPECIAL:
            raise ValueError("pattern needs a 'value' group or at least one metric group")
        return pattern


Format = Annotated[JsonFormat | CsvFormat | KvFormat | RegexFormat, Field(discriminator="type")]
"""A source's payload format, chosen by its ``type`` key."""


class Decoder(Protocol):
    """Decode one message; raise ``DecodeError`` (only) when it cannot be used."""

    def __call__(
        self, payload: bytes, source: str, device: str | None, metric: str | None, arrival: float
    ) -> list[Reading]: ...


def build_decoder(fmt: Format) -> Decoder:
    """Build the per-message decode function for ``fmt`` (do this once, not per message)."""
    if isinstance(fmt, JsonFormat):
        return _json_decoder(fmt)
    if isinstance(fmt, CsvFormat):
        return _csv_decoder(fmt)
    if isinstance(fmt, KvFormat):
        return _kv_decoder(fmt)
    return _regex_decoder(fmt)


# --- shared field rules -------------------------------------------------------------------


def _fail(reason: str, detail: str) -> DecodeError:
    return DecodeError(reason, detail[:_DETAIL_MAX])


def _show(raw: object) -> str:
    text = repr(raw)
    return text if len(text) <= _SHOW_MAX else text[: _SHOW_MAX - 3] + "..."


def _ident(raw: object, reason: str) -> str:
    """A device or metric id: a string, or an integer as a string; 1..128 chars."""
    if type(raw) is str:
        text = raw
    elif type(raw) is int:
        text = str(raw)
    else:
        raise _fail(reason, f"expected a string, got {_show(raw)}")
    if 0 < len(text) <= _MAX_ID:
        return text
    raise _fail(reason, f"must be 1..{_MAX_ID} characters, got {_show(text)}")


def _epoch(ts: float, raw: object) -> float:
    if not isfinite(ts):
        raise _fail("bad_timestamp", f"not finite: {_show(raw)}")
    return ts / 1000.0 if ts > _MS_ABOVE else ts


def _timestamp(raw: object) -> float:
    """Epoch seconds from a number (s or ms), a numeric string or an ISO 8601 string."""
    if type(raw) is float or type(raw) is int:
        return _epoch(float(raw), raw)
    if type(raw) is not str:
        raise _fail("bad_timestamp", f"expected a number or ISO 8601 string, got {_show(raw)}")
    try:
        return _epoch(float(raw), raw)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(raw)
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.timestamp()
    except (ValueError, OverflowError):
        raise _fail("bad_timestamp", f"not a number or ISO 8601: {_show(raw)}") from None


def _seq(raw: object) -> int:
    """A sequence number from an int, an integral float, or a string holding either."""
    seq: int | None = None
    if type(raw) is int:
        seq = raw
    elif type(raw) is float:
        seq = _integral(raw)
    elif type(raw) is str:
        try:
            seq = int(raw)
        except ValueError:
            with suppress(ValueError):
                seq = _integral(float(raw))
    if seq is None or not _SEQ_MIN <= seq <= _SEQ_MAX:
        raise _fail("bad_seq", f"expected a 64-bit integer, got {_show(raw)}")
    return seq


def _integral(number: float) -> int | None:
    return int(number) if number.is_integer() else None


def _number(raw: object, name: str) -> float:
    """A finite float from a JSON number or a numeric string (bool is not a number)."""
    if type(raw) is float or type(raw) is int:
        value = float(raw)
    elif type(raw) is str:
        try:
            value = float(raw)
        except ValueError:
            raise _fail("non_numeric", f"{name}: {_show(raw)}") from None
    else:
        raise _fail("non_numeric", f"{name}: {_show(raw)}")
    if isfinite(value):
        return value
    raise _fail("non_numeric", f"{name}: not finite: {_show(raw)}")


# --- json ---------------------------------------------------------------------------------


def _json_decoder(fmt: JsonFormat) -> Decoder:
    loads = orjson.loads
    json_error = orjson.JSONDecodeError
    device_field = fmt.device_field
    metric_field = fmt.metric_field
    value_field = fmt.value_field
    ts_field = fmt.timestamp_field
    seq_field = fmt.seq_field
    reserved = frozenset(fmt.reserved_fields())
    allowed = tuple(fmt.metrics) if fmt.metrics is not None else None

    def decode(
        payload: bytes, source: str, device: str | None, metric: str | None, arrival: float
    ) -> list[Reading]:
        try:
            obj = loads(payload)
        except json_error as exc:
            raise _fail("malformed_json", str(exc)) from None
        if type(obj) is not dict:
            raise _fail("not_an_object", f"got {type(obj).__name__}: {_show(obj)}")

        raw = (
            device
            if device is not None
            else obj.get(device_field)
            if device_field is not None
            else None
        )
        if type(raw) is str and 0 < len(raw) <= _MAX_ID:  # fast path of _ident
            device = raw
        elif raw is None:
            raise _fail("no_device", f"no device in topic or field {device_field!r}")
        else:
            device = _ident(raw, "bad_device")

        ts = arrival
        if ts_field is not None and (raw := obj.get(ts_field)) is not None:
            # Fast path: epoch seconds as a number (orjson never yields NaN or infinity).
            if (type(raw) is float or type(raw) is int) and raw <= _MS_ABOVE:
                ts = float(raw)
            else:
                ts = _timestamp(raw)

        seq = None
        if seq_field is not None and (raw := obj.get(seq_field)) is not None:
            seq = raw if type(raw) is int and _SEQ_MIN <= raw <= _SEQ_MAX else _seq(raw)

        raw = (
            metric
            if metric is not None
            else obj.get(metric_field)
            if metric_field is not None
            else None
        )
        if type(raw) is str and 0 < len(raw) <= _MAX_ID:  # fast path of _ident
            metric = raw
        elif raw is not None:
            metric = _ident(raw, "bad_metric")

        if metric is not None:  # single-metric shape
            raw = obj.get(value_field)
            if raw is None:
                raise _fail("no_value", f"metric {metric!r} but no {value_field!r} field")
            value = raw if type(raw) is float else _number(raw, value_field)
            return [Reading(source, device, metric, value, ts, seq)]

        readings: list[Reading] = []
        if allowed is None:  # every numeric field that is not reserved
            for key, raw in obj.items():
                if type(raw) is float or type(raw) is int:
                    if key in reserved:
                        continue
                    if not 0 < len(key) <= _MAX_ID:
                        raise _fail("bad_metric", f"field name {_show(key)}")
                    readings.append(Reading(source, device, key, float(raw), ts, seq))
        else:  # only the listed fields, and each one present must be numeric
            for key in allowed:
                raw = obj.get(key)
                if raw is not None:
                    readings.append(Reading(source, device, key, _number(raw, key), ts, seq))
        if not readings:
            raise _fail("no_metrics", f"no numeric field besides {sorted(reserved)}")
        return readings

    return decode


# --- text formats -------------------------------------------------------------------------


def _text(payload: bytes) -> str:
    try:
        return payload.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as exc:
        raise _fail("bad_utf8", str(exc)) from None


def _present(raw: str | None) -> str | None:
    """``raw`` stripped of blanks, or None when it is absent or blank."""
    if raw is None:
        return None
    raw = raw.strip()
    return raw or None


def _text_readings(
    source: str,
    device: str | None,
    metric: str | None,
    arrival: float,
    fields: dict[str, str | None],
    metric_fields: Iterable[tuple[str, str | None]],
) -> list[Reading]:
    """Readings from the text fields of one message (csv, kv and regex share these rules)."""
    if device is None:
        device = _present(fields.get("device"))
        if device is None:
            raise _fail("no_device", "no device in topic or payload")
    device = _ident(device, "bad_device")

    raw = _present(fields.get("ts"))
    ts = arrival if raw is None else _timestamp(raw)
    raw = _present(fields.get("seq"))
    seq = None if raw is None else _seq(raw)

    if metric is None:
        metric = _present(fields.get("metric"))
    if metric is not None:  # single-metric shape
        metric = _ident(metric, "bad_metric")
        raw = _present(fields.get("value"))
        if raw is None:
            raise _fail("no_value", f"metric {metric!r} but no value")
        return [Reading(source, device, metric, _number(raw, "value"), ts, seq)]

    readings: list[Reading] = []
    for name, cell in metric_fields:
        raw = _present(cell)
        if raw is not None:
            name = _ident(name, "bad_metric")
            readings.append(Reading(source, device, name, _number(raw, name), ts, seq))
    if not readings:
        hint = " ('value' needs a metric name)" if _present(fields.get("value")) else ""
        raise _fail("no_metrics", f"no metric field with a value{hint}")
    return readings


def _csv_decoder(fmt: CsvFormat) -> Decoder:
    delimiter = fmt.delimiter
    width = len(fmt.columns)
    special = tuple((i, name) for i, name in enumerate(fmt.columns) if name in _SPECIAL)
    metrics = tuple((i, name) for i, name in enumerate(fmt.columns) if name not in _SPECIAL)

    def decode(
        payload: bytes, source: str, device: str | None, metric: str | None, arrival: float
    ) -> list[Reading]:
        cells = _text(payload).split(delimiter)
        if len(cells) != width:
            raise _fail("bad_columns", f"expected {width} cells, got {len(cells)}")
        fields: dict[str, str | None] = {name: cells[i] for i, name in special}
        pairs = ((name, cells[i]) for i, name in metrics)
        return _text_readings(source, device, metric, arrival, fields, pairs)

    return decode


def _kv_decoder(fmt: KvFormat) -> Decoder:
    pair_sep = fmt.pair_separator
    kv_sep = fmt.kv_separator
    split_default = _WS_OR_COMMA.split

    def decode(
        payload: bytes, source: str, device: str | None, metric: str | None, arrival: float
    ) -> list[Reading]:
        text = _text(payload)
        tokens = split_default(text) if pair_sep is None else text.split(pair_sep)
        fields: dict[str, str | None] = {}
        for token in tokens:
            if not token or token.isspace():
                continue
            key, sep, value = token.partition(kv_sep)
            key = key.strip()
            if not sep or not key:
                raise _fail("bad_pair", f"expected key{kv_sep}value, got {_show(token)}")
            fields[key] = value
        pairs = ((k, v) for k, v in fields.items() if k not in _SPECIAL)
        return _text_readings(source, device, metric, arrival, fields, pairs)

    return decode


def _regex_decoder(fmt: RegexFormat) -> Decoder:
    search = re.compile(fmt.pattern).search

    def decode(
        payload: bytes, source: str, device: str | None, metric: str | None, arrival: float
    ) -> list[Reading]:
        text = _text(payload)
        match = search(text)
        if match is None:
            raise _fail("no_match", f"pattern did not match {_show(text)}")
        fields: dict[str, str | None] = match.groupdict()
        pairs = ((k, v) for k, v in fields.items() if k not in _SPECIAL)
        return _text_readings(source, device, metric, arrival, fields, pairs)

    return decode
