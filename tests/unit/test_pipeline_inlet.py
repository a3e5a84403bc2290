"""The pipeline inlet behaves as a Subject does for its one thread."""

from __future__ import annotations

from reactivex import operators as ops

from gateway.pipeline.inlet import Inlet


def test_items_reach_every_subscriber_in_order_until_completion() -> None:
    inlet: Inlet[int] = Inlet()
    first: list[object] = []
    second: list[object] = []
    inlet.pipe(ops.map(lambda x: x * 10)).subscribe(
        first.append, on_completed=lambda: first.append("done")
    )
    inlet.subscribe(second.append, on_completed=lambda: second.append("done"))
    for x in (1, 2, 3):
        inlet.on_next(x)
    inlet.on_completed()
    inlet.on_next(4)  # after completion: ignored
    inlet.on_completed()  # once only
    assert first == [10, 20, 30, "done"]
    assert second == [1, 2, 3, "done"]


def test_a_disposed_subscription_gets_nothing_more() -> None:
    inlet: Inlet[int] = Inlet()
    got: list[int] = []
    subscription = inlet.subscribe(got.append)
    inlet.on_next(1)
    subscription.dispose()
    inlet.on_next(2)
    assert got == [1]


def test_errors_reach_every_subscriber_and_a_late_one_sees_the_end() -> None:
    inlet: Inlet[int] = Inlet()
    errors: list[str] = []
    inlet.subscribe(on_error=lambda e: errors.append(str(e)))
    inlet.on_error(ValueError("boom"))
    ended: list[str] = []
    inlet.subscribe(on_completed=lambda: ended.append("done"))
    assert errors == ["boom"]
    assert ended == ["done"]
