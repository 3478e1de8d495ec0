"""A consumer process for the consumer-runtime suite.

    python -m tests.transports.runtime_child CONFIG QUEUE SCENARIO LOG


Each handler call is written to LOG as a JSON line: ``{"id", "attempt", "topic", "at", "what"}``,
``what`` being "start" or "finish". Scenarios:

* ``record`` — note the event and return (ack);
* ``block`` — note the start, then wait (the test kills the process);
* ``slow`` — note the start, take a second, note the finish;
* ``inbox-kill`` — on attempt 1, write the side effect through ``ctx.transaction()``, then SIGKILL itself;
  later attempts only note themselves.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time

import orjson

from tidings import App, Bus, Event
from tidings.consumer import Context


def main(config: str, queue: str, scenario: str, log_path: str) -> None:
    bus = Bus.load(config)
    transport = next(iter(bus.config.connectors.values())).transport
    exchange = next(iter(bus.config.connectors.values())).exchange
    app = App(
        queue,
        transport=transport,
        exchange=exchange,
        prefetch=10,
        concurrency=1,
        inbox=scenario == "inbox-kill",
    )
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def note(event: Event, ctx: Context, what: str) -> None:
        line = {"id": event.id, "attempt": ctx.attempt, "topic": event.topic, "at": time.time(), "what": what}
        os.write(log, orjson.dumps(line) + b"\n")

    @app.subscribe("#")
    def handle(event: Event, ctx: Context) -> None:
        note(event, ctx, "start")
        if scenario == "block":
            time.sleep(3600)
        elif scenario == "slow":
            time.sleep(1.0)
        elif scenario == "inbox-kill" and ctx.attempt == 1:
            with ctx.transaction() as db:
                db.execute("CREATE TABLE IF NOT EXISTS effects (id TEXT)")
                db.execute("INSERT INTO effects VALUES (?)", (event.id,))
            os.kill(os.getpid(), signal.SIGKILL)  # after the side effect, before the ack
        note(event, ctx, "finish")

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        watcher = asyncio.create_task(report_duplicates(app, log, stop))
        print("ready", flush=True)
        await app.run(bus, stop)
        await watcher

    asyncio.run(run())


async def report_duplicates(app: App, log: int, stop: asyncio.Event) -> None:
    """A line each time the inbox skips a redelivery: the test waits for it instead of for a time."""
    seen = 0
    while not stop.is_set():
        if app.counters.duplicates != seen:
            seen = app.counters.duplicates
            os.write(log, orjson.dumps({"what": "duplicates", "count": seen}) + b"\n")
        await asyncio.sleep(0.02)


if __name__ == "__main__":
    main(*sys.argv[1:])
