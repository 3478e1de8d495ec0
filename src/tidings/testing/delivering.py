"""Hand what was published to an App's handlers in-process, through the real consumer runtime.

:func:`deliver` takes the events of the bus's outbox that the app has not been given yet and
whose topics its queue is bound by, encodes each in the app's wire format and hands it to
:meth:`tidings.runner.Runner.handle` — the code a running consumer uses for every message: decode,
schema check, inbox, handler signature rules (a Context for a second argument, sync handlers in
threads), and the settle rules (Retry, Drop, Reject, Halt, other exceptions against
``max_attempts``). Only the broker is left out: the settle is recorded instead of sent, and the
messages go one at a time, in the order they were published.

What the app was given is remembered in the outbox as a cursor of its own
(``tidings.testing:<queue>``), so a second ``deliver`` hands over only what was published since.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from tidings.errors import TidingsError
from tidings.event import Event
from tidings.handling import Drop
from tidings.outbox import Outbox, Row
from tidings.runner import Runner
from tidings.testing.matching import describe
from tidings.topics import topic_matches
from tidings.transport import WireMessage

if TYPE_CHECKING:
    from tidings.bus import Bus
    from tidings.consumer import App

#: acked (the handlers returned or raised Drop), retry (comes back after ``delay``), dead (to the
#: queue's dead letters), released (a handler raised Halt, or it came after one: put back untouched),
#: refused (the app's format cannot carry the event, so no connector would deliver it)
State = Literal["acked", "retry", "dead", "released", "refused"]

#: rows read from the outbox at a time
PAGE = 500


@dataclass(frozen=True, slots=True)
class EventOutcome:
    """What became of one event handed to an app."""

    event: Event
    state: State
    #: 1 for the first try; a retry handed back with ``deliver(..., retries=report)`` is one more
    attempt: int = 1
    #: retry: seconds before the broker would hand it back
    delay: float | None = None
    #: retry and dead: what the runtime recorded with it
    reason: str = ""
    #: what the handlers raised (Retry, Drop, Reject, Halt or a failure); None if they returned
    error: BaseException | None = None

    @property
    def dropped(self) -> bool:
        return isinstance(self.error, Drop)

    def __str__(self) -> str:
        how = f"retry in {self.delay:g}s" if self.state == "retry" and self.delay is not None else self.state
        why = f" ({self.reason})" if self.reason else ""
        return f"{how}, attempt {self.attempt}: {describe(self.event)}{why}"


@dataclass(slots=True)
class DeliveryReport:
    """The outcomes of one :func:`deliver`, in the order the events were published."""

    outcomes: list[EventOutcome] = field(default_factory=list)

    def __iter__(self) -> Iterator[EventOutcome]:
        return iter(self.outcomes)

    def __len__(self) -> int:
        return len(self.outcomes)

    def __getitem__(self, index: int) -> EventOutcome:
        return self.outcomes[index]

    def _in(self, state: State) -> list[EventOutcome]:
        return [outcome for outcome in self.outcomes if outcome.state == state]

    @property
    def acked(self) -> list[EventOutcome]:
        return self._in("acked")

    @property
    def retried(self) -> list[EventOutcome]:
        return self._in("retry")

    @property
    def dead(self) -> list[EventOutcome]:
        return self._in("dead")

    @property
    def released(self) -> list[EventOutcome]:
        return self._in("released")

    @property
    def halted(self) -> bool:
        return bool(self.released)

    @property
    def events(self) -> list[Event]:
        return [outcome.event for outcome in self.outcomes]

    def assert_acked(self) -> None:
        """Every event was acked; else AssertionError listing the others, from the first one's error."""
        others = [outcome for outcome in self.outcomes if outcome.state != "acked"]
        if not others:
            return
        lines = [f"{len(others)} of {len(self.outcomes)} event(s) not acked:"]
        lines += [f"  {outcome}" for outcome in others]
        errors = [o.error for o in others if o.error is not None]
        # the handler's own traceback is what a failing test needs to show
        raise AssertionError("\n".join(lines)) from (errors[0] if errors else None)

    def __str__(self) -> str:
        return "\n".join(str(outcome) for outcome in self.outcomes) or "nothing delivered"


@dataclass(slots=True)
class Handover:
    """The delivery the runtime settles; it records the settle instead of sending it to a broker."""

    message: WireMessage
    attempt: int = 1
    redelivered: bool = False
    settled: tuple[State, float | None, str] | None = None

    async def ack(self) -> None:
        self._record("acked")

    async def retry(self, delay: float, reason: str = "", *, attempts: int | None = None) -> None:
        self._record("retry", delay, reason)

    async def reject(self, reason: str, *, attempts: int | None = None) -> None:
        self._record("dead", reason=reason)

    async def release(self) -> None:
        self._record("released")

    def _record(self, state: State, delay: float | None = None, reason: str = "") -> None:
        if self.settled is not None:  # the runtime settles once; twice would be a bug in it
            raise AssertionError(f"tidings bug: a message settled twice ({self.settled[0]}, then {state})")
        self.settled = (state, delay, reason)


async def deliver(bus: Bus, app: App, *, retries: DeliveryReport | None = None) -> DeliveryReport:
    """Hand ``app`` the events published on ``bus`` since its last ``deliver`` whose topics its
    queue is bound by, one at a time through the real runtime; returns what became of each.

    With ``retries``, hand back instead the events that report retried, one attempt later (what
    the broker does when their delay is up).
    """
    if retries is not None:
        # a retried event comes back one attempt later; one put back (Halt) at the same attempt
        again = [o for o in retries.outcomes if o.state in ("retry", "released")]
        return await _hand_over(
            bus, app, [(o.event, o.attempt + 1 if o.state == "retry" else o.attempt) for o in again]
        )
    outbox, name = bus.outbox, f"tidings.testing:{app.settings.queue}"
    rows, last = _unseen(outbox, name, app.bindings(), _carriers(bus, app))
    report = await _hand_over(bus, app, [(row.event(), 1) for row in rows])
    # what was put back (a Halt, and what came after it) is handed over again next time
    released = [row.seq for row, outcome in zip(rows, report, strict=True) if outcome.state == "released"]
    outbox.settle(name, [], new_cursor=released[0] - 1 if released else last)
    return report


def deliver_sync(bus: Bus, app: App, *, retries: DeliveryReport | None = None) -> DeliveryReport:
    """:func:`deliver` for a test without an event loop (it runs one until the handlers are done)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(deliver(bus, app, retries=retries))
    raise RuntimeError("deliver_sync() cannot run inside an event loop: use await deliver(bus, app)")


def _carriers(bus: Bus, app: App) -> list[Callable[[Row], bool]] | None:
    """Whether a connector would send a row to the app's exchange, one test per connector on it;
    None when the config has none there (a test config without the app's broker: every row)."""
    from tidings.relay import connector_test

    tests = []
    for name, config in bus.config.connectors.items():
        if not config.enabled or config.exchange != app.settings.exchange:
            continue
        accepts = connector_test(bus.config, name)
        topics = list(config.topics)

        def carries(row: Row, topics: list[str] = topics, accepts: Any = accepts) -> bool:
            wanted = any(topic_matches(pattern, row.topic) for pattern in topics)
            return wanted and (accepts is None or accepts(row.event()))

        tests.append(carries)
    return tests or None


def _unseen(
    outbox: Outbox, name: str, bindings: list[str], carriers: list[Callable[[Row], bool]] | None = None
) -> tuple[list[Row], int]:
    """The rows after the app's cursor whose topics its queue is bound by (and that a connector
    on its exchange would send it), and the last seq looked at: what was published before this
    call (a handler's own publishing waits for the next)."""
    cursor, last = outbox.ensure_connector(name), outbox.last_seq()
    start, rows = cursor, []
    while cursor < last:
        page = outbox.read_after(cursor, PAGE)
        if not page:
            break
        cursor = page[-1].seq
        rows += [
            row
            for row in page
            if row.seq <= last
            and _bound(bindings, row.topic)
            and (carriers is None or any(carries(row) for carries in carriers))
        ]
    return rows, max(start, last)


def _bound(bindings: list[str], topic: str) -> bool:
    return any(topic_matches(pattern, topic) for pattern in bindings)


async def _hand_over(bus: Bus, app: App, events: list[tuple[Event, int]]) -> DeliveryReport:
    report = DeliveryReport()
    if not events:
        return report
    runner = Runner(app, bus)
    try:
        for event, attempt in events:
            report.outcomes.append(await _one(runner, event, attempt))
    finally:
        runner.close()
    return report


async def _one(runner: Runner, event: Event, attempt: int) -> EventOutcome:
    try:
        message = runner.format.encode(event)
    except TidingsError as exc:  # a connector in this format dead-letters it: the app never sees it
        reason = f"cannot encode for {runner.format.name}: {exc}"
        return EventOutcome(event, "refused", attempt, reason=reason)
    handover = Handover(message, attempt)
    error = await runner.handle(handover)
    if handover.settled is None:  # handle() always settles; a message left unsettled is a bug
        raise AssertionError(
            f"tidings bug: event {event.id} was neither acked, retried, rejected nor released"
        )
    state, delay, reason = handover.settled
    return EventOutcome(event, state, attempt, delay, reason, error)
