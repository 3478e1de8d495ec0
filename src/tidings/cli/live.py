"""`tidings tail`: follow the outbox as events arrive."""

from __future__ import annotations

import time

import typer
from rich.console import Console

from tidings.bus import Bus
from tidings.topics import topic_matches

POLL = 0.1


def follow_outbox(bus: Bus, pattern: str, last: int, *, as_json: bool, console: Console) -> None:
    outbox = bus.outbox
    cursor = max(0, outbox.last_seq() - last)
    try:
        while True:
            rows = outbox.read_after(cursor, 500)
            for row in rows:
                cursor = row.seq
                if topic_matches(pattern, row.topic):
                    show(row.event() if not as_json else None, row.data, as_json, console)
            if not rows:
                time.sleep(POLL)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None  # Ctrl-C is the only way out: say it was one


def show(event: object, data: bytes, as_json: bool, console: Console) -> None:
    if as_json:
        print(data.decode(), flush=True)
        return
    from tidings.cli.commands import print_event

    print_event(event, console)  # type: ignore[arg-type]
