#!/usr/bin/env bash
# One command for the demo: installs what is missing, then runs `edge-gateway-sim demo`.
# Extra arguments go to the demo, e.g.  bash simulators/demo.sh --duration 2m --devices 20
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q mosquitto
  else
    echo "The demo needs the mosquitto broker: sudo apt-get install -y mosquitto" >&2
    exit 1
  fi
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q -e .
exec .venv/bin/edge-gateway-sim demo "$@"
