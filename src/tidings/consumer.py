"""The consumer runtime: an App, its subscriptions, and how a handler's end settles a message.

A message is acked only after every matching handler returned. Exceptions are
flow control, as in fedora-messaging:

* :class:`Retry` — deliver again later (after ``delay`` or the app's schedule);
* :class:`Drop` — ack and forget it;
* :class:`Reject` — send it to the queue's dead letters now;
* :class:`Halt` — put it back untouched and stop the app;
* any other exception — retry with backoff until ``max_attempts``, then dead-letter.

An attempt is a try that ended: a retry counted by the broker (the embedded
broker keeps the count in the message's row, AMQP in a header), or a death — the
consumer process died while a handler ran on the message. Deaths are counted by
the handling journal (:mod:`tidings.journal`): a handler's start is written down
before it runs and crossed out when the message is settled, so an entry still
there when the message comes back is a death. A message whose attempts reached
``max_attempts`` that way goes to the dead letters with the reason "consumer
died while handling it", without calling the handler again; while it still has
tries, it runs alone (no other handler of the app at the same time), so that
what it kills is only itself. All of this survives restarts.

A message that cannot be decoded or fails its schema goes straight to the dead
letters: it would fail again on every retry.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import signal
import sqlite3
from collections.abc import Awaitable, Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tidings.errors import InvalidEvent, TidingsError
from tidings.event import Event
from tidings.formats import Format, load_format, wire_pattern
from tidings.inbox import Inbox
from tidings.journal import HandlingJournal
from tidings.topics import TopicMatcher, validate_pattern
from tidings.transport import Binding, Delivery, ExchangeSpec, QueueSpec, Topology, Transport

if TYPE_CHECKING:
    from tidings.bus import Bus

log = logging.getLogger(__name__)

Handler = Callable[..., Any]


class Retry(Exception):
    """Deliver this message again later (after ``delay`` seconds, or the app's schedule)."""

    def __init__(self, delay: float | None = None, reason: str = "") -> None:
        super().__init__(reason or "handler asked to retry")
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
        if self.inbox is None:
            raise TidingsError(f"ctx.transaction() needs the inbox: App({self.app!r}, inbox=True)")
        with self.inbox.transaction(self.app, self.event_id) as db:
            yield db


@dataclass(slots=True)
class Subscription:
    patterns: tuple[str, ...]
    handler: Handler
    takes_context: bool
    is_async: bool


@dataclass(slots=True)
class Counters:
    handled: int = 0
    retried: int = 0
    rejected: int = 0
    dropped: int = 0
    duplicates: int = 0


@dataclass
class AppSettings:
    queue: str
    exchange: str = "tidings"
    transport: str = "local"
    format: str = "tidings"
    #: options given to the format's constructor (e.g. fedora-messaging's topic_prefix)
    format_options: dict[str, Any] = field(default_factory=dict)
    prefetch: int = 100
    concurrency: int = 8
    max_attempts: int = 5
    retry_schedule: list[float] = field(default_factory=lambda: [1.0, 5.0, 25.0, 125.0, 625.0])
    inbox: bool = False
    queue_kind: str = "classic"
    extra_bindings: list[str] = field(default_factory=list)
    #: broker-specific queue arguments (e.g. RabbitMQ's x-expires), passed through untouched
    queue_arguments: dict[str, Any] = field(default_factory=dict)


#: topics whose handlers an App remembers
HANDLER_CACHE_SIZE = 4096


class App:
    """A consuming service: a durable queue bound by its subscriptions' patterns.

    >>> app = App("triage")
    >>> @app.subscribe("datawarehouse.checkout.*")
    ... def on_checkout(event): ...
    """

    def __init__(self, name: str, *, queue: str | None = None, **settings: Any) -> None:
        self.name = name
        self.settings = AppSettings(queue=queue or name, **settings)
        self.subscriptions: list[Subscription] = []
        self._routes: TopicMatcher[int] = TopicMatcher()
        #: topic -> its handlers; most services see a few topics over and over
        self._handlers_of: dict[str, list[Subscription]] = {}
        self.counters = Counters()
        self._format: tuple[str, Format] | None = None

    def format(self) -> Format:
        """The format the app's messages are decoded with (its settings' name and options)."""
        # settings may change after the app was made (the CLI and the config apply theirs): key on them
        key = f"{self.settings.format}:{sorted(self.settings.format_options.items())!r}"
        if self._format is None or self._format[0] != key:
            self._format = (key, load_format(self.settings.format, **self.settings.format_options))
        return self._format[1]

    def subscribe(self, *patterns: str) -> Callable[[Handler], Handler]:
        """Register a handler (sync or async) for events whose topic matches any pattern."""
        if not patterns:
            raise TypeError("subscribe() needs at least one topic pattern")
        for pattern in patterns:
            validate_pattern(pattern)

        def register(handler: Handler) -> Handler:
            self.add_handler(patterns, handler)
            return handler

        return register

    def add_handler(self, patterns: Iterable[str], handler: Handler) -> None:
        patterns = tuple(patterns)
        takes_context = len(inspect.signature(handler).parameters) >= 2
        # a coroutine function, or an object whose __call__ is one
        call = None if inspect.isroutine(handler) else vars(type(handler)).get("__call__")
        is_async = inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(call)
        index = len(self.subscriptions)
        self.subscriptions.append(Subscription(patterns, handler, takes_context, is_async))
        for pattern in patterns:
            self._routes.add(pattern, index)
        self._handlers_of.clear()

    def bindings(self) -> list[str]:
        seen: dict[str, None] = {}
        for sub in self.subscriptions:
            seen.update(dict.fromkeys(sub.patterns))
        seen.update(dict.fromkeys(self.settings.extra_bindings))
        return list(seen)

    def queue_spec(self) -> QueueSpec:
        """The app's queue, bound by its patterns as they look on the wire (a format may add a prefix)."""
        s = self.settings
        fmt = self.format()
        bindings = [Binding(s.exchange, wire_pattern(fmt, p)) for p in self.bindings()]
        return QueueSpec(s.queue, bindings, kind=s.queue_kind, arguments=dict(s.queue_arguments))

    def handlers_for(self, topic: str) -> list[Subscription]:
        found = self._handlers_of.get(topic)
        if found is None:
            found = [self.subscriptions[i] for i in sorted(self._routes.match(topic))]
            if len(self._handlers_of) >= HANDLER_CACHE_SIZE:
                self._handlers_of.clear()  # topics with ids in them (Taskcluster's) must not grow it
            self._handlers_of[topic] = found
        return found

    def retry_delay(self, attempt: int) -> float:
        schedule = self.settings.retry_schedule
        return schedule[min(attempt, len(schedule)) - 1]

    def topology(self) -> Topology:
        return Topology([ExchangeSpec(self.settings.exchange)], [self.queue_spec()])

    async def declare(self, bus: Bus) -> None:
        """Create the app's exchange, queue and bindings now (``run`` does it too)."""
        transport = bus.make_transport(self.settings.transport)
        await transport.connect()
        try:
            await transport.declare(self.topology())
        finally:
            await transport.close()

    async def run(self, bus: Bus, stop: asyncio.Event | None = None) -> None:
        """Consume until ``stop`` is set (or a handler raises Halt)."""
        runner = Runner(self, bus)
        await runner.run(stop or asyncio.Event())

    def run_forever(self, bus: Bus) -> None:
        """Blocking entry point: consume until SIGTERM or SIGINT, finishing in-flight handlers."""
        asyncio.run(_run_until_signalled(self, bus))


async def _run_until_signalled(app: App, bus: Bus) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await app.run(bus, stop)


class Runner:
    """One running consumer of an App: transport, decoding, handlers, settling."""

    def __init__(self, app: App, bus: Bus) -> None:
        self.app = app
        self.bus = bus
        settings = app.settings
        self.transport: Transport = bus.make_transport(settings.transport)
        self.format: Format = app.format()
        self.inbox: Inbox | None = bus.inbox() if settings.inbox else None
        self.journal: HandlingJournal = bus.journal()
        self._alone = Isolation()
        self.halted = False
        self._stopping = asyncio.Event()
        self._draining = False
        self._slots = asyncio.Semaphore(settings.concurrency)
        self._threads = ThreadPoolExecutor(settings.concurrency, thread_name_prefix=f"tidings-{app.name}")
        self._tasks: set[asyncio.Task[None]] = set()
        # tasks whose handler still holds one of the concurrency slots
        self._holding: set[asyncio.Task[None]] = set()

    async def run(self, stop: asyncio.Event) -> None:
        settings = self.app.settings
        await self.transport.connect()
        try:
            await self.transport.declare(self.app.topology())
            stream = self.transport.consume(self.app.queue_spec(), prefetch=settings.prefetch)
            watcher = asyncio.create_task(self._watch(stop))
            pump = asyncio.create_task(self._pump(stream))
            stopping = asyncio.ensure_future(self._stopping.wait())
            try:
                await asyncio.wait({pump, stopping}, return_when=asyncio.FIRST_COMPLETED)
                await self._shut_down(pump)
            finally:
                stopping.cancel()
                watcher.cancel()
                if not pump.done():  # we are being cancelled ourselves: stop fetching first
                    pump.cancel()
                    await asyncio.gather(pump, return_exceptions=True)
                await stream.aclose()  # type: ignore[attr-defined]
        finally:
            self._threads.shutdown(wait=True)
            await self.transport.close()
        if self.halted:
            raise HaltedError(f"app {self.app.name} halted by its handler")

    async def _watch(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._stopping.set()

    async def _pump(self, stream: Any) -> None:
        async for delivery in stream:
            if self._draining:  # fetched during shutdown: hand it back uncounted
                await delivery.release()
                continue
            await self._slots.acquire()
            task = asyncio.create_task(self._handle(delivery))
            self._tasks.add(task)
            self._holding.add(task)
            task.add_done_callback(self._finished)

    async def _shut_down(self, pump: asyncio.Task[None]) -> None:
        """Graceful: handlers already running finish and settle first; then stop fetching."""
        self._draining = True
        self._stopping.set()
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        if pump.done():
            pump.result()  # a transport failure ends the app with its error
            return
        # cancelled only now, with nothing in flight: the stream has nothing of ours to hand back
        pump.cancel()
        await asyncio.gather(pump, return_exceptions=True)

    def _free_slot(self, task: asyncio.Task[Any] | None) -> None:
        if task is not None and task in self._holding:  # once per task, whichever way it ends
            self._holding.discard(task)
            self._slots.release()

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._free_slot(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("tidings bug: settling a message failed: %r", task.exception())

    async def _handle(self, delivery: Delivery) -> None:
        try:
            handled = await self._decode_and_call(delivery)
        finally:
            # concurrency bounds running handlers: the next one starts while this one settles
            # (prefetch still bounds what is unsettled)
            self._free_slot(asyncio.current_task())
        if handled is not None:
            event, attempt, deaths, outcome = handled
            queue = self.app.settings.queue
            # the handler returned: whatever becomes of the settle, the process did not die on it
            self.journal.finished(queue, event.id)
            await self._settle(delivery, event, attempt, outcome)
            if deaths:
                self.journal.forget_deaths(queue, event.id)  # counted into the tries it settled with

    async def _decode_and_call(
        self, delivery: Delivery
    ) -> tuple[Event, int, int, BaseException | None] | None:
        """The event, its attempt, its deaths and what its handlers did; None if settled without them."""
        if self.halted:
            await delivery.release()
            return None
        try:
            event = self.format.decode(delivery.message)
            self.bus.check_received(event)
        except InvalidEvent as exc:  # it would fail the same way every time
            self.app.counters.rejected += 1
            log.warning("%s: dead-lettering an invalid message (%s)", self.app.name, exc)
            await delivery.reject(f"invalid message: {exc}")
            return None
        if self.inbox is not None and self.inbox.seen(self.app.name, event.id):
            self.app.counters.duplicates += 1
            await delivery.ack()
            return None
        queue = self.app.settings.queue
        # only a message that came back unsettled can have killed its consumer: ask the journal then
        deaths = self.journal.deaths(queue, event.id) if delivery.redelivered else 0
        if deaths:
            await self._alone.enter_exclusive()  # what it kills, it kills alone
        else:
            await self._alone.enter_shared()
        try:
            attempt = delivery.attempt + deaths
            if deaths and attempt > self.app.settings.max_attempts:
                await self._dead_after_deaths(delivery, event, attempt, deaths)
                return None
            self.journal.started(queue, event.id)
            return event, attempt, deaths, await self._call_handlers(delivery, event, attempt)
        finally:
            self._alone.leave_exclusive() if deaths else self._alone.leave_shared()

    async def _dead_after_deaths(self, delivery: Delivery, event: Event, attempt: int, deaths: int) -> None:
        self.app.counters.rejected += 1
        log.error(
            "%s: event %s killed its consumer %d time(s) (%d attempts of %d), dead-lettering it",
            self.app.name,
            event.id,
            deaths,
            attempt - 1,
            self.app.settings.max_attempts,
        )
        reason = f"consumer died while handling it ({deaths} time(s); {attempt - 1} attempts)"
        await delivery.reject(reason, attempts=attempt - 1)
        self.journal.forget_deaths(self.app.settings.queue, event.id)

    async def _call_handlers(self, delivery: Delivery, event: Event, attempt: int) -> BaseException | None:
        context = Context(attempt, self.app.settings.queue, self.app.name, delivery, event.id, self.inbox)
        try:
            for sub in self.app.handlers_for(event.topic):
                args = (event, context) if sub.takes_context else (event,)
                if sub.is_async:
                    await sub.handler(*args)
                else:
                    await asyncio.get_running_loop().run_in_executor(
                        self._threads, lambda a=args, s=sub: s.handler(*a)
                    )
        except Exception as exc:  # handler outcome: decided in _settle
            return exc
        return None

    async def _settle(
        self, delivery: Delivery, event: Event, attempt: int, outcome: BaseException | None
    ) -> None:
        counters, settings = self.app.counters, self.app.settings
        if outcome is None or isinstance(outcome, Drop):
            if self.inbox is not None:
                self.inbox.mark(self.app.name, event.id)
            await delivery.ack()
            if outcome is None:
                counters.handled += 1
            else:
                counters.dropped += 1
            return
        if isinstance(outcome, Halt):
            self.halted = True
            self._stopping.set()
            await delivery.release()
            return
        if isinstance(outcome, Reject):
            counters.rejected += 1
            await delivery.reject(f"rejected by handler: {outcome}", attempts=attempt)
            return
        if attempt >= settings.max_attempts:
            counters.rejected += 1
            log.error(
                "%s: event %s failed %d times, dead-lettering: %r", self.app.name, event.id, attempt, outcome
            )
            await delivery.reject(f"failed {attempt} times; last error: {outcome!r}"[:1000], attempts=attempt)
            return
        delay = (
            outcome.delay
            if isinstance(outcome, Retry) and outcome.delay is not None
            else self.app.retry_delay(attempt)
        )
        counters.retried += 1
        log.info(
            "%s: event %s attempt %d failed (%r), retrying in %.1fs",
            self.app.name,
            event.id,
            attempt,
            outcome,
            delay,
        )
        await delivery.retry(delay, repr(outcome)[:1000], attempts=attempt)


class Isolation:
    """Handlers run side by side (shared); a message that killed its consumer runs alone (exclusive).

    Exclusive waits for the running handlers to finish and keeps new ones from starting; shared
    waits while an exclusive one waits or runs. Without an exclusive one about, entering shared is
    a counter and nothing else.
    """

    def __init__(self) -> None:
        self._running = 0
        self._open = asyncio.Event()
        self._open.set()
        self._idle: asyncio.Future[None] | None = None

    async def enter_shared(self) -> None:
        while not self._open.is_set():
            await self._open.wait()
        self._running += 1

    def leave_shared(self) -> None:
        self._running -= 1
        if self._running == 0 and self._idle is not None and not self._idle.done():
            self._idle.set_result(None)

    async def enter_exclusive(self) -> None:
        while not self._open.is_set():
            await self._open.wait()
        self._open.clear()
        try:
            if self._running:
                self._idle = asyncio.get_running_loop().create_future()
                await self._idle
        except BaseException:
            self._open.set()  # cancelled while waiting: let the others go on
            raise
        finally:
            self._idle = None

    def leave_exclusive(self) -> None:
        self._open.set()


class HaltedError(TidingsError):
    exit_code = 8


def callback_app(
    name: str,
    callback: Callable[..., Any] | Callable[..., Awaitable[Any]],
    patterns: Iterable[str],
    **settings: Any,
) -> App:
    """An App with one handler: what ``tidings consume --callback`` runs."""
    app = App(name, **settings)
    app.add_handler(list(patterns), callback)
    return app
