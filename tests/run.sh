#!/usr/bin/env bash
# The test command: format and lint checks, type checks, then the whole test suite.
# Creates .venv and installs the project with its test extras when needed.
# Extra arguments go to pytest, e.g.  bash tests/run.sh -k serial -x
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q -e '.[test]'
if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
  echo "mosquitto is needed by the integration tests: sudo apt-get install -y mosquitto" >&2
  exit 1
fi
.venv/bin/ruff format --check gateway simulators tests
.venv/bin/ruff check gateway simulators tests
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
