"""Simulators in memory: signals, faults, pacing, wire encodings and the CLI parser."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import orjson
import pytest

from simulators.cli import build_parser, main
from simulators.mqtt_fleet import BAD_KINDS, BAD_SIZE, bad_payload, encode_reading
from simulators.pacing import Pacer
from simulators.serial_device import FORMATS, LineFormat, format_line
from simulators.signals import (
    METRICS,
    Fault,
    FaultSpecError,
    ReadingSource,
    Signal,
    SimReading,
    check_faults,
    device_names,
    parse_duration,
    parse_fault,
    parse_metrics,
)
from simulators.summary import RunSummary

START = 1_700_000_000.0
"""2023-11-14 22:13:20 UTC."""


def series(signal: Signal, n: int, step: float = 1.0) -> list[float | None]:
    return [signal.sample(START + i * step) for i in range(n)]


def pair(fault: str, metric: str = "temperature", seed: int = 7) -> tuple[Signal, Signal]:
    """The same signal without and with one fault."""
    clean = Signal("dev-001", metric, seed=seed, start_ts=START)
    faulty = Signal("dev-001", metric, seed=seed, start_ts=START, faults=[parse_fault(fault)])
    return clean, faulty


# --------------------------------------------------------------------------- clean signals


def test_same_seed_same_values_other_seed_other_values() -> None:
    a = series(Signal("dev-001", "temperature", seed=1, start_ts=START), 200)
    b = series(Signal("dev-001", "temperature", seed=1, start_ts=START), 200)
    c = series(Signal("dev-001", "temperature", seed=2, start_ts=START), 200)
    assert a == b
    assert a != c


def test_a_series_does_not_depend_on_the_rest_of_the_fleet() -> None:
    for fleet in (2, 9):
        src = ReadingSource(device_names(fleet), ["temperature", "humidity"], start_ts=START)
        got = [src.take(START + i) for i in range(fleet * 2 * 20)]
        mine = [r for r in got if r is not None and (r.device, r.metric) == ("dev-002", "humidity")]
        alone = Signal("dev-002", "humidity", start_ts=START)
        assert len(mine) == 20
        assert [r.value for r in mine] == [alone.sample(r.ts) for r in mine]


@pytest.mark.parametrize("metric", list(METRICS))
def test_metric_stays_near_its_baseline_over_a_day(metric: str) -> None:
    spec = METRICS[metric]
    values = [v for v in series(Signal("dev-001", metric, start_ts=START), 24 * 60, 60.0) if v]
    assert len(values) == 24 * 60
    assert statistics.fmean(values) == pytest.approx(spec.baseline, abs=4 * spec.spread + 0.1)
    swing = max(values) - min(values)
    assert 1.5 * spec.amplitude < swing < 2 * spec.amplitude + 10 * spec.noise


def test_daily_cycle_peaks_in_the_afternoon_utc() -> None:
    sig = Signal("dev-001", "temperature")
    midnight = 19_675 * 86_400.0
    at_15h = sig.clean(midnight + 15 * 3600, 0.0)
    at_03h = sig.clean(midnight + 3 * 3600, 0.0)
    assert at_15h - at_03h == pytest.approx(2 * METRICS["temperature"].amplitude)


def test_values_are_rounded_to_the_metric_precision() -> None:
    for metric, spec in METRICS.items():
        for v in series(Signal("dev-001", metric, start_ts=START), 50):
            assert v is not None
            assert round(v, spec.decimals) == v


# --------------------------------------------------------------------------- faults


def test_spike_adds_plus_or_minus_mag_with_the_given_probability() -> None:
    clean, faulty = pair("spike:prob=0.2,mag=25")
    diffs = [
        round(f - c, 6)
        for c, f in zip(series(clean, 2000), series(faulty, 2000), strict=True)
        if c is not None and f is not None
    ]
    spikes = [d for d in diffs if d != 0]
    assert set(spikes) == {25.0, -25.0}
    assert 0.15 < len(spikes) / len(diffs) < 0.25


def test_spike_default_magnitude_is_per_metric() -> None:
    clean, faulty = pair("spike:prob=1", metric="pressure")
    c, f = clean.sample(START), faulty.sample(START)
    assert c is not None
    assert f is not None
    assert abs(f - c) == pytest.approx(METRICS["pressure"].spike)


def test_spike_only_inside_its_window() -> None:
    clean, faulty = pair("spike:prob=1,mag=10,at=10s,for=5s")
    c, f = series(clean, 30), series(faulty, 30)
    hit = [i for i in range(30) if c[i] != f[i]]
    assert hit == list(range(10, 15))


def test_drift_grows_linearly_per_hour_from_at() -> None:
    clean, faulty = pair("drift:at=1m,rate=36")  # 0.01 per second
    c, f = series(clean, 200), series(faulty, 200)
    for i in range(200):
        ci, fi = c[i], f[i]
        assert ci is not None
        assert fi is not None
        expected = 0.0 if i < 60 else 0.01 * (i - 60)
        assert fi - ci == pytest.approx(expected, abs=0.011)


def test_stuck_freezes_the_value_from_at_and_releases_after_for() -> None:
    clean, faulty = pair("stuck:device=dev-1,at=30s,for=20s")
    c, f = series(clean, 80), series(faulty, 80)
    assert f[:30] == c[:30]
    assert set(f[30:50]) == {c[30]}
    assert f[50:] == c[50:]


def test_dropout_yields_no_reading_for_its_window_only() -> None:
    clean, faulty = pair("dropout:device=*,at=10s,for=5s")
    c, f = series(clean, 30), series(faulty, 30)
    assert [i for i, v in enumerate(f) if v is None] == list(range(10, 15))
    assert [v for v in f if v is not None] == c[:10] + c[15:]


def test_noise_burst_multiplies_noise_by_factor() -> None:
    clean, faulty = pair("noise_burst:at=100s,for=100s", metric="pressure")

    def residual_sd(sig: Signal, lo: int, hi: int) -> float:
        out = []
        for i in range(lo, hi):
            v = sig.sample(START + i)
            assert v is not None
            out.append(v - sig.clean(START + i, 0.0))
        return statistics.pstdev(out)

    for sig in (clean, faulty):
        assert residual_sd(sig, 0, 100) == pytest.approx(METRICS["pressure"].noise, rel=0.3)
    assert residual_sd(clean, 100, 200) == pytest.approx(METRICS["pressure"].noise, rel=0.3)
    burst = residual_sd(faulty, 100, 200)
    assert burst == pytest.approx(10 * METRICS["pressure"].noise, rel=0.3)


@pytest.mark.parametrize(
    ("fault", "device", "metric", "applies"),
    [
        ("stuck", "dev-007", "humidity", True),
        ("stuck:device=dev-3", "dev-003", "temperature", True),
        ("stuck:device=dev-3", "dev-030", "temperature", False),
        ("stuck:device=dev-00[12]", "dev-002", "temperature", True),
        ("stuck:metric=hum*", "dev-001", "humidity", True),
        ("stuck:metric=hum*", "dev-001", "temperature", False),
    ],
)
def test_faults_select_devices_and_metrics(
    fault: str, device: str, metric: str, applies: bool
) -> None:
    assert parse_fault(fault).matches(device, metric) is applies


def test_a_fault_on_one_device_leaves_the_others_alone() -> None:
    faults = [parse_fault("spike:device=dev-2,prob=1")]
    clean = ReadingSource(device_names(3), ["temperature"], seed=1, start_ts=START)
    faulty = ReadingSource(device_names(3), ["temperature"], seed=1, start_ts=START, faults=faults)
    for i in range(30):
        a, b = clean.take(START + i), faulty.take(START + i)
        assert a is not None
        assert b is not None
        assert (a.value != b.value) is (a.device == "dev-002")


def test_check_faults_rejects_a_fault_matching_nothing() -> None:
    check_faults([parse_fault("stuck:device=dev-3")], device_names(5), ["temperature"])
    with pytest.raises(FaultSpecError, match=r"matches no series.*dev-001\.\.dev-002"):
        check_faults([parse_fault("stuck:device=dev-9")], device_names(2), ["temperature"])


# --------------------------------------------------------------------------- fault specs


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("spike:device=dev-3,prob=0.01,mag=25", Fault("spike", device="dev-3", prob=0.01, mag=25)),
        ("stuck:device=dev-1,at=30s", Fault("stuck", device="dev-1", at=30.0)),
        ("dropout:device=*,at=10s,for=5s", Fault("dropout", at=10.0, duration=5.0)),
        ("drift:metric=temperature,rate=-2.5", Fault("drift", metric="temperature", rate=-2.5)),
        ("noise-burst:at=1m,for=500ms", Fault("noise_burst", at=60.0, duration=0.5)),
        ("noise_burst:factor=3", Fault("noise_burst", factor=3.0)),
        (" spike ", Fault("spike")),
    ],
)
def test_fault_specs_parse(spec: str, expected: Fault) -> None:
    fault = parse_fault(spec)
    assert fault == expected
    assert parse_fault(str(fault)) == fault


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("spik:prob=1", "unknown kind 'spik' (expected one of: spike, drift, stuck"),
        ("spike:probability=1", "unknown parameter 'probability' for spike (expected one of"),
        ("spike:prob=2", "prob must be between 0 and 1, got 2"),
        ("spike:prob=often", "prob must be a number, got 'often'"),
        ("spike:prob", "expected key=value, got 'prob'"),
        ("spike:prob=0.1,prob=0.2", "parameter 'prob' given twice"),
        ("stuck:at=30x", "at: bad duration '30x' (use e.g. 500ms, 30s, 2m, 1h)"),
        ("dropout:for=0s", "for must be longer than 0s"),
        ("drift:at=1m", "drift needs rate"),
        ("stuck:metric=temp", "metric 'temp' matches no known metric"),
        ("noise_burst:factor=-1", "factor must be positive"),
        ("spike:mag=inf", "mag must be finite"),
    ],
)
def test_bad_fault_specs_say_what_is_wrong(spec: str, message: str) -> None:
    with pytest.raises(FaultSpecError) as info:
        parse_fault(spec)
    assert str(info.value).startswith(f"invalid fault {spec!r}: ")
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30", 30.0), ("30s", 30.0), ("500ms", 0.5), ("2m", 120.0), ("1.5h", 5400.0), (".5s", 0.5)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_metrics_and_device_names() -> None:
    assert parse_metrics("all") == tuple(METRICS)
    assert parse_metrics("humidity, current") == ("humidity", "current")
    with pytest.raises(ValueError, match="unknown metric 'temp'"):
        parse_metrics("temp")
    assert device_names(3) == ("dev-001", "dev-002", "dev-003")
    assert device_names(1200)[-1] == "dev-1200"


# --------------------------------------------------------------------------- fleet stream


def test_readings_go_round_robin_with_contiguous_seq_per_series() -> None:
    src = ReadingSource(device_names(3), ["temperature", "humidity"], start_ts=START)
    readings = [src.take(START + i) for i in range(60)]
    assert all(r is not None for r in readings)
    order = [(r.device, r.metric) for r in readings if r]
    assert order[:6] == list(src.series)
    for dev, met in src.series:
        seqs = [r.seq for r in readings if r and (r.device, r.metric) == (dev, met)]
        assert seqs == list(range(1, 11))


def test_dropout_leaves_a_time_gap_not_a_seq_gap() -> None:
    src = ReadingSource(
        ["dev-001"], ["temperature"], start_ts=START, faults=[parse_fault("dropout:at=5,for=5")]
    )
    got = [r for r in (src.take(START + i) for i in range(20)) if r is not None]
    assert [r.seq for r in got] == list(range(1, 16))
    assert [r.ts - START for r in got] == [0, 1, 2, 3, 4, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19]


# --------------------------------------------------------------------------- pacing


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_pacer_follows_a_schedule_instead_of_accumulating_drift() -> None:
    clock = FakeClock()
    pacer = Pacer(4.0, clock=clock, sleep=clock.sleep)
    offsets = []
    for _ in range(8):
        offsets.append(pacer.wait())
        clock.now += 0.01  # time spent sending is absorbed, not added
    assert offsets == [i * 0.25 for i in range(8)]
    assert clock.now == pytest.approx(100.0 + 7 * 0.25 + 0.01)


def test_pacer_catches_up_without_sleeping_when_late_and_reanchors() -> None:
    clock = FakeClock()
    pacer = Pacer(10.0, clock=clock, sleep=clock.sleep)
    pacer.wait()
    clock.now += 1.0  # stalled for 10 slots
    late = [pacer.wait() for _ in range(10)]
    assert clock.sleeps == []
    assert late == pytest.approx([i / 10 for i in range(1, 11)])
    clock.now += 5.0
    pacer.reanchor()
    assert pacer.wait() == pytest.approx(6.0)
    assert pacer.wait() == pytest.approx(6.1)


def test_unpaced_pacer_never_sleeps() -> None:
    clock = FakeClock()
    pacer = Pacer(None, clock=clock, sleep=clock.sleep)
    assert [pacer.wait() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert clock.sleeps == []


# --------------------------------------------------------------------------- wire formats

READING = SimReading("dev-007", "humidity", 47.5, 1_700_000_000.25, 12)


def test_mqtt_payload_is_the_documented_json() -> None:
    assert orjson.loads(encode_reading(READING)) == {
        "device": "dev-007",
        "metric": "humidity",
        "value": 47.5,
        "ts": 1_700_000_000.25,
        "seq": 12,
    }


class Rejected(Exception):
    """A payload the strict decoder below refuses."""


def strict_decode(payload: bytes) -> float:
    """What a strict gateway decoder accepts: UTF-8 JSON with a numeric value, <= 64 kB."""
    if len(payload) > 65_536:
        raise Rejected("too large")
    try:
        value = json.loads(payload.decode("utf-8"))["value"]
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise Rejected(str(e)) from e
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Rejected(f"not a number: {value!r}")
    return float(value)


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_every_bad_payload_is_rejected_by_a_strict_decoder(kind: str) -> None:
    payload = bad_payload(kind, "dev-001", "temperature", 1.0)
    with pytest.raises(Rejected):
        strict_decode(payload)
    assert strict_decode(encode_reading(READING)) == 47.5


def test_bad_payload_details() -> None:
    with pytest.raises(UnicodeDecodeError):
        bad_payload("invalid_utf8", "d", "m", 0).decode()
    big = bad_payload("oversized", "d", "m", 0)
    assert len(big) == BAD_SIZE
    assert orjson.loads(big)["value"] is None
    assert orjson.loads(bad_payload("non_numeric", "d", "m", 0))["value"] == "n/a"
    with pytest.raises(ValueError, match="unknown bad payload kind"):
        bad_payload("nope", "d", "m", 0)


def parse_line(line: bytes, fmt: LineFormat) -> dict[str, str]:
    text = line.decode()
    assert text.endswith("\n")
    assert text.count("\n") == 1
    if fmt == "csv":
        return dict(zip(("device", "metric", "value", "ts", "seq"), text.split(","), strict=True))
    if fmt == "kv":
        return dict(part.split("=", 1) for part in text.split())
    return {k: str(v) for k, v in json.loads(text).items()}


@pytest.mark.parametrize("fmt", FORMATS)
def test_serial_line_formats_round_trip(fmt: LineFormat) -> None:
    fields = parse_line(format_line(READING, fmt), fmt)
    assert fields["device"] == "dev-007"
    assert fields["metric"] == "humidity"
    assert float(fields["value"]) == 47.5
    assert float(fields["ts"]) == 1_700_000_000.25
    assert int(fields["seq"]) == 12


def test_csv_line_is_exactly_the_documented_columns() -> None:
    assert format_line(READING, "csv") == b"dev-007,humidity,47.5,1700000000.25,12\n"
    kv = b"device=dev-007 metric=humidity value=47.5 ts=1700000000.25 seq=12\n"
    assert format_line(READING, "kv") == kv


# --------------------------------------------------------------------------- summaries


def test_summary_counts_and_sums_per_series(tmp_path: Path) -> None:
    s = RunSummary(bad=1, elapsed=2.0)
    for seq, value in enumerate([1.5, 2.5, 3.0], start=1):
        s.add(SimReading("dev-001", "current", value, 0.0, seq))
    s.add(SimReading("dev-002", "current", 9.0, 0.0, 1))
    path = tmp_path / "summary.json"
    s.write_json(path)
    data = json.loads(path.read_text())
    assert data["sent"] == 4
    assert data["bad"] == 1
    assert data["series"]["dev-001"]["current"] == {
        "count": 3,
        "sum": 7.0,
        "mean": pytest.approx(7 / 3),
        "min": 1.5,
        "max": 3.0,
        "first_seq": 1,
        "last_seq": 3,
    }
    assert s.line() == "sent=4 bad=1 dropped=0 elapsed=2.00s rate=2.0/s"
    assert not math.isnan(data["series"]["dev-002"]["current"]["mean"])


# --------------------------------------------------------------------------- CLI


def test_cli_parses_both_commands() -> None:
    parser, _ = build_parser()
    fleet = ["--devices", "50", "--metrics", "all", "--rate", "2000", "--count", "10"]
    faults = ["--fault", "spike:device=dev-3,prob=0.01,mag=25", "--fault", "stuck:at=30s"]
    args = parser.parse_args(["mqtt", *fleet, *faults])
    assert (args.devices, args.rate, args.count, args.qos) == (50, 2000.0, 10, 1)
    assert args.metrics == tuple(METRICS)
    assert [f.kind for f in args.fault] == ["spike", "stuck"]
    args = parser.parse_args(["serial", "--format", "kv", "--unplug-at", "5", "--rate", "0"])
    assert (args.format, args.unplug_at, args.unplug_for, args.rate) == ("kv", 5, 5.0, None)
    assert args.write_timeout == 0.5


def test_cli_is_open_for_more_subcommands() -> None:
    parser, subparsers = build_parser()
    extra = subparsers.add_parser("extra")
    extra.set_defaults(handler=lambda args, stop: 0)
    assert parser.parse_args(["extra"]).handler is not None
    assert parser.parse_args(["demo"]).handler is not None


@pytest.mark.parametrize("command", [[], ["mqtt"], ["serial"]])
def test_cli_help_reads_well(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([*command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "edge-gateway-sim" in out
    if command:
        assert "faults (--fault, repeatable)" in out
        assert "--count" in out
        assert "--seed" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["mqtt", "--fault", "spik"], "argument --fault: invalid fault 'spik': unknown kind"),
        (["mqtt", "--count", "1", "--duration", "1s"], "not allowed with argument"),
        (["serial", "--metrics", "temp"], "unknown metric 'temp'"),
        (["serial", "--unplug-for", "soon"], "bad duration 'soon'"),
        (["mqtt", "--devices", "0"], "must be >= 1"),
    ],
)
def test_cli_usage_errors_exit_2_with_a_clear_message(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_without_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().err
