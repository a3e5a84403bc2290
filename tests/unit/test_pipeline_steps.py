"""The step registry: YAML-shaped steps validate (or fail naming the step), then compile."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import yaml
from pydantic import TypeAdapter, ValidationError
from reactivex.testing import ReactiveTest, TestScheduler

from gateway.counters import Counters
from gateway.model import Aggregate, Alert, Reading
from gateway.pipeline.steps import (
    STEP_NAMES,
    FilterStep,
    Step,
    ThresholdStep,
    WindowStep,
    compile_steps,
)
from gateway.pipeline.testing import emitted, reading

on_next = ReactiveTest.on_next
on_completed = ReactiveTest.on_completed

STEPS: TypeAdapter[list[Step]] = TypeAdapter(list[Step])

MANUAL = """
steps:
  - filter: "metric == 'temperature' and value > -40"
  - scale: {factor: 1.8, offset: 32, metric: temperature_f}
  - rename: {temp: temperature}
  - map: "value / 1000"
  - dedupe: {size: 10000}
  - distinct_until_changed: {epsilon: 0.01}
  - throttle: 1s
  - sample: 5s
  - window:
      {size: 10s, slide: 5s, aggregates: [count, mean, min, max, sum, last, stddev, p50, p95],
       lateness: 2s}
  - threshold: {above: 80, hysteresis: 2, for: 30s, severity: critical}
    id: overheat
"""


def errors(data: Any) -> list[dict[str, Any]]:
    with pytest.raises(ValidationError) as info:
        STEPS.validate_python(data)
    return [dict(e) for e in info.value.errors()]


def test_the_manual_example_validates() -> None:
    steps = STEPS.validate_python(yaml.safe_load(MANUAL)["steps"])
    assert [s.OP for s in steps] == [
        "filter",
        "scale",
        "rename",
        "map",
        "dedupe",
        "distinct_until_changed",
        "throttle",
        "sample",
        "window",
        "threshold",
    ]
    window = steps[8]
    assert isinstance(window, WindowStep)
    assert (window.window.size, window.window.slide, window.window.lateness) == (10.0, 5.0, 2.0)
    threshold = steps[9]
    assert isinstance(threshold, ThresholdStep)
    assert threshold.id == "overheat"
    assert threshold.threshold.for_ == 30.0
    assert threshold.threshold.severity == "critical"


def test_step_names_cover_the_union() -> None:
    assert set(STEP_NAMES) == {
        "filter",
        "map",
        "scale",
        "rename",
        "dedupe",
        "distinct_until_changed",
        "throttle",
        "sample",
        "window",
        "threshold",
        "range",
        "rate_of_change",
        "zscore",
        "ewma",
        "mad",
        "cusum",
        "page_hinkley",
        "stuck",
        "spike",
        "silence",
        "anomaly",
        "action",
    }


def test_unknown_op_lists_the_valid_ones_at_the_step_index() -> None:
    [error] = errors([{"filter": "value > 1"}, {"filter": "True"}, {"windw": {"size": "10s"}}])
    assert error["type"] == "union_tag_invalid"
    assert error["loc"] == (2,)
    assert "'windw'" in error["msg"]
    for name in STEP_NAMES:
        assert f"'{name}'" in error["msg"]


@pytest.mark.parametrize(
    ("step", "loc", "fragment"),
    [
        ({"filter": "value.__class__"}, (1, "filter", "filter"), "attribute access"),
        ({"filter": "import os"}, (1, "filter", "filter"), "invalid syntax"),
        ({"map": 3}, (1, "map", "map"), "expected an expression string"),
        ({"scale": {"factr": 2}}, (1, "scale", "scale", "factr"), "Extra inputs"),
        ({"rename": {}}, (1, "rename", "rename"), "at least 1 item"),
        ({"dedupe": {"size": 0}}, (1, "dedupe", "dedupe", "size"), "greater than 0"),
        ({"throttle": "soon"}, (1, "throttle", "throttle"), "duration"),
        ({"throttle": 0}, (1, "throttle", "throttle"), "greater than 0"),
        ({"sample": "-1s"}, (1, "sample", "sample"), "duration"),
        ({"window": {"size": "10s", "slide": "20s"}}, (1, "window", "window"), "slide"),
        ({"window": {"size": "100s", "slide": "0.5s"}}, (1, "window", "window"), "at most 100"),
        ({"window": {"slide": "5s"}}, (1, "window", "window", "size"), "Field required"),
        (
            {"window": {"size": 10, "aggregates": ["median"]}},
            (1, "window", "window", "aggregates", 0),
            "unknown aggregate 'median'",
        ),
        (
            {"window": {"size": 10, "aggregates": ["count", "count"]}},
            (1, "window", "window"),
            "dup",
        ),
        ({"threshold": {"for": "1s"}}, (1, "threshold", "threshold"), "at least one of"),
        ({"threshold": {"above": 1, "below": 2}}, (1, "threshold", "threshold"), "below must"),
        (
            {"threshold": {"above": 1, "severity": "fatal"}},
            (1, "threshold", "threshold", "severity"),
            "'info', 'warning' or 'critical'",
        ),
        ({"threshold": {"above": "nan"}}, (1, "threshold", "threshold", "above"), "finite"),
        ({"filter": "True", "id": "no spaces"}, (1, "filter", "id"), "pattern"),
        ({"filter": "True", "map": "value"}, (1,), "exactly one op key, got filter, map"),
        ({"id": "lonely"}, (1,), "needs an op key"),
        ("filter", (1,), "must be a mapping"),
    ],
)
def test_bad_params_fail_at_the_step_index(step: Any, loc: tuple[Any, ...], fragment: str) -> None:
    found = errors([{"filter": "True"}, step])
    assert [e["loc"] for e in found] == [loc], found
    assert fragment in found[0]["msg"]


def test_null_params_mean_defaults() -> None:
    steps = STEPS.validate_python(yaml.safe_load("- dedupe:\n- distinct_until_changed:\n"))
    assert [s.OP for s in steps] == ["dedupe", "distinct_until_changed"]


def test_steps_round_trip_through_json() -> None:
    steps = STEPS.validate_python(yaml.safe_load(MANUAL)["steps"])
    again = STEPS.validate_json(STEPS.dump_json(steps, by_alias=True))
    assert again == steps


def test_json_schema_is_generated() -> None:
    schema = STEPS.json_schema()
    assert schema["type"] == "array"
    assert schema["$defs"]["FilterStep"]["properties"]["filter"]["type"] == "string"


def test_no_steps_is_identity() -> None:
    scheduler = TestScheduler()
    pipeline = compile_steps("p", [], scheduler, Counters())
    xs = scheduler.create_hot_observable(on_next(201, reading(1)), on_completed(202))
    observer = scheduler.start(lambda: pipeline(xs))
    assert emitted(observer) == [(201.0, reading(1))]


def test_step_ids_default_to_index_and_op() -> None:
    scheduler = TestScheduler()
    counters = Counters()
    steps = STEPS.validate_python(
        [
            {"map": "value * 2"},
            {"filter": "10 / value > 0"},
            {"filter": "10 / value > 0", "id": "x"},
        ]
    )
    pipeline = compile_steps("line", steps, scheduler, counters)
    xs = scheduler.create_hot_observable(on_next(201, reading(0)), on_next(202, reading(1)))
    observer = scheduler.start(lambda: pipeline(xs))
    assert [r.value for _, r in emitted(observer) if isinstance(r, Reading)] == [2.0]
    assert counters.snapshot() == {("line/1:filter", "error"): 1}


def test_stateful_steps_report_how_many_device_metric_keys_they_hold() -> None:
    scheduler = TestScheduler()
    steps = STEPS.validate_python(
        [
            {"zscore": {"window": 5}},
            {"filter": "value > 0"},
            {"distinct_until_changed": {"epsilon": 0.5}},
            {"throttle": "1s"},
            {"silence": {"after": "60s"}},
            {"window": {"size": "10s"}},
            {"threshold": {"above": 100}},
        ]
    )
    keys: dict[str, Callable[[], int]] = {}
    pipeline = compile_steps("p", steps, scheduler, Counters(), keys=keys)
    devices = [(d, m) for d in ("a", "b", "c") for m in ("temp", "hum")]
    xs = scheduler.create_hot_observable(
        [on_next(201 + i, reading(1.0, 201.0 + i, d, m)) for i, (d, m) in enumerate(devices)]
        + [on_next(207, reading(2.0, 202.0, "a", "temp"))]  # a key seen again is one key
        + [on_next(208, reading(-1.0, 208.0, "z", "temp"))]  # filtered after the first step
    )
    scheduler.start(lambda: pipeline(xs), disposed=209)  # before any window closes
    assert {step: size() for step, size in keys.items()} == {
        "0:zscore": 7,
        "2:distinct_until_changed": 6,
        "3:throttle": 6,
        "4:silence": 6,
        "5:window": 6,
        "6:threshold": 0,  # it sees aggregates, and no window has closed yet
    }  # a filter keeps nothing per key


def test_duplicate_step_ids_are_refused() -> None:
    steps = [FilterStep.model_validate({"filter": "True", "id": "a"})] * 2
    with pytest.raises(ValueError, match="duplicate step id 'a'"):
        compile_steps("p", steps, TestScheduler(), Counters())


def test_end_to_end_filter_scale_window_threshold() -> None:
    scheduler = TestScheduler()
    steps = STEPS.validate_python(
        yaml.safe_load(
            """
            - filter: "metric == 'temperature'"
            - scale: {factor: 1.8, offset: 32, metric: temperature_f}
            - window: {size: 10s, aggregates: [count, mean, max], lateness: 0s}
            - threshold: {above: 100, stat: max, severity: critical}
              id: hot
            """
        )
    )
    pipeline = compile_steps("line", steps, scheduler, Counters())
    xs = scheduler.create_hot_observable(
        on_next(201, reading(20, ts=201.0, metric="temperature")),
        on_next(202, reading(50, ts=202.0, metric="rh")),
        on_next(203, reading(40, ts=203.0, metric="temperature")),
        on_completed(230),
    )
    out = emitted(scheduler.start(lambda: pipeline(xs)))
    assert len(out) == 2
    t, aggregate = out[0]
    assert t == 210.0
    assert aggregate == Aggregate(
        "line",
        "2:window",
        "d1",
        "temperature_f",
        200.0,
        210.0,
        2,
        {"count": 2.0, "mean": 86.0, "max": 104.0},
    )
    alert = out[1][1]
    assert isinstance(alert, Alert)
    assert (alert.step, alert.state, alert.ts, alert.value) == ("hot", "raised", 210.0, 104.0)
