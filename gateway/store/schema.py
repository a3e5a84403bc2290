"""Tables and indexes of the store, created idempotently; ``PRAGMA user_version`` is the version."""

from __future__ import annotations

from sqlite_utils import Database

from gateway.errors import GatewayError

SCHEMA_VERSION = 2


class SchemaVersionError(GatewayError):
    """The database file was written by a newer gateway than this one."""


def schema_version(db: Database) -> int:
    """The ``user_version`` stamped on the file (0 for a new file)."""
    return int(db.execute("PRAGMA user_version").fetchone()[0])


def create_schema(db: Database) -> None:
    """Create every table and index that is missing and stamp ``SCHEMA_VERSION``.

    Safe to call on every start. Raises ``SchemaVersionError`` for a file from a newer version.
    """
    version = schema_version(db)
    if version > SCHEMA_VERSION:
        raise SchemaVersionError(
            f"database schema version {version} is newer than this gateway's {SCHEMA_VERSION}"
        )
    with db.atomic():
        # rowid table; the partial unique indexes make a resent reading a no-op under INSERT OR
        # IGNORE: its key is (source, device, metric, seq), or without a seq its content and
        # timestamp (source, device, metric, ts, value).
        db.table("readings").create(
            {
                "source": str,
                "device": str,
                "metric": str,
                "ts": float,
                "value": float,
                "seq": int,
            },
            if_not_exists=True,
        )
        db.execute(
            "CREATE UNIQUE INDEX IF NOT EXISTS readings_seq"
            " ON readings (source, device, metric, seq) WHERE seq IS NOT NULL"
        )
        if version == 1:  # v1 kept seq-less repeats: keep the first of each before indexing
            db.execute(
                "DELETE FROM readings WHERE seq IS NULL AND rowid NOT IN (SELECT min(rowid)"
                " FROM readings WHERE seq IS NULL GROUP BY source, device, metric, ts, value)"
            )
        db.execute(
            "CREATE UNIQUE INDEX IF NOT EXISTS readings_content"
            " ON readings (source, device, metric, ts, value) WHERE seq IS NULL"
        )
        db.table("readings").create_index(
            ["device", "metric", "ts"], index_name="readings_device_metric_ts", if_not_exists=True
        )
        db.table("aggregates").create(
            {
                "pipeline": str,
                "step": str,
                "device": str,
                "metric": str,
                "start": float,
                "end": float,
                "count": int,
                "stats": str,
            },
            if_not_exists=True,
        )
        db.table("alerts").create(
            {
                "pipeline": str,
                "step": str,
                "device": str,
                "metric": str,
                "kind": str,
                "state": str,
                "severity": str,
                "ts": float,
                "value": float,
                "threshold": float,
                "message": str,
                "score": float,
                "evidence": str,
            },
            if_not_exists=True,
        )
        # added after version 1 shipped: nullable columns, added in place to older files
        alert_columns = db.table("alerts").columns_dict
        for name, kind in (("score", float), ("evidence", str)):
            if name not in alert_columns:
                db.table("alerts").add_column(name, kind)
        db.table("dead_letters").create(
            {"id": int, "source": str, "ts": float, "reason": str, "detail": str, "raw": bytes},
            pk="id",
            if_not_exists=True,
        )
        # AUTOINCREMENT: an id is never reused, even after the newest row was acked, so a
        # sink can never confuse a new message with one it already settled.
        db.execute(
            "CREATE TABLE IF NOT EXISTS outbox ("
            " id INTEGER PRIMARY KEY AUTOINCREMENT, sink TEXT, msg_id TEXT, topic TEXT,"
            " payload BLOB, qos INTEGER, created REAL, attempts INTEGER NOT NULL DEFAULT 0)"
        )
        # priority: 0 alert, 1 aggregate, 2 reading; a sink takes the lowest first (alerts
        # go first) and overflow drops the highest first (raw readings go first).
        if "priority" not in db.table("outbox").columns_dict:
            db.execute("ALTER TABLE outbox ADD COLUMN priority INTEGER NOT NULL DEFAULT 1")
        db.execute("DROP INDEX IF EXISTS outbox_sink_id")
        db.execute("CREATE INDEX IF NOT EXISTS outbox_sink_priority ON outbox (sink, priority, id)")
        db.execute("CREATE INDEX IF NOT EXISTS outbox_priority ON outbox (priority DESC, id)")
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
