"""Settings of the local SQLite store: file, durability, batching and retention."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from gateway.config.types import Duration, StrictModel


class RetentionConfig(StrictModel):
    """How much reading history to keep; ``None`` switches a limit off."""

    max_age: Duration | None = Field(7 * 86400.0, gt=0)
    """Readings whose ``ts`` is older than this (against the store's clock) are deleted."""
    max_rows: int | None = Field(1_000_000, ge=1)
    """Above this many readings, the oldest inserted are deleted."""
    interval: Duration = Field(60.0, gt=0)
    """How often retention runs."""


class StoreConfig(StrictModel):
    """The ``store:`` block."""

    path: Path = Path("gateway.db")
    synchronous: Literal["normal", "full"] = "normal"
    """``normal``: a commit survives a crash of the process; ``full``: also a power cut."""
    batch_interval: Duration = Field(0.05, gt=0)
    """The flusher commits what is pending at least this often."""
    batch_max: int = Field(2000, ge=1)
    """...and as soon as this many items are pending."""
    retention: RetentionConfig = RetentionConfig()
    dead_letters_max_rows: int = Field(10_000, ge=1)
