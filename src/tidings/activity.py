"""What the long-running commands say while they work: a line a second at most, a line per event on demand.

A dispatcher's connector or a consumer finishes batches many times a second when busy; a line
per batch would drown the log, and no line at all (what fedora-messaging users would miss most)
leaves an operator guessing. :class:`Activity` sums what happened since its last line — the
counters' growth and the latencies noted — and :meth:`Activity.report_every` writes that line
once per interval when something happened. Per-event lines go to the ``tidings.events`` logger,
which the command line keeps quiet unless ``--verbose`` is given.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping

log = logging.getLogger("tidings.activity")
#: one line per event, for ``--verbose``; checked with isEnabledFor before anything is formatted
events_log = logging.getLogger("tidings.events")


class Activity:
    """Counts and latencies of one worker, summed into one log line per interval."""

    def __init__(
        self,
        name: str,
        counts: Callable[[], Mapping[str, int]],
        *,
        latency_label: str = "latency",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.counts = counts
        self.latency_label = latency_label
        self.clock = clock
        self._seen = dict(counts())
        self._latencies: list[float] = []

    def note(self, seconds: float) -> None:
        """One batch (or event) finished after ``seconds``."""
        self._latencies.append(seconds)

    def line(self) -> str | None:
        """What happened since the last line, or None if nothing did; starts the next interval."""
        now = dict(self.counts())
        grown = {key: now[key] - self._seen.get(key, 0) for key in now}
        latencies, self._latencies = sorted(self._latencies), []
        self._seen = now
        if not any(grown.values()) and not latencies:
            return None
        said = ", ".join(f"{key} {value}" for key, value in grown.items() if value or key in _ALWAYS)
        if latencies:
            p50 = latencies[len(latencies) // 2]
            said += (
                f"; {self.latency_label} p50 {p50 * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms"
                f" over {len(latencies)}"
            )
        return f"{self.name}: {said}"

    def flush(self) -> None:
        said = self.line()
        if said is not None:
            log.info("%s", said)

    async def report_every(self, seconds: float, stop: asyncio.Event) -> None:
        """Log a line each ``seconds`` in which something happened, and a last one at ``stop``."""
        while not stop.is_set():
            waiter = asyncio.ensure_future(stop.wait())
            try:
                await asyncio.wait({waiter}, timeout=seconds)  # not wait_for: see EmbeddedTransport._nap
            finally:
                waiter.cancel()
            self.flush()


class BacklogNotices:
    """A warning the first time a connector keeps events of a topic in its backlog, saying why.

    An event no queue is bound for is kept, not lost, and retried on the connector's schedule; a
    user who published before starting any consumer must see that where they look, once per
    topic and reason rather than once per event (at most ``limit`` topics are remembered).
    """

    def __init__(
        self, connector: str, limit: int = 1000, exchange: str = "tidings", ordered: bool = False
    ) -> None:
        self.connector = connector
        self.limit = limit
        self.exchange = exchange
        self.ordered = ordered
        #: topic → the kinds of refusal (``unroutable``, ...) already told
        self._told: dict[str, set[str]] = {}

    def kept(self, topic: str, reason: str, retry_in: float) -> None:
        kind = reason.partition(":")[0]
        kinds = self._told.setdefault(topic, set())
        if kind in kinds:
            return
        if len(self._told) > self.limit:
            self._told = {topic: kinds}
        kinds.add(kind)
        log.warning(
            "connector %s: an event of %r is kept in the backlog, next try in %.0fs%s: %s%s",
            self.connector,
            topic,
            retry_in,
            # one no queue took reached nobody whose order could break: the rest goes on
            " (the connector keeps its order: the events after it wait too)"
            if self.ordered and kind != "unroutable"
            else "",
            reason,
            _hint(self.connector, kind, self.exchange),
        )

    def delivered(self, topic: str) -> None:
        """Events of ``topic`` go through again: a later refusal is news worth a new warning."""
        if self._told:
            self._told.pop(topic, None)


def _hint(connector: str, kind: str, exchange: str) -> str:
    if kind == "unroutable":
        on = "" if exchange == "tidings" else f" --exchange {exchange}"  # the consumers' default
        return (
            " — start a consumer bound to it (e.g. tidings consume --callback MODULE:FUNC --bind "
            f"PATTERN{on}); see `tidings backlog list {connector}`"
        )
    return f" — see `tidings backlog list {connector}`"


#: counters shown even when they did not grow (the first one says the worker is alive)
_ALWAYS = ("delivered", "handled")
