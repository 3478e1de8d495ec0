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
    else:
        raise SystemExit(f"unknown role {role}")


if __name__ == "__main__":
    asyncio.set_event_loop_policy(None)
    main(sys.argv[1:])
