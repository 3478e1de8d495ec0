"""Child processes for the multi-process tests: ``python -m tests.faults.procs ROLE ...``.

Roles: ``publish CONFIG PREFIX COUNT LEDGER_DIR`` and ``consume CONFIG APP LEDGER_FILE``.
The dispatcher runs as the real CLI, ``tidings dispatch``.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from tests.ledger import LedgerFile
from tidings import App, Bus, Event


def publish(config: str, prefix: str, count: int, ledger_dir: str) -> None:
    bus = Bus.load(config)
    attempted = LedgerFile(Path(ledger_dir) / f"attempted-{prefix}")
    returned = LedgerFile(Path(ledger_dir) / f"returned-{prefix}")
    for n in range(count):
        event = bus.event(f"load.{prefix}.{n % 7}", {"n": n, "pad": "x" * 200})
        attempted.record(event.id)
        bus.publish(event)
        returned.record(event.id)


def consume(config: str, name: str, ledger: str) -> None:
    bus = Bus.load(config)
    delivered = LedgerFile(Path(ledger))
    app = App(name, prefetch=50, concurrency=8)

    @app.subscribe("load.#")
    async def record(event: Event) -> None:
        delivered.record(event.id)  # the side effect, before the ack

    app.run_forever(bus)


def main(argv: list[str]) -> None:
    role, *args = argv
    if role == "publish":
        publish(args[0], args[1], int(args[2]), args[3])
    elif role == "consume":
        consume(*args)
    elif role == "consume-and-die":
        consume_and_die(*args)
    elif role == "consume-poisoned":
        consume_poisoned(*args)
    else:
        raise SystemExit(f"unknown role {role}")


def consume_and_die(config: str, name: str, effects_db: str, kill_every: str) -> None:
    """A consumer whose handler does its side effect, then (for some events, once each) dies by
    SIGKILL before the ack. With ``effects_db`` == "inbox" the side effect goes through the inbox
    transaction; otherwise it is a plain SQLite insert outside it."""
    import os
    import signal
    import sqlite3

    from tidings.consumer import Context

    bus = Bus.load(config)
    every = int(kill_every)
    use_inbox = effects_db == "inbox"
    app = App(
        name,
        transport="rabbit",
        exchange=bus.config.connectors["rabbit"].exchange,
        prefetch=1,
        concurrency=1,
        inbox=use_inbox,
        max_attempts=100,
    )
    plain = None if use_inbox else sqlite3.connect(effects_db, isolation_level=None, check_same_thread=False)

    @app.subscribe("#")
    def effect(event: Event, ctx: Context) -> None:
        if use_inbox:
            with ctx.transaction() as db:
                db.execute("CREATE TABLE IF NOT EXISTS effects (id TEXT)")
                db.execute("INSERT INTO effects VALUES (?)", (event.id,))
        else:
            assert plain is not None
            plain.execute("CREATE TABLE IF NOT EXISTS effects (id TEXT)")
            plain.execute("INSERT INTO effects VALUES (?)", (event.id,))
        if event.body["n"] % every == 0 and ctx.attempt == 1:
            os.kill(os.getpid(), signal.SIGKILL)  # after the side effect, before the ack

    app.run_forever(bus)


def consume_poisoned(config: str, transport: str, queue: str, seen: str) -> None:
    """A consumer whose handler kills its process (``os._exit``) on the event marked poison.

    Every handler call is written down first (``<event id> <ctx.attempt> <monotonic-free time>``),
    so the test can count how often the poison was tried and when the others arrived.
    """
    import os
    import time

    from tidings.consumer import Context

    bus = Bus.load(config)
    app = App(
        queue,
        transport=transport,
        exchange=bus.config.connectors[transport].exchange,
        prefetch=20,
        concurrency=4,
        max_attempts=3,
    )
    fd = os.open(seen, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    @app.subscribe("#")
    def handle(event: Event, ctx: Context) -> None:
        os.write(fd, f"{event.id} {ctx.attempt} {time.time():.3f}\n".encode())
        if event.body.get("poison"):
            os._exit(17)  # dies mid-handler: no exception, no settle, no cleanup

    app.run_forever(bus)


if __name__ == "__main__":
    asyncio.set_event_loop_policy(None)
    main(sys.argv[1:])
