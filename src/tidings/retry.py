"""Retry schedules and backoff: when to try again, in one place.

Two kinds of waiting, each with one function:

* a *schedule* — seconds before retry 1, 2, 3 ... of one event or message, the last
  entry repeating (a connector's backlog, a consumer's retries): :func:`scheduled`;
* *backoff* — how long something that cannot reach its broker waits before trying
  again, doubling up to a cap (a connector that is down, a consumer reconnecting):
  :func:`backoff`.

Both spread their waits with jitter, so that many events, or many processes, that
failed together do not all come back in the same instant.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Sequence

#: Bugzilla Push's backoff: 5**attempt seconds for attempts 1-4, then 15 minutes
#: (mozilla-bteam/bmo, extensions/Push/lib/Backoff.pm, ``inc``) — a connector's default
CONNECTOR_SCHEDULE = (5.0, 25.0, 125.0, 625.0, 900.0)
#: a consumer's default: quick at first (a flaky dependency), then as patient as a connector
CONSUMER_SCHEDULE = (1.0, 5.0, 25.0, 125.0, 625.0)
#: scheduled waits are spread by this fraction either way
JITTER = 0.2

Random = Callable[[], float]


def scheduled(schedule: Sequence[float], attempt: int, rng: Random | None = random.random) -> float:
    """Seconds before retry number ``attempt`` (1-based): its entry (the last repeats), ±20 %.

    ``rng=None`` gives the entry itself, without jitter.
    """
    base = schedule[min(max(attempt, 1), len(schedule)) - 1]
    if rng is None:
        return base
    return base * (1 - JITTER + 2 * JITTER * rng())


def backoff(failures: int, base: float, cap: float, rng: Random = random.random) -> float:
    """Seconds to wait after failure number ``failures`` in a row: base * 2^(n-1), capped, times 0.5-1.5."""
    return min(cap, base * 2 ** (max(failures, 1) - 1)) * (0.5 + rng())


#: a message whose retry or dead letter could not be written waits this long (doubling while
#: such failures go on) before it is handed back to its queue
HAND_BACK_BASE, HAND_BACK_CAP = 0.5, 5.0


class HandBack:
    """Hands back, after a backoff, a message whose settle could not be made (its retry's or
    dead letter's copy was refused). Left unsettled, it would keep its prefetch place on a
    connection that is fine; handed back at once, it would come straight back, and its handler
    would run in a loop for as long as the broker refuses. One per transport."""

    def __init__(self) -> None:
        self.failures = 0

    def succeeded(self) -> None:
        self.failures = 0

    def next_wait(self) -> float:
        """Seconds to wait before the next hand-back (one more failure in a row)."""
        self.failures += 1
        return backoff(self.failures, HAND_BACK_BASE, HAND_BACK_CAP)

    async def later(self, release: Callable[[], Awaitable[None]]) -> None:
        await asyncio.sleep(self.next_wait())
        await release()
