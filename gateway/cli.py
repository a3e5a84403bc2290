"""``edge-gateway run | check | bench``: the command-line entry point and its exit codes.

Exit codes: 0 ok, 2 invalid configuration, 1 unexpected failure.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from gateway import __version__
from gateway.config.loader import load
from gateway.config.model import Config
from gateway.errors import ConfigError
from gateway.logs import setup

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
    check = sub.add_parser("check", help="validate a config without touching devices or network")
    check.add_argument("-c", "--config", required=True, help="YAML config file")
    from gateway.bench.runner import add_arguments as add_bench_arguments

    bench = sub.add_parser("bench", help="measure throughput, latency and memory on this box")
    add_bench_arguments(bench)
    return parser


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


async def _run(config: Config) -> None:
    from gateway.app import Gateway

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await Gateway(config).run(stop)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "bench":
        from gateway.bench.runner import run as run_bench

        return run_bench(args)
    try:
        config = load(args.config)
    except ConfigError as exc:
        print("\n".join(exc.problems), file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "check":
        print("ok")
        print(summary(config))
        return EXIT_OK
    setup(args.log_level or config.gateway.log_level)
    try:
        asyncio.run(_run(config))
    except Exception:
        logging.getLogger("gateway").exception("fatal error")
        return EXIT_FAILURE
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
