"""Per-step in/out counts and per-pipeline time, across a rebuild (reload)."""

from __future__ import annotations

from pydantic import TypeAdapter
from reactivex.scheduler import ImmediateScheduler
from reactivex.subject import Subject

from gateway.counters import Counters
from gateway.model import Reading, Record
from gateway.pipeline.metering import Meters
from gateway.pipeline.steps import Step, compile_steps

STEPS = [{"filter": "value > 10"}, {"scale": {"factor": 2}}, {"filter": "value < 50"}]


def build(meters: Meters) -> tuple[Subject[Record], list[Record]]:
    steps = [TypeAdapter(Step).validate_python(s) for s in STEPS]
    op = compile_steps("p", steps, ImmediateScheduler(), Counters(), meters)
    subject: Subject[Record] = Subject()
    out: list[Record] = []
    subject.pipe(op).subscribe(out.append)
    return subject, out


def test_each_step_counts_in_and_out_and_the_pipeline_its_time() -> None:
    meters = Meters()
    subject, out = build(meters)
    push = meters.timed("p", subject.on_next)
    for v in range(40):  # 29 pass "> 10"; doubled, 14 stay "< 50"
        push(Reading("s", "d", "m", float(v), 1.0 + v))
    assert len(out) == 14
    in_out = {
        step: (meters.received("p", step), meters.steps[("p", step)].emitted)
        for step in ("0:filter", "1:scale", "2:filter")
    }
    assert in_out == {"0:filter": (40, 29), "1:scale": (29, 29), "2:filter": (29, 14)}
    assert meters.pipelines["p"].count == 40
    assert meters.pipelines["p"].seconds > 0
    # A reload rebuilds the pipeline: the counts go on from where they were.
    subject.on_completed()
    subject, out = build(meters)
    push = meters.timed("p", subject.on_next)
    push(Reading("s", "d", "m", 20.0, 100.0))
    assert meters.received("p", "0:filter") == 41
    assert meters.steps[("p", "2:filter")].emitted == 15


class StepClock:
    """A clock that moves only when the test says work was done."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_each_step_is_charged_its_own_time_not_the_time_of_the_steps_after_it() -> None:
    clock = StepClock()
    meters = Meters(clock)
    steps = [TypeAdapter(Step).validate_python(s) for s in STEPS]
    subject: Subject[Record] = Subject()

    def router(_record: Record) -> None:
        clock.now += 1.0  # what the pipeline's consumer costs, per record out

    subject.pipe(compile_steps("p", steps, ImmediateScheduler(), Counters(), meters)).subscribe(
        router
    )

    def into_first_step(record: Record) -> None:
        clock.now += 0.5  # what the first step costs, per record in
        subject.on_next(record)

    push = meters.timed("p", into_first_step)
    for v in range(40):
        push(Reading("s", "d", "m", float(v), 1.0 + v))
    assert meters.pipelines["p"].seconds == 40 * 0.5 + 14 * 1.0
    own = {step: meters.step_seconds("p", step) for step in ("0:filter", "1:scale", "2:filter")}
    assert own == {"0:filter": 20.0, "1:scale": 0.0, "2:filter": 0.0}
    assert meters.steps[("p", "2:filter")].downstream == 14.0


def test_an_emission_outside_a_push_is_not_charged_to_any_step() -> None:
    """E.g. a processing-time window closing on its timer: not a pushed reading's cost."""
    clock = StepClock()
    meters = Meters(clock)
    steps = [TypeAdapter(Step).validate_python(s) for s in STEPS]
    subject: Subject[Record] = Subject()

    def router(_record: Record) -> None:
        clock.now += 1.0

    subject.pipe(compile_steps("p", steps, ImmediateScheduler(), Counters(), meters)).subscribe(
        router
    )
    push = meters.timed("p", subject.on_next)
    push(Reading("s", "d", "m", 20.0, 1.0))
    subject.on_next(Reading("s", "d", "m", 20.0, 2.0))  # emitted, but not by a push
    assert meters.steps[("p", "2:filter")].emitted == 2
    assert meters.steps[("p", "2:filter")].downstream == 1.0
    assert meters.pipelines["p"].seconds == 1.0
    assert meters.step_seconds("p", "2:filter") == 0.0
