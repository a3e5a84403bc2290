"""Settings of the local SQLite store: file, durability, batching and retention."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from gateway.config.types import Duration, StrictModel


class RetentionConfig(StrictModel):
    """How much reading history to keep; ``None`` switches a limit off."""

    max_age: Duration | None = Field(None, gt=0)
    """Readings whose ``ts`` is older than this (against the store's clock) are deleted; off
    unless configured."""
    max_rows: int | None = Field(1_000_000, ge=1)
    """Above this many readings, the oldest inserted are deleted."""
    interval: Duration = Field(60.0, gt=0)
    """How often retention runs."""


class OutboxLimits(StrictModel):
    """Bounds of the outbox (all sinks together); ``None`` switches a limit off.

    On overflow ``drop_oldest`` deletes the oldest raw readings first, then aggregates, and
    alerts last; ``reject_new`` drops what the new batch would add beyond the limit. Every
    drop is counted (``store.outbox_dropped``) and the first one raises an alert.
    """

    max_rows: int | None = Field(1_000_000, ge=1)
    max_bytes: int | None = Field(512 * 1024 * 1024, ge=1024)
    max_age: Duration | None = Field(None, gt=0)
    """Rows queued longer than this are dropped (off unless configured)."""
    overflow: Literal["drop_oldest", "reject_new"] = "drop_oldest"


class StoreConfig(StrictModel):
    """The ``store:`` block."""

    path: Path = Path("gateway.db")
    synchronous: Literal["normal", "full"] = "normal"
    """``normal``: a commit survives a crash of the process; ``full``: also a power cut."""
    batch_interval: Duration = Field(0.05, gt=0)
    """The flusher commits what is pending at least this often."""
    batch_max: int = Field(2000, ge=1)
    """...and as soon as this many items are pending."""
    eager_interval: Duration | None = Field(0.005, gt=0)
    """When something waits for a commit (an outbox row to forward, an MQTT message to
    acknowledge), commit this long after the previous commit instead of ``batch_interval``:
    low latency when quiet, batches as large as the load makes them when busy, and never
    more than one commit per interval. ``None``: only the two rules above (fewer, larger
    transactions, e.g. to spare an SD card under ``synchronous: full``)."""
    checkpoint_interval: Duration | None = Field(0.25, gt=0)
    """How often a second connection, on a thread of its own, copies the WAL into the
    database file (a PASSIVE checkpoint, which neither waits for nor blocks commits), so a
    commit never does it; SQLite's own automatic checkpoint stays on the writer as a
    backstop, at ``CHECKPOINT_BACKSTOP_PAGES``. ``None``: SQLite checkpoints inside a commit
    every 1,000 WAL pages (a pause of tens of ms for the readings waiting on that commit)."""
    retention: RetentionConfig = RetentionConfig()
    dead_letters_max_rows: int = Field(10_000, ge=1)
    outbox: OutboxLimits = OutboxLimits()
    max_pending: int = Field(
        500_000, ge=100, description="items waiting in memory for a commit (e.g. disk full)"
    )
    """Beyond this, the oldest pending readings are dropped (counted, ``pending_dropped``),
    then aggregates and forwarded rows; alerts are never dropped."""
