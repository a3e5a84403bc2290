"""Limits on untrusted input that keep a rogue or broken publisher from exhausting memory."""

from __future__ import annotations

import re

from pydantic import Field, field_validator

from gateway.config.types import StrictModel

DEFAULT_DEVICE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}$"


class LimitsConfig(StrictModel):
    """Checked at intake, before anything is stored or enters a pipeline."""

    max_devices: int = Field(
        10_000, ge=1, description="distinct device ids accepted; readings of more are rejected"
    )
    max_series: int = Field(
        100_000,
        ge=1,
        description="distinct device+metric pairs accepted; readings of more are rejected",
    )
    max_metrics_per_message: int = Field(
        256, ge=1, description="a message or line carrying more readings is rejected whole"
    )
    device_pattern: str = Field(
        DEFAULT_DEVICE_PATTERN, description="device ids must match this regular expression"
    )

    @field_validator("device_pattern")
    @classmethod
    def _compiles(cls, pattern: str) -> str:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
        return pattern
