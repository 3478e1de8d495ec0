"""Small helpers shared by the benchmarks: timing, percentiles, a results table."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
BODY_1KB = {"message": "x" * 1000}


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else float("nan")


class Report:
    """Rows of (what, figure, unit, peer figure) printed as a table and saved as JSON."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.rows: list[dict[str, Any]] = []

    def add(
        self,
        what: str,
        value: float,
        unit: str,
        *,
        peer: str = "",
        peer_value: float | None = None,
        target: str = "",
    ) -> None:
        row = {"what": what, "value": round(value, 2), "unit": unit, "target": target}
        if peer_value is not None:
            row.update(peer=peer, peer_value=round(peer_value, 2))
            higher_is_better = unit not in ("µs", "ms")
            row["ratio"] = round(value / peer_value if higher_is_better else peer_value / value, 2)
        self.rows.append(row)
        print(self.format(row), flush=True)

    @staticmethod
    def format(row: dict[str, Any]) -> str:
        line = f"{row['what']:<48} {row['value']:>12,.1f} {row['unit']:<10}"
        if "peer" in row:
            line += f"  vs {row['peer']}: {row['peer_value']:,.1f} → x{row['ratio']}"
        if row.get("target"):
            line += f"  (target {row['target']})"
        return line

    def save(self) -> Path:
        RESULTS.mkdir(exist_ok=True)
        path = RESULTS / f"{self.name}.json"
        meta = {"cpus": os.cpu_count(), "python": platform.python_version(), "time": time.time()}
        path.write_text(json.dumps({"meta": meta, "rows": self.rows}, indent=2))
        return path


async def through_the_bus(
    bus: Any, app: Any, count: int, publish: Callable[[], Awaitable[None]], pattern: str = "#"
) -> tuple[float, list[float]]:
    """Run ``app`` and a dispatcher, call ``publish``, wait for ``count`` deliveries.

    Returns (seconds from the first publish to the last delivery, publish→handler latencies).
    """
    import asyncio

    latencies: list[float] = []
    done = asyncio.Event()

    @app.subscribe(pattern)
    async def record(event: Any) -> None:
        latencies.append(time.time() - event.time.timestamp())
        if len(latencies) >= count:
            done.set()

    await app.declare(bus)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(app.run(bus, stop)), asyncio.create_task(bus.dispatcher().run(stop))]
    await asyncio.sleep(0.3)  # consumer and dispatcher connected before the clock starts
    start = time.perf_counter()
    await publish()
    await asyncio.wait_for(done.wait(), 600)
    elapsed = time.perf_counter() - start
    stop.set()
    await asyncio.gather(*tasks)
    return elapsed, latencies


async def paced(publish_one: Callable[[int], Awaitable[Any]], count: int, per_second: float | None) -> None:
    """Call ``publish_one(i)`` ``count`` times, at ``per_second`` (None: as fast as it goes)."""
    import asyncio

    start = time.perf_counter()
    for i in range(count):
        await publish_one(i)
        if per_second:
            lag = start + (i + 1) / per_second - time.perf_counter()
            if lag > 0:
                await asyncio.sleep(lag)


async def dispatch_rate(bus: Any, n: int, topic: str, *, poll: float = 0.001) -> float:
    """Events per second the dispatcher delivers through its first connector, from a full outbox.

    ``n`` events of 1 KB are published first; the clock runs from the dispatcher's start to the
    connector's n-th delivery. ``poll``: how often the counter is read (a broker client that
    works on threads of its own wants this slower, so the reading does not take its interpreter).
    """
    import asyncio

    for i in range(0, n, 1000):
        bus.publish_many([bus.event(topic, BODY_1KB) for _ in range(min(1000, n - i))])
    dispatcher = bus.dispatcher()
    stats = dispatcher.connectors[0].stats
    await dispatcher.workers[0].ensure_connected()
    stop = asyncio.Event()
    start = time.perf_counter()
    running = asyncio.create_task(dispatcher.run(stop))
    while stats.delivered < n:
        if running.done():
            running.result()  # a crash of the dispatcher ends the benchmark with its error
        await asyncio.sleep(poll)
    elapsed = time.perf_counter() - start
    stop.set()
    await running
    await dispatcher.connectors[0].transport.close()
    return rate(n, elapsed)
