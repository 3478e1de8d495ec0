"""Stopping a long-running part (dispatcher, consumer, relay, reactor) on SIGTERM or Ctrl-C.

The first signal asks for a clean stop: what is running finishes and is settled, nothing new
starts. A handler or a reactor command can take long (up to its timeout), so a second signal stops
at once: the running part is cancelled, a reactor command is killed with its process group, and
the messages that were being handled stay unsettled, so the broker hands them out again (they are
not counted as a consumer's death).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)
#: exit status after Ctrl-C (128 + SIGINT), as shells report an interrupted command
INTERRUPTED = 130


async def run_until_signalled(run: Callable[..., Awaitable[Any]], *args: Any) -> list[int]:
    """Run ``run(*args, stop)``; the first SIGTERM/SIGINT sets ``stop``, a second one cancels it.

    Returns the signals received (empty when ``run`` ended by itself); raises what ``run`` raised.
    """
    stop = asyncio.Event()
    received: list[int] = []
    task = asyncio.ensure_future(run(*args, stop))
    loop = asyncio.get_running_loop()

    def on_signal(sig: int) -> None:
        received.append(sig)
        if len(received) == 1:
            log.warning(
                "stopping once what is running has finished (%s again stops at once)",
                "Ctrl-C" if sig == signal.SIGINT else "the signal",
            )
            stop.set()
        elif not task.done():
            log.warning("stopping at once: what was being handled will be delivered again")
            task.cancel()

    for sig in SIGNALS:
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        await asyncio.wait({task})
    except asyncio.CancelledError:  # we are cancelled ourselves: so is what we run
        task.cancel()
        await asyncio.wait({task})
        raise
    finally:
        for sig in SIGNALS:
            loop.remove_signal_handler(sig)
    if task.cancelled() and len(received) < 2:
        raise asyncio.CancelledError  # cancelled by something else than a second signal
    if not task.cancelled():
        task.result()  # what it raised, it raises here
    return received


def exit_status(received: list[int]) -> int:
    """The status to end with: 130 after a Ctrl-C, 0 after SIGTERM (a service manager's stop)."""
    return INTERRUPTED if signal.SIGINT in received else 0


def leave_now_if_forced(received: list[int]) -> None:
    """After a second signal (a forced stop), end the process now: :func:`leave_now`."""
    if len(received) >= 2:
        leave_now(exit_status(received))


def leave_now(code: int) -> NoReturn:
    """End the process now, after a forced stop. A sync handler runs in a thread that cannot be
    interrupted, and Python waits for such threads at exit: the process would live on until the
    handler returned. Its message stays unsettled and comes back, as after a crash."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
