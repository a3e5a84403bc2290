"""``edge-gateway-sim``: simulated MQTT fleets and serial sensors for the gateway.

Exit codes: 0 done, 1 runtime failure (e.g. broker unreachable), 2 bad usage,
130 interrupted before the run started. The first Ctrl-C (or SIGTERM) ends a run
gracefully: in-flight publishes are drained and the summary is printed.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import TypeAlias

from simulators.demo import DEFAULT_CONFIG, run_demo
from simulators.mqtt_fleet import BAD_KINDS, DEFAULT_TOPIC, FleetError, run_fleet
from simulators.serial_device import FORMATS, GARBAGE_KINDS, SerialDevice, run_serial
from simulators.signals import (
    FAULT_KINDS,
    METRICS,
    Fault,
    FaultSpecError,
    parse_duration,
    parse_fault,
    parse_metrics,
)

__all__ = ["Handler", "SubParsers", "add_stream_options", "build_parser", "main"]

log = logging.getLogger("simulators")

SubParsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
Handler = Callable[[argparse.Namespace, threading.Event], int]
"""What a subcommand stores with ``set_defaults(handler=...)``: (args, stop) -> exit code."""

PROG = "edge-gateway-sim"

FAULT_HELP = f"""\
faults (--fault, repeatable): KIND[:key=value,...]
  kinds: {", ".join(FAULT_KINDS)}
  every kind: device=GLOB (dev-3 matches dev-003), metric=GLOB, at=TIME, for=TIME
  spike: prob=0.01 mag=UNITS   drift: rate=UNITS_PER_HOUR   noise_burst: factor=10
  TIME is relative to the start: 500ms, 30s, 2m, 1h (bare number: seconds)
  e.g. --fault spike:device=dev-3,prob=0.01,mag=25 --fault stuck:device=dev-1,at=30s
       --fault dropout:device=*,at=10s,for=5s --fault drift:metric=temperature,rate=120

metrics: {", ".join(f"{n} ({s.unit} ~{s.baseline:g})" for n, s in METRICS.items())}
"""


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keep hand-wrapped descriptions; show defaults that are worth showing."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        hidden = action.default is None or action.default is False or action.default == []
        if not hidden and action.default != argparse.SUPPRESS and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


# --------------------------------------------------------------------------- argument types


def _positive_int(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def _rate(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return None if value == 0 else value


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _fault(text: str) -> Fault:
    try:
        return parse_fault(text)
    except FaultSpecError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _metrics(text: str) -> tuple[str, ...]:
    try:
        return parse_metrics(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


# --------------------------------------------------------------------------- parser


def add_stream_options(parser: argparse.ArgumentParser, *, devices: int, rate: float) -> None:
    """Add the options every stream subcommand shares (fleet shape, pacing, seed, faults)."""
    g = parser.add_argument_group("stream")
    g.add_argument(
        "--devices",
        type=_positive_int,
        default=devices,
        metavar="N",
        help="number of devices, named dev-001 ... dev-N",
    )
    g.add_argument(
        "--metrics",
        type=_metrics,
        default="temperature",
        metavar="LIST",
        help=f"comma-separated metrics per device, or 'all' ({', '.join(METRICS)})",
    )
    g.add_argument(
        "--rate",
        type=_rate,
        default=rate,
        metavar="R",
        help="total readings per second over all devices; 0 = as fast as possible",
    )
    bound = g.add_mutually_exclusive_group()
    bound.add_argument(
        "--count",
        type=_non_negative_int,
        metavar="N",
        help="stop after N scheduled readings (default: run until Ctrl-C)",
    )
    bound.add_argument(
        "--duration",
        type=_duration,
        metavar="TIME",
        help="stop after TIME of schedule, e.g. 30s or 5m",
    )
    g.add_argument("--seed", type=_int, default=0, help="random seed: same seed, same values")
    g.add_argument(
        "--start-ts",
        type=float,
        metavar="EPOCH",
        help="timestamp of the first reading (default: now); with --seed makes "
        "a run fully reproducible",
    )
    g.add_argument(
        "--fault",
        type=_fault,
        action="append",
        default=[],
        metavar="SPEC",
        help="inject a defect, see 'faults' below; repeatable",
    )
    g.add_argument(
        "--summary-json",
        metavar="PATH",
        help="write totals and per device/metric count and sum of values sent",
    )
    g.add_argument(
        "--labels",
        metavar="PATH",
        help="mqtt: write the injected defects as ground truth (JSON: device, metric, kind, "
        "start, end)",
    )


def build_parser() -> tuple[argparse.ArgumentParser, SubParsers]:
    """The top-level parser and its subparsers, so more subcommands can be added."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Simulated sensors for edge-gateway: they speak only wire formats "
        "(MQTT payloads, serial lines).",
        epilog=f"Run '{PROG} COMMAND --help' for the options of one command.",
    )
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")

    mqtt = subparsers.add_parser(
        "mqtt",
        formatter_class=_Formatter,
        help="publish a fleet of sensors to an MQTT broker",
        description="Publish one JSON message per reading to an MQTT broker:\n"
        '  {"device": "dev-001", "metric": "temperature", "value": 21.37,\n'
        '   "ts": <epoch seconds>, "seq": <1, 2, ... per device+metric>}\n'
        "and print a one-line summary at the end.",
        epilog=FAULT_HELP + "\nexample:\n"
        f"  {PROG} mqtt --port 1883 --devices 50 --metrics all --rate 2000 --count 100000 \\\n"
        "      --bad-every 500 --fault spike:device=dev-3,prob=0.01 --summary-json sent.json\n",
    )
    add_stream_options(mqtt, devices=10, rate=100.0)
    g = mqtt.add_argument_group("mqtt")
    g.add_argument("--host", default="127.0.0.1", help="broker host")
    g.add_argument("--port", type=_positive_int, default=1883, help="broker port")
    g.add_argument(
        "--topic", default=DEFAULT_TOPIC, help="topic template; {device} and {metric} are filled in"
    )
    g.add_argument("--qos", type=int, choices=(0, 1, 2), default=1, help="publish QoS")
    g.add_argument(
        "--bad-every",
        type=_non_negative_int,
        default=0,
        metavar="N",
        help=f"after every N good messages publish a malformed one, rotating "
        f"{', '.join(BAD_KINDS)} (300 kB); 0 = never",
    )
    g.add_argument(
        "--max-inflight",
        type=_positive_int,
        default=1000,
        metavar="N",
        help="most publishes awaiting acknowledgement at once",
    )
    g.add_argument("--client-id", help="MQTT client id (default: random)")
    mqtt.set_defaults(handler=_cmd_mqtt)

    serial = subparsers.add_parser(
        "serial",
        formatter_class=_Formatter,
        help="write sensor lines to a pseudo-terminal, like a USB serial sensor",
        description="Create a pseudo-terminal, print the device to open (e.g. /dev/pts/7)\n"
        "on stdout and write one line per reading:\n"
        "  csv   device,metric,value,ts,seq   (no header)\n"
        "  kv    device=dev-001 metric=temperature value=21.37 ts=<epoch s> seq=17\n"
        '  json  {"device": ..., "metric": ..., "value": ..., "ts": ..., "seq": ...}\n'
        "A new path is printed after every replug; --link keeps a stable symlink.",
        epilog=FAULT_HELP + "\nexample:\n"
        f"  {PROG} serial --link /tmp/ttySIM0 --format kv --rate 20 \\\n"
        "      --garbage-every 50 --unplug-at 200 --unplug-for 3s\n",
    )
    add_stream_options(serial, devices=1, rate=10.0)
    g = serial.add_argument_group("serial")
    g.add_argument("--format", choices=FORMATS, default="csv", help="line format")
    g.add_argument(
        "--link",
        metavar="PATH",
        help="keep a symlink at PATH pointing to the current pty "
        "(like /dev/serial/by-id/...); removed while unplugged",
    )
    g.add_argument(
        "--garbage-every",
        type=_non_negative_int,
        default=0,
        metavar="N",
        help=f"after every N good lines inject, in rotation: {', '.join(GARBAGE_KINDS)}; 0 = never",
    )
    g.add_argument(
        "--unplug-at",
        type=_positive_int,
        metavar="N",
        help="after N good lines close the pty (readers see EIO/hangup), then "
        "create a new one; seq keeps counting",
    )
    g.add_argument(
        "--unplug-for",
        type=_duration,
        default="5s",
        metavar="TIME",
        help="how long to stay unplugged",
    )
    g.add_argument(
        "--write-timeout",
        type=_duration,
        default="500ms",
        metavar="TIME",
        help="longest wait for room in the pty before a line is dropped",
    )
    serial.set_defaults(handler=_cmd_serial)

    demo = subparsers.add_parser(
        "demo",
        formatter_class=_Formatter,
        help="run brokers, simulators and the gateway together and show what goes upstream",
        description="Start two private mosquitto brokers, an MQTT fleet with an overheating "
        "device, a serial sensor on a pty, and `edge-gateway run` with config/demo.yaml.",
    )
    demo.add_argument(
        "--duration",
        type=_duration,
        default="60s",
        metavar="TIME",
        help="how long the simulated devices run",
    )
    demo.add_argument("--devices", type=_positive_int, default=5, help="MQTT fleet size")
    demo.add_argument("--rate", type=_rate, default=20.0, help="fleet readings per second")
    demo.add_argument("--config", default=str(DEFAULT_CONFIG), help="gateway config to run")
    demo.set_defaults(handler=_cmd_demo)

    return parser, subparsers


# --------------------------------------------------------------------------- commands


def _cmd_demo(args: argparse.Namespace, stop: threading.Event) -> int:
    return run_demo(args.duration, Path(args.config), args.devices, args.rate or 20.0, stop)


def _cmd_mqtt(args: argparse.Namespace, stop: threading.Event) -> int:
    log.info("mqtt: %d device(s) -> %s:%d", args.devices, args.host, args.port)
    summary = run_fleet(
        args.host,
        args.port,
        devices=args.devices,
        metrics=args.metrics,
        count=args.count,
        duration=args.duration,
        rate=args.rate,
        topic=args.topic,
        qos=args.qos,
        seed=args.seed,
        faults=args.fault,
        bad_every=args.bad_every,
        max_inflight=args.max_inflight,
        start_ts=args.start_ts,
        client_id=args.client_id,
        summary_json=args.summary_json,
        stop=stop,
        labels_json=args.labels,
    )
    print(summary.line(), flush=True)
    return 0


def _cmd_serial(args: argparse.Namespace, stop: threading.Event) -> int:
    def plugged(path: str) -> None:
        print(path, flush=True)
        log.info(
            "serial: %s lines on %s%s",
            args.format,
            path,
            f" (link {args.link})" if args.link else "",
        )

    with SerialDevice(args.link, write_timeout=args.write_timeout) as device:
        plugged(device.path)
        summary = run_serial(
            device,
            devices=args.devices,
            metrics=args.metrics,
            fmt=args.format,
            rate=args.rate,
            count=args.count,
            duration=args.duration,
            seed=args.seed,
            faults=args.fault,
            garbage_every=args.garbage_every,
            unplug_at=args.unplug_at,
            unplug_for=args.unplug_for,
            start_ts=args.start_ts,
            summary_json=args.summary_json,
            on_plug=plugged,
            stop=stop,
        )
    print(summary.line(), flush=True)
    return 0


def _install_stop_handlers(stop: threading.Event) -> None:
    """First SIGINT/SIGTERM sets ``stop``; a second SIGINT interrupts at once."""

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("%s: finishing (again to abort)", signal.Signals(signum).name)
        stop.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``edge-gateway-sim``."""
    parser, _ = build_parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format=f"{PROG}: %(message)s", stream=sys.stderr)
    stop = threading.Event()
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    _install_stop_handlers(stop)
    try:
        return handler(args, stop)
    except ValueError as e:  # bad arguments only found at run time (e.g. a fault matching nothing)
        parser.exit(2, f"{PROG}: error: {e}\n")
    except (FleetError, OSError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        if threading.current_thread() is threading.main_thread():
            for s, h in previous.items():
                signal.signal(s, h)


if __name__ == "__main__":
    sys.exit(main())
