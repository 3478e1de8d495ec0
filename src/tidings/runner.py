"""How a running consumer handles a message: decode, check, call the handlers, settle.

An attempt is a try that ended: a retry counted by the broker (the embedded
broker keeps the count in the message's row, AMQP in a header), or a death — the
consumer process died while a handler ran on the message. Deaths are counted by
the handling journal (:mod:`tidings.journal`): a handler's start is written down
before it runs and its return before the message is settled, so a start without
a return, left by a dead process, is a death. A message whose attempts reached
``max_attempts`` that way goes to the dead letters with the reason "consumer
died while handling it", without calling the handler again; while it still has
tries, it runs alone (no other handler of the app at the same time), so that
what it kills is only itself. All of this survives restarts.

A message that cannot be decoded or fails its schema goes straight to the dead
letters: it would fail again on every retry.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Protocol

from tidings.activity import Activity, events_log
from tidings.errors import HaltedError, InvalidEvent, TidingsError, TransportError
from tidings.event import Event
from tidings.format import Format, wire_pattern
from tidings.handling import Context, Counters, Drop, Halt, Reject, Retry, Subscription
from tidings.inbox import Inbox
from tidings.journal import HandlingJournal
from tidings.redact import redact
from tidings.topics import TopicMatcher
from tidings.transport import Delivery, QueueSpec, Topology, Transport, WireMessage

if TYPE_CHECKING:
    from tidings.bus import Bus
    from tidings.config import ConsumerConfig

log = logging.getLogger(__name__)
#: seconds between a consumer's activity lines (when it did something)
REPORT_EVERY = 1.0
#: seconds between purges of the inbox's old records (by a consumer that uses the inbox)
INBOX_PURGE_EVERY = 300.0
#: seconds between tries to reach a broker that is away at the start (doubling up to the last)
FIRST_CONNECT_WAIT = 1.0
LAST_CONNECT_WAIT = 30.0
#: topics a consumer remembers having warned about (no handler took them)
UNHANDLED_TOLD_LIMIT = 1000


class Consuming(Protocol):
    """What the runner needs of the app it runs (:class:`~tidings.consumer.App`)."""

    name: str
    settings: ConsumerConfig
    counters: Counters

    def format(self) -> Format: ...

    def topology(self) -> Topology: ...

    def queue_spec(self) -> QueueSpec: ...

    def handlers_for(self, topic: str) -> list[Subscription]: ...

    def retry_delay(self, attempt: int) -> float: ...


class Runner:
    """One running consumer of an App: transport, decoding, handlers, settling."""

    def __init__(self, app: Consuming, bus: Bus) -> None:
        self.app = app
        self.bus = bus
        settings = app.settings
        # made by run(), not here: tidings.testing's deliver() hands messages to handle() without one
        self.transport: Transport | None = None
        self.format: Format = app.format()
        self.inbox: Inbox | None = bus.inbox() if settings.inbox else None
        self.journal: HandlingJournal = bus.journal()
        self._guesses_redelivery = False
        self._alone = Isolation()
        self.halted = False
        self._stopping = asyncio.Event()
        self._draining = False
        self._slots = asyncio.Semaphore(settings.concurrency)
        self._threads = ThreadPoolExecutor(settings.concurrency, thread_name_prefix=f"tidings-{app.name}")
        self._tasks: set[asyncio.Task[Any]] = set()
        # tasks whose handler still holds one of the concurrency slots
        self._holding: set[asyncio.Task[Any]] = set()
        #: the wire patterns of the app's settings' bindings: what they bring has no handler on purpose
        self._bound_only: TopicMatcher[bool] = TopicMatcher()
        fmt = app.format()
        for pattern in settings.bindings:
            self._bound_only.add(wire_pattern(fmt, pattern), True)
        self._told_unhandled: set[str] = set()
        counters = app.counters
        self.activity = Activity(
            f"consumer {app.name}",
            lambda: dataclasses.asdict(counters),
            latency_label="published→settled",
        )

    async def run(self, stop: asyncio.Event, *, wait_for_broker: bool = False) -> None:
        """Consume until ``stop``. A broker away at the start is an error (TransportError), or
        with ``wait_for_broker`` (``tidings serve``, like its dispatcher) a wait for it."""
        settings = self.app.settings
        transport = self.transport = self.bus.make_transport(settings.transport)
        # a transport that can only guess whether a message came back (Kafka) says so
        self._guesses_redelivery = bool(getattr(transport, "guesses_redelivery", False))
        if not await self._connect(transport, stop, keep_trying=wait_for_broker):
            await transport.close()
            return
        try:
            await transport.declare(self.app.topology())
            stream = transport.consume(self.app.queue_spec(), prefetch=settings.prefetch)
            watcher = asyncio.create_task(self._watch(stop))
            reporter = asyncio.create_task(self.activity.report_every(REPORT_EVERY, self._stopping))
            purger = asyncio.create_task(self._purge_inbox())
            pump = asyncio.create_task(self._pump(stream))
            stopping = asyncio.ensure_future(self._stopping.wait())
            try:
                await asyncio.wait({pump, stopping}, return_when=asyncio.FIRST_COMPLETED)
                await self._shut_down(pump)
            finally:
                stopping.cancel()
                watcher.cancel()
                purger.cancel()
                self._stopping.set()  # (being cancelled, nothing else sets it: the reporter would wait)
                await asyncio.gather(reporter, return_exceptions=True)  # its last line: the stop
                if not pump.done():  # we are being cancelled ourselves: stop fetching first
                    pump.cancel()
                    await asyncio.gather(pump, return_exceptions=True)
                await stream.aclose()  # type: ignore[attr-defined]
        finally:
            task = asyncio.current_task()
            # stopped at once (cancelled): a sync handler's thread cannot be interrupted, and
            # waiting for it here would hold the event loop until it returns
            self.close(wait=not (task is not None and task.cancelling()))
            await transport.close()
        if self.halted:
            raise HaltedError(f"app {self.app.name} halted by its handler")

    async def _connect(self, transport: Transport, stop: asyncio.Event, *, keep_trying: bool) -> bool:
        """Connected (True), or stopped while waiting for the broker (False)."""
        delay = FIRST_CONNECT_WAIT
        while True:
            try:
                await transport.connect()
                return True
            except TransportError as exc:
                if not keep_trying:
                    raise
                log.warning("%s: %s; trying again in %gs", self.app.name, exc, delay)
            try:
                await asyncio.wait_for(stop.wait(), delay)
                return False
            except TimeoutError:
                delay = min(delay * 2, LAST_CONNECT_WAIT)

    def close(self, *, wait: bool = True) -> None:
        """Stop the sync handlers' threads (after they finished, with ``wait``): run() does it on
        every way out."""
        self._threads.shutdown(wait=wait, cancel_futures=not wait)

    async def _purge_inbox(self) -> None:
        """Keep the inbox bounded: forget what was handled longer ago than the retention."""
        if self.inbox is None:
            return
        retention = self.bus.config.bus.inbox_retention
        while True:
            cutoff = time.time() - retention
            try:
                purged = await asyncio.to_thread(self.inbox.purge, cutoff)
            except TidingsError as exc:  # a full disk: the next round tries again
                log.warning("%s: purging the inbox failed: %s", self.app.name, exc)
            else:
                if purged:
                    log.info(
                        "%s: inbox: forgot %d event(s) handled before the retention", self.app.name, purged
                    )
            await asyncio.sleep(INBOX_PURGE_EVERY)

    async def _watch(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._stopping.set()

    async def _pump(self, stream: Any) -> None:
        async for delivery in stream:
            if self._draining:  # fetched during shutdown: hand it back uncounted
                await delivery.release()
                continue
            await self._slots.acquire()
            if self._draining:  # shutdown began while it waited for a handler's slot: the same
                self._slots.release()
                await delivery.release()
                continue
            task = asyncio.create_task(self.handle(delivery))
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

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        self._free_slot(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("tidings bug: settling a message failed: %r", task.exception())

    async def handle(self, delivery: Delivery) -> BaseException | None:
        """One message's whole life in the consumer: decode, check, call the handlers, settle.

        Returns what the handlers raised (None: they returned, or never ran); how the message
        was settled is what ``delivery`` was told. tidings.testing's deliver() calls this too.
        """
        try:
            handled = await self._decode_and_call(delivery)
        except TidingsError as exc:  # before its handlers (a settle of an invalid one, the journal)
            log.warning(
                "%s: could not settle message %s (%s); it will be delivered again",
                self.app.name,
                delivery.message.message_id,
                exc,
            )
            await _hand_back(delivery)
            return None
        finally:
            # concurrency bounds running handlers: the next one starts while this one settles
            # (prefetch still bounds what is unsettled)
            self._free_slot(asyncio.current_task())
        if handled is not None:
            event, attempt, deaths, outcome = handled
            queue = self.app.settings.queue
            # the handler returned: whatever becomes of the settle, the process did not die on it
            self.journal.finished(queue, event.id)
            try:
                await self._settle(delivery, event, attempt, outcome)
            except TidingsError as exc:  # the broker could not take the settle (gone, disk full)
                log.warning(
                    "%s: could not settle event %s (%s); it will be delivered again",
                    self.app.name,
                    event.id,
                    exc,
                )
                return outcome
            if deaths:
                self.journal.forget_deaths(queue, event.id)  # counted into the tries it settled with
            self._tell(event, attempt, outcome)
            return outcome
        return None

    def _tell(self, event: Event, attempt: int, outcome: BaseException | None) -> None:
        self.activity.note(max(0.0, time.time() - event.time.timestamp()))
        if events_log.isEnabledFor(logging.INFO):
            events_log.info(
                "consumer %s: %s %s attempt %d: %s",
                self.app.name,
                event.topic,
                event.id,
                attempt,
                "handled" if outcome is None else f"{type(outcome).__name__}: {outcome}",
            )

    async def _decode_and_call(
        self, delivery: Delivery
    ) -> tuple[Event, int, int, BaseException | None] | None:
        """The event, its attempt, its deaths and what its handlers did; None if settled without them."""
        if self.halted:
            await delivery.release()
            return None
        if getattr(delivery, "lost", False):
            # prefetched on a connection that is gone: the broker hands it out again on the next
            # one, and handled here too it would run twice (its settle could not reach the broker)
            return None
        try:
            event = self.format.decode(delivery.message)
            self.bus.check_received(event)
        except InvalidEvent as exc:  # it would fail the same way every time
            self.app.counters.rejected += 1
            log.warning("%s: dead-lettering an invalid message (%s)", self.app.name, exc)
            await delivery.reject(f"invalid message: {exc}")
            return None
        except Exception as exc:  # a format's own bug (a plug-in's): it would fail
            # the same way every time too, and left unsettled it would hold its place for good
            self.app.counters.rejected += 1
            reason = f"the {self.format.name} format failed on it: {type(exc).__name__}: {exc}"
            log.error("%s: dead-lettering message %s: %s", self.app.name, delivery.message.message_id, reason)
            await delivery.reject(reason)
            return None
        if not delivery.message.message_id:
            # a format may derive the id from the content when the message carries none: a copy
            # this consumer makes (a retry, a dead letter) carries that id, or its next reader
            # would decode the id a transport stamps on copies (AMQP matches returns by one)
            delivery.message.message_id = event.id
        if self.inbox is not None and await self.inbox.aseen(self.app.name, event.id):
            self.app.counters.duplicates += 1
            await delivery.ack()
            return None
        queue = self.app.settings.queue
        # only a message that came back unsettled can have killed its consumer: ask the journal then
        deaths = (
            self.journal.deaths(queue, event.id, guessed=self._guesses_redelivery)
            if delivery.redelivered
            else 0
        )
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
            try:
                outcome = await self._call_handlers(delivery, event, attempt)
            except asyncio.CancelledError:
                # stopped at once (a second Ctrl-C): not a death; the message comes back unsettled
                self.journal.finished(queue, event.id)
                raise
            return event, attempt, deaths, outcome
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
        handlers = self.handlers_of(event, delivery.message)
        if not handlers and not self._bound_on_purpose(delivery.message):
            self._tell_unhandled(event.topic, delivery.message.routing_key)
        try:
            for sub in handlers:
                args = (event, context) if sub.takes_context else (event,)
                if sub.is_async:
                    returned = await sub.handler(*args)
                else:
                    returned = await asyncio.get_running_loop().run_in_executor(
                        self._threads, _call_sync, sub.handler, args
                    )
                _check_finished(sub.handler, returned)
        except _Raised as carried:
            return carried.raised
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # stopped at once: the message comes back unsettled
            return exc  # raised by the handler itself: its failure
        except BaseException as exc:  # handler outcome: decided in _settle
            # (a sys.exit(), a KeyboardInterrupt or any BaseException a handler raises is its
            # failure: the message is retried, and the consumer goes on; uncaught, it left the
            # message unsettled, its lease renewed, until the consumer stopped)
            return exc
        return None

    def handlers_of(self, event: Event, message: WireMessage) -> list[Subscription]:
        """The subscriptions the event's topic matches; if none, those matching the further keys
        the broker routed the message by (CC: Taskcluster's task routes, a queue bound by
        ``route.index.#`` whose messages' topic is their primary key)."""
        found = self.app.handlers_for(event.topic)
        if found or not message.cc:
            return found
        by_cc: list[Subscription] = []
        for key in message.cc:
            by_cc += [sub for sub in self.app.handlers_for(key) if sub not in by_cc]
        return by_cc

    def _broker_wait(self, delay: float) -> float:
        """How long a retry asked to wait ``delay`` s really waits on this transport (a broker
        with fixed retry queues takes the nearest; others wait exactly)."""
        wait = getattr(self.transport, "retry_wait", None)
        return float(wait(delay)) if wait is not None else delay

    def _bound_on_purpose(self, message: WireMessage) -> bool:
        """Whether a binding of the app's settings (one with no handler) brought the message."""
        return any(self._bound_only.match(key) for key in (message.routing_key, *message.cc))

    def _tell_unhandled(self, topic: str, routing_key: str) -> None:
        """Warn once per topic that a message no handler takes is acked without a call.

        Another member of the queue bound it (a rolling deploy that adds a subscription: what the
        old members are given, they ack unhandled), or an earlier version of this one did, or a
        subscription's pattern matched the routing key but not the topic the format read.
        """
        if topic in self._told_unhandled:
            return
        if len(self._told_unhandled) >= UNHANDLED_TOLD_LIMIT:
            self._told_unhandled.clear()
        self._told_unhandled.add(topic)
        log.warning(
            "%s: no handler takes %r (routing key %r): acked without a call — another member's binding "
            "or an earlier version's brought it to queue %s, or the format reads another topic "
            "than the routing key says (see 'A queue's bindings' in docs/guide.md)",
            self.app.name,
            topic,
            routing_key,
            self.app.settings.queue,
        )

    async def _settle(
        self, delivery: Delivery, event: Event, attempt: int, outcome: BaseException | None
    ) -> None:
        counters, settings = self.app.counters, self.app.settings
        if outcome is None or isinstance(outcome, Drop):
            if self.inbox is not None:
                await self.inbox.amark(self.app.name, event.id)
            await delivery.ack()
            if outcome is None and not self.handlers_of(event, delivery.message):
                counters.unhandled += 1  # not "handled": no handler saw it (see _tell_unhandled)
            elif outcome is None:
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
            reason = redact(f"rejected by handler: {outcome}")
            log.warning("%s: event %s dead-lettered: %s", self.app.name, event.id, reason)
            await delivery.reject(reason, attempts=attempt)
            return
        if attempt >= settings.max_attempts:
            counters.rejected += 1
            log.error(
                "%s: event %s failed %d times, dead-lettering: %r", self.app.name, event.id, attempt, outcome
            )
            # (the broker keeps what a dead letter says, for anyone who reads the queue: no secrets)
            last = redact(f"failed {attempt} times; last error: {outcome!r}")
            await delivery.reject(last[:1000], attempts=attempt)
            return
        delay = (
            outcome.delay
            if isinstance(outcome, Retry) and outcome.delay is not None
            else self.app.retry_delay(attempt)
        )
        counters.retried += 1
        waits = self._broker_wait(delay)
        log.info(
            "%s: event %s attempt %d failed (%r), retrying in %.1fs%s",
            self.app.name,
            event.id,
            attempt,
            outcome,
            waits,
            "" if waits == delay else f" (asked {delay:g}s: the nearest of the broker's retry queues)",
        )
        await delivery.retry(delay, redact(repr(outcome))[:1000], attempts=attempt)


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


async def _hand_back(delivery: Delivery) -> None:
    """Release a message that failed before its handlers ran, unless its settle went through
    after all (a transport that handed it back itself): left unsettled, it would keep its
    prefetch place, on Kafka its partition's commits, until the connection ends."""
    if getattr(delivery, "settled", False):
        return
    try:
        await delivery.release()
    except TidingsError as exc:  # the connection is gone: the broker gives it out again anyway
        log.warning("could not hand message %s back (%s)", delivery.message.message_id, exc)


def _check_finished(handler: Any, returned: Any) -> None:
    """A handler that returned work instead of doing it (a coroutine it forgot to await, a
    generator) did nothing: its failure, not an ack."""
    if returned is None:  # what almost every handler returns
        return
    if inspect.iscoroutine(returned):  # (a Task or Future returned on purpose runs anyway)
        kind = "a coroutine"
    elif inspect.isgenerator(returned) or inspect.isasyncgen(returned):
        kind = "a generator"
    else:
        return
    if inspect.iscoroutine(returned) or inspect.isgenerator(returned):
        returned.close()  # (no "never awaited" warning beside our error)
    name = getattr(handler, "__qualname__", type(handler).__name__)
    raise TypeError(
        f"handler {name} returned {kind} instead of running it: await it, or make the handler "
        "async def (a sync decorator around an async handler must be async too)"
    )


class _Raised(Exception):
    """Carries a BaseException a sync handler raised out of its thread: asyncio hands a
    future's exception to the awaiting task with ``throw()``, and a GeneratorExit thrown
    into a coroutine closes it instead of reaching its ``except``."""

    def __init__(self, raised: BaseException) -> None:
        super().__init__(repr(raised))
        self.raised = raised


def _call_sync(handler: Any, args: tuple[Any, ...]) -> Any:
    try:
        return handler(*args)
    except Exception:
        raise
    except BaseException as exc:
        raise _Raised(exc) from None
