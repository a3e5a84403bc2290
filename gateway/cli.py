"""``edge-gateway run | check | replay | query | bench``: the command line and its exit codes.

Exit codes: 0 ok, 2 invalid configuration, 1 unexpected failure.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import logging
import signal
import sys
from collections.abc import Sequence

from gateway import __version__
from gateway.config.loader import load
from gateway.config.model import Config
from gateway.config.redact import effective_yaml
from gateway.errors import ConfigError
from gateway.logs import LOG_FORMATS, setup
from gateway.web import query_cli

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-gateway", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"edge-gateway {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the daemon until SIGTERM/SIGINT")
    run.add_argument("-c", "--config", required=True, help="YAML config file")
    run.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help="overrides gateway.log_level",
    )
    run.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="text",
        help="text (human-readable) or json (one object per line)",
    )
    check = sub.add_parser("check", help="validate a config without touching devices or network")
    check.add_argument("-c", "--config", required=True, help="YAML config file")
    check.add_argument(
        "-q", "--quiet", action="store_true", help="print nothing when the config is valid"
    )
    _replay_parser(sub)
    query_cli.add_parser(sub)
    from gateway.bench.runner import add_arguments as add_bench_arguments

    bench = sub.add_parser("bench", help="measure throughput, latency and memory on this box")
    add_bench_arguments(bench)
    return parser


def _replay_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    replay = sub.add_parser(
        "replay",
        help="run the pipelines over a recording in event time; messages as JSON lines on stdout",
    )
    replay.add_argument("-c", "--config", required=True, help="YAML config file")
    replay.add_argument(
        "--input", help="recording: CSV with a header row, or JSON lines; - is stdin"
    )
    replay.add_argument("--format", choices=["csv", "jsonl"], help="default: from the file name")
    replay.add_argument(
        "--device", help="device of readings that name none (default: file name); else a filter"
    )
    replay.add_argument(
        "--metric", help="metric of a 'value' column (default: value); else a filter"
    )
    replay.add_argument("--source", help="source id: feed only the pipelines reading from it")
    replay.add_argument("--from-store", metavar="DB", help="replay the readings of a gateway store")
    replay.add_argument("--since", help="with --from-store: from this time (ISO 8601 or epoch s)")
    replay.add_argument("--until", help="with --from-store: before this time")


def summary(config: Config) -> str:
    """A one-screen description of what a config will run."""
    lines = [f"gateway {config.gateway.id}; store {config.store.path}"]
    lines.append(f"sources ({len(config.sources)}):")
    for s in config.sources:
        where = (
            f"mqtt {s.broker.host}:{s.broker.port} {', '.join(s.topics)}"
            if s.type == "mqtt"
            else f"serial {s.port} @ {s.baudrate}"
        )
        lines.append(f"  {s.id}: {where} ({s.format.type})")
    lines.append(f"pipelines ({len(config.pipelines)}):")
    for p in config.pipelines:
        steps = (
            " -> ".join(
                next(k for k in step.model_dump(by_alias=True, exclude_none=True) if k != "id")
                for step in p.steps
            )
            or "(forward unchanged)"
        )
        lines.append(
            f"  {p.id}: {', '.join(p.from_)} -> {steps} -> {', '.join(p.to) or '(store only)'}"
        )
    lines.append(f"sinks ({len(config.sinks)}):")
    for k in config.sinks:
        lines.append(f"  {k.id}: mqtt {k.broker.host}:{k.broker.port} qos {k.qos}")
    return "\n".join(lines)


GC_YOUNG_THRESHOLD = 50_000
"""Allocations between two young-generation collections (Python's default: 700). At
thousands of readings a second the default promotes every object that lives a few ms (a
reading waiting for its commit) and brings on full collections of 30-40 ms; a larger young
generation lets them die young instead."""


async def _freeze_heap(ready: asyncio.Event) -> None:
    """Once the gateway runs, move what start-up built (modules, config, pipelines) out of
    the collector's sight: full collections then look only at what was made since."""
    await ready.wait()
    gc.collect()
    gc.freeze()


async def _run(config: Config, path: str) -> None:
    from gateway.app import Gateway

    stop = asyncio.Event()
    gateway = Gateway(config, load_config=functools.partial(load, path))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, gateway.request_reload)
    freeze = asyncio.create_task(_freeze_heap(gateway.ready), name="gc-freeze")
    try:
        await gateway.run(stop)
    finally:
        freeze.cancel()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "query":
        return query_cli.main(args)
    if args.command == "bench":
        from gateway.bench.runner import run as run_bench

        return run_bench(args)
    try:
        config = load(args.config)
    except ConfigError as exc:
        print("\n".join(exc.problems), file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "check":
        if not args.quiet:
            print("ok")
            print(summary(config))
            print("\neffective config (defaults filled in, secrets redacted):")
            print(effective_yaml(config), end="")
        return EXIT_OK
    if args.command == "replay":
        from gateway import replay

        return replay.run(
            config,
            args.input,
            args.format,
            args.device,
            args.metric,
            args.source,
            args.from_store,
            args.since,
            args.until,
        )
    setup(args.log_level or config.gateway.log_level, args.log_format)
    _, *older = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *older)
    try:
        asyncio.run(_run(config, args.config))
    except Exception:
        logging.getLogger("gateway").exception("fatal error")
        return EXIT_FAILURE
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
