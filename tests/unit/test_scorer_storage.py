"""The scorers' compact storage gives what the plain structure it replaces would give."""

from __future__ import annotations

from array import array
from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.pipeline import scorers
from gateway.pipeline.scorers import BlockMemory, OrderedWindow

# Few distinct values, so that ties (and float32 rounding onto the same value) are common.
VALUES = st.lists(
    st.one_of(st.sampled_from([0.0, 1.0, -2.5, 1e-9]), st.floats(-1e6, 1e6, width=64)),
    max_size=300,
)


def stored(value: float, typecode: str) -> float:
    return array(typecode, [value])[0]


def check_against_plain(window: OrderedWindow, values: list[float], size: int, tc: str) -> None:
    """Feed ``values``; compare with a deque of the last ``size`` values, sorted afresh."""
    plain: deque[float] = deque()
    for value in values:
        expected = plain.popleft() if len(plain) == size else None
        plain.append(stored(value, tc))
        assert window.add(value) == expected
        assert list(window.sorted) == sorted(plain)
        assert window.latest(len(plain)) == list(plain)
        assert window.latest(2) == list(plain)[-2:]
        ordered = sorted(plain)
        for q in (0.0, 0.1, 0.5, 0.99, 1.0):
            rank = (len(ordered) - 1) * q
            low = int(rank)
            high = ordered[min(low + 1, len(ordered) - 1)]
            assert window.quantile(q) == ordered[low] + (high - ordered[low]) * (rank - low)


@settings(max_examples=150, deadline=None)
@given(VALUES, st.integers(1, 40), st.sampled_from(["d", "f"]))
def test_an_ordered_window_holds_the_last_values_sorted_and_in_order(
    values: list[float], size: int, typecode: str
) -> None:
    check_against_plain(OrderedWindow(size, typecode), values, size, typecode)  # type: ignore[arg-type]


@settings(max_examples=50, deadline=None)
@given(VALUES, st.integers(1, 40), st.sampled_from(["d", "f"]))
def test_a_large_ordered_window_keeps_a_tree_and_a_ring_with_the_same_results(
    values: list[float], size: int, typecode: str
) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(scorers, "FLAT_MAX", 0)
        window = OrderedWindow(size, typecode)  # type: ignore[arg-type]
    assert window.ring is not None
    check_against_plain(window, values, size, typecode)


def test_arrival_numbers_wrap_around_without_losing_the_oldest() -> None:
    window = OrderedWindow(600, "f")
    plain: deque[float] = deque(maxlen=600)
    for k in range(70_000):  # past 2**16 arrivals
        value = float((k * 7919) % 1000)
        assert window.add(value) == (plain[0] if len(plain) == 600 else None)
        plain.append(value)
    assert list(window.sorted) == sorted(plain)
    assert window.latest(600) == list(plain)


def remembered(values: list[float], blocks: int, block: int) -> tuple[list[float], list[float]]:
    """What a block memory remembers of ``values``: the block being filled, as it is, and the
    last ``blocks`` full blocks, each value at its step between the block's float32 extremes."""
    cut = len(values) - len(values) % block
    out: list[float] = []
    for start in range(max(0, cut - blocks * block), cut, block):
        chunk = values[start : start + block]
        low, high = min(chunk), max(chunk)
        per_step = 255.0 / (high - low) if high > low else 0.0
        low32, high32 = array("f", [low, high])
        step = (high32 - low32) / 255.0
        out.extend(low32 + round((x - low) * per_step) * step for x in chunk)
    return values[cut:], out


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.floats(-1e3, 1e3, width=32), max_size=200),
    st.integers(1, 6),
    st.integers(1, 40),
    st.lists(st.tuples(st.floats(-1.1e3, 1.1e3), st.floats(0, 50)), min_size=1, max_size=20),
    st.sampled_from(["d", "f"]),
)
def test_a_block_memory_answers_as_the_values_it_remembers_would(
    values: list[float],
    blocks: int,
    block: int,
    queries: list[tuple[float, float]],
    typecode: str,
) -> None:
    memory = BlockMemory(blocks, block, typecode)  # type: ignore[arg-type]
    for value in values:
        memory.add(value)
    pending, stepped = remembered(values, blocks, block)
    for query, gap in queries:
        expected = any(abs(x - query) <= gap for x in pending) or any(
            query - gap <= x <= query + gap for x in stepped
        )
        assert memory.near(query, gap) == expected
