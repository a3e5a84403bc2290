"""Store commit throughput: synchronous NORMAL vs FULL, group commit vs a commit per reading.

    python -m tests.faults.bench_durability [--readings 50000]

Prints readings/s for each mode on a real file in a temporary directory; the
"commit per reading" rows are the baseline that group commit is measured against.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from gateway.counters import Counters
from gateway.model import Reading
from gateway.store.config import StoreConfig
from gateway.store.store import Store


async def run(path: Path, synchronous: str, per_commit: int, n: int) -> float:
    config = StoreConfig.model_validate(
        {"path": str(path), "synchronous": synchronous, "batch_max": per_commit}
    )
    async with Store(config, Counters()) as store:
        start = time.perf_counter()
        for i in range(0, n, per_commit):
            store.add_readings(
                Reading("bench", f"d{j % 50}", "t", float(j), 1.7e9 + j, j)
                for j in range(i, min(n, i + per_commit))
            )
            await store.flush()
        return n / (time.perf_counter() - start)


async def main(n: int) -> None:
    print(f"{'synchronous':<12} {'mode':<28} {'readings':>9} {'readings/s':>12}")
    with tempfile.TemporaryDirectory() as tmp:
        for sync in ("normal", "full"):
            for label, per_commit, count in (
                ("commit per reading (base)", 1, min(n, 2000)),
                ("group commit, 2000/batch", 2000, n),
            ):
                path = Path(tmp) / f"{sync}-{per_commit}.db"
                rate = await run(path, sync, per_commit, count)
                print(f"{sync:<12} {label:<28} {count:>9} {rate:>12,.0f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readings", type=int, default=50_000)
    asyncio.run(main(parser.parse_args().readings))
