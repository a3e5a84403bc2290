"""What every step model shares: the base class and the common parameter types."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, Field, StringConstraints

from gateway.config.types import Duration, StrictModel
from gateway.pipeline import windows
from gateway.pipeline.context import Operator, StepContext

PositiveDuration = Annotated[Duration, Field(gt=0)]
StepId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")]
Name = Annotated[str, StringConstraints(min_length=1, max_length=128)]


def _stat_name(name: str) -> str:
    if not windows.is_stat_name(name):
        raise ValueError(
            f"unknown aggregate {name!r}; expected one of {', '.join(windows.BASIC_STATS)} "
            "or a percentile such as p50, p95, p99.9"
        )
    return name


StatName = Annotated[str, AfterValidator(_stat_name)]


def _none_is_empty(value: Any) -> Any:
    """Let ``- dedupe:`` (a YAML null) mean "all defaults"."""
    return {} if value is None else value


class StepModel(StrictModel):
    """Base of every step: an optional id and a ``build`` returning the operator."""

    OP: ClassVar[str]
    id: StepId | None = None

    def build(self, ctx: StepContext) -> Operator:
        raise NotImplementedError
