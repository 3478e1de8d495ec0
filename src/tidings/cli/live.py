"""`tidings tail`: follow the outbox as events arrive."""

from __future__ import annotations

import signal
import time
from types import FrameType

import typer
from rich.console import Console

from tidings.bus import Bus
from tidings.outbox import Outbox
from tidings.stopping import exit_status
from tidings.topics import topic_matches

POLL = 0.1


class _Signalled(Exception):
    def __init__(self, signum: int) -> None:
        self.signum = signum


def _raise_signalled(signum: int, frame: FrameType | None) -> None:
    raise _Signalled(signum)


def follow_outbox(bus: Bus, pattern: str, last: int, *, as_json: bool, console: Console) -> None:
    """Print events until SIGTERM (exit 0) or Ctrl-C (exit 130), as the long-running commands do.

    The handlers are set here rather than left to Python's Ctrl-C: a process started in the
    background by a non-interactive shell inherits SIGINT ignored, and would never stop."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _raise_signalled)
    outbox = bus.outbox
    cursor = before_the_last(outbox, pattern, last)
    try:
        while True:
            rows = outbox.read_after(cursor, 500)
            for row in rows:
                cursor = row.seq
                if topic_matches(pattern, row.topic):
                    show(row.event() if not as_json else None, row.data, as_json, console)
            if not rows:
                time.sleep(POLL)
    except _Signalled as stopped:
        raise typer.Exit(exit_status([stopped.signum])) from None
    finally:
        bus.close()


def before_the_last(outbox: Outbox, pattern: str, count: int) -> int:
    """The seq just before the last ``count`` events that match ``pattern`` (0: from the first),
    so that ``--last 3`` shows three of them however many others came after."""
    before, found = outbox.last_seq() + 1, 0
    while count > 0:
        rows = outbox.topics_before(before, 500)
        if not rows:
            return 0
        for seq, topic in rows:
            if topic_matches(pattern, topic):
                found += 1
                if found == count:
                    return seq - 1
        before = rows[-1][0]
    return before - 1


def show(event: object, data: bytes, as_json: bool, console: Console) -> None:
    if as_json:
        print(data.decode(), flush=True)
        return
    from tidings.cli.commands import print_event

    print_event(event, console)  # type: ignore[arg-type]
