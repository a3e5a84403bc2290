"""``edge-gateway query``: the on-demand API's answers on the command line, as JSON."""

from __future__ import annotations

import argparse
import sqlite3
import sys
import time
from typing import Any

import orjson

from gateway.config.loader import load
from gateway.errors import ConfigError
from gateway.web import queries
from gateway.web.queries import QueryError, SeriesRequest

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

EPILOG = """\
times: epoch seconds, 'now', a duration ago (30s, 10m, 2h, 7d) or ISO 8601
examples:
  edge-gateway query -c gateway.yaml series --device pump-1 --metric temperature \\
      --start 1h --bucket 1m
  edge-gateway query --db gateway.db latest
  edge-gateway query -c gateway.yaml alerts --since 1d --device press-1
  edge-gateway query -c gateway.yaml dead-letters --source fleet --limit 20
"""


def add_parser(sub: Any) -> None:
    """Add ``query`` to the ``edge-gateway`` subcommands."""
    q = sub.add_parser(
        "query",
        help="answer a question from the local store (JSON on stdout)",
        description=__doc__.splitlines()[0] if __doc__ else None,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    where = q.add_mutually_exclusive_group(required=True)
    where.add_argument("-c", "--config", help="YAML config file (its store.path is read)")
    where.add_argument("--db", help="the SQLite store file itself")
    q.add_argument(
        "what",
        choices=["series", "latest", "alerts", "active-alerts", "dead-letters"],
        help="series: avg/min/max per bucket of one device+metric; latest: newest reading "
        "per device+metric; alerts: alert history; active-alerts: raised and not cleared; "
        "dead-letters: rejected input",
    )
    q.add_argument("--device", help="device id (required for series)")
    q.add_argument("--metric", help="metric name (required for series)")
    q.add_argument("--source", help="dead-letters of this source only")
    q.add_argument("--start", "--since", dest="start", help="from this time (series: 1h ago)")
    q.add_argument("--end", "--until", dest="end", help="until this time (series: now)")
    q.add_argument("--bucket", help="series: bucket width, e.g. 10s or 1m")
    q.add_argument("--points", type=int, default=200, help="series: buckets when no --bucket")
    q.add_argument("--limit", type=int, default=100, help="alerts, dead-letters: at most N rows")


def main(args: argparse.Namespace) -> int:
    """Run one query; print JSON on stdout or a message on stderr."""
    if args.db is not None:
        path = args.db
    else:
        try:
            path = load(args.config).store.path
        except ConfigError as exc:
            print("\n".join(exc.problems), file=sys.stderr)
            return EXIT_USAGE
    try:
        conn = queries.connect_readonly(path)
    except (QueryError, sqlite3.Error) as exc:
        print(f"edge-gateway query: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    try:
        result = _answer(conn, args, time.time())
    except QueryError as exc:
        print(f"edge-gateway query: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except sqlite3.Error as exc:
        print(f"edge-gateway query: cannot read {path}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        conn.close()
    sys.stdout.buffer.write(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")
    return EXIT_OK


def _answer(conn: sqlite3.Connection, args: argparse.Namespace, now: float) -> Any:
    start = None if args.start is None else queries.parse_time(args.start, now)
    end = None if args.end is None else queries.parse_time(args.end, now)
    if args.what == "series":
        if not args.device or not args.metric:
            raise QueryError("series needs --device and --metric")
        end = now if end is None else end
        req = SeriesRequest(
            device=args.device,
            metric=args.metric,
            start=end - 3600.0 if start is None else start,
            end=end,
            bucket=None if args.bucket is None else queries.parse_seconds(args.bucket),
            points=args.points,
        )
        return queries.series(conn, req)
    if args.what == "latest":
        return queries.latest(conn, args.device)
    if args.what == "alerts":
        return queries.alerts(conn, since=start, until=end, device=args.device, limit=args.limit)
    if args.what == "active-alerts":
        return queries.active_alerts(conn)
    return queries.dead_letters(conn, since=start, until=end, source=args.source, limit=args.limit)
