"""A consumer process for the multi-process end-to-end benchmark.

    python -m bench.e2e_consumer CONFIG COUNT RESULT_FILE

Consumes COUNT events, then writes {"rate": events/s from first to last, "latencies": [...]}.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

from tidings import App, Bus, Event


async def run(config: str, count: int) -> dict[str, object]:
    bus = Bus.load(config)
    app = App("bench-e2e", prefetch=1000, concurrency=64)
    latencies: list[float] = []
    first: list[float] = []
    stop = asyncio.Event()

    @app.subscribe("bench.#")
    async def handler(event: Event) -> None:
        now = time.time()
        if not first:
            first.append(time.perf_counter())
        latencies.append(now - event.time.timestamp())
        if len(latencies) >= count:
            stop.set()

    await app.declare(bus)
    print("ready", flush=True)
    await app.run(bus, stop)
    elapsed = time.perf_counter() - first[0]
    return {"rate": count / elapsed, "latencies": latencies}


if __name__ == "__main__":
    stats = asyncio.run(run(sys.argv[1], int(sys.argv[2])))
    Path(sys.argv[3]).write_text(json.dumps(stats))
