"""Integration fixtures: no gateway process outlives the test that started it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.harness import RUNNING


@pytest.fixture(autouse=True)
def _no_leftover_gateways() -> Iterator[None]:
    yield
    while RUNNING:
        RUNNING.pop().kill()
