"""A consumer process for the multi-process end-to-end benchmark.

    python -m bench.e2e_consumer CONFIG COUNT RESULT_FILE

Consumes COUNT events, then writes {"rate": events/s from first to last, "latencies": [...]}.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from tidings import App, Bus, Event


async def run(config: str, count: int, result: str) -> None:
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
    with open(result, "w") as out:
        json.dump({"rate": count / elapsed, "latencies": latencies}, out)


if __name__ == "__main__":
    asyncio.run(run(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
