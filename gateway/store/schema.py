"""Tables and indexes of the store, created idempotently; ``PRAGMA user_version`` is the version."""

from __future__ import annotations

from sqlite_utils import Database

from gateway.errors import GatewayError

SCHEMA_VERSION = 1


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
        # rowid table; the partial unique index makes a resent (source, device, metric, seq)
        # a no-op under INSERT OR IGNORE, while readings without a seq are never deduplicated.
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
        db.table("outbox").create_index(
            ["sink", "id"], index_name="outbox_sink_id", if_not_exists=True
        )
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
