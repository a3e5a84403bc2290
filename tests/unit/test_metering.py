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
