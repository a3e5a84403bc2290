"""``python -m simulators`` is ``edge-gateway-sim``."""

import sys

from simulators.cli import main

sys.exit(main())
