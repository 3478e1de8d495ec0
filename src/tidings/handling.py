"""What a handler is given and what it may raise: the vocabulary between handlers and the runtime.

Exceptions are flow control, as in fedora-messaging: :class:`Retry`, :class:`Drop`,
:class:`Reject` and :class:`Halt` say what becomes of the message; any other exception
is retried until ``max_attempts``. A handler that takes a second argument gets a
:class:`Context`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any

from tidings.errors import TidingsError
from tidings.inbox import Inbox
from tidings.transport import Delivery

Handler = Callable[..., Any]


#: the longest delay a handler's Retry may ask for (a day, as a reactor command's timeout)
MAX_RETRY_DELAY = 86_400.0


class Retry(Exception):
    """Deliver this message again later (after ``delay`` seconds, or the app's schedule)."""

    def __init__(self, delay: float | str | None = None, reason: str = "") -> None:
        if isinstance(delay, str):  # Retry("builds not in yet"), as Reject("why") is written
            delay, reason = None, reason or delay
        super().__init__(reason or "handler asked to retry")
        # a delay no broker can wait (nan, inf, negative, past a day) is a bug of the handler:
        # raised here, it counts as the handler's failure and the app's schedule applies
        if isinstance(delay, bool) or (delay is not None and not 0 <= delay <= MAX_RETRY_DELAY):
            raise ValueError(f"Retry delay must be between 0 and {MAX_RETRY_DELAY:g} seconds, not {delay!r}")
        self.delay = delay


class Drop(Exception):
    """Acknowledge and forget this message."""


class Reject(Exception):
    """Send this message to the dead letters now."""


class Halt(Exception):
    """Put the message back untouched and stop the app."""


@dataclass(slots=True)
class Context:
    """What a handler that takes a second argument is given."""

    attempt: int
    queue: str
    app: str
    delivery: Delivery
    event_id: str = ""
    inbox: Inbox | None = None

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A transaction on the inbox database that also records this event as handled.

        A side effect written through it happens exactly once: if the process dies
        before the commit, nothing happened and the redelivery runs the handler
        again; if it dies after, the redelivery finds the event in the inbox.
        """
        with self._inbox("transaction").transaction(self.app, self.event_id) as db:
            yield db

    @asynccontextmanager
    async def atransaction(self) -> AsyncIterator[sqlite3.Connection]:
        """:meth:`transaction` for an async handler that awaits inside it (``async with``): it
        waits for another handler's transaction without stopping the event loop."""
        async with self._inbox("atransaction").atransaction(self.app, self.event_id) as db:
            yield db

    def _inbox(self, call: str) -> Inbox:
        if self.inbox is None:
            raise TidingsError(f"ctx.{call}() needs the inbox: App({self.app!r}, inbox=True)")
        return self.inbox


@dataclass(slots=True)
class Subscription:
    patterns: tuple[str, ...]
    handler: Handler
    takes_context: bool
    is_async: bool


@dataclass(slots=True)
class Counters:
    handled: int = 0
    #: acked with no handler for its topic (another member's binding, an earlier version's)
    unhandled: int = 0
    retried: int = 0
    rejected: int = 0
    dropped: int = 0
    duplicates: int = 0
