"""Delivers outbox events to every connector, each on its own.

Per connector: a cursor over the outbox, order kept, a backlog of events the
connector refused (retried on a schedule with jitter), dead letters after the
attempt limit. A connector whose broker is unreachable pauses with capped
exponential backoff and its cursor stays where it was: nothing is skipped, and
the other connectors go on. An event is finished for a connector once it was
delivered or dead-lettered there; a delivered event is never sent to that
connector again because another connector failed.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import random
import time
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from tidings.activity import Activity, BacklogNotices, events_log
from tidings.connector import Connector
from tidings.errors import DispatcherBusy, StorageError, TidingsError, TransportError
from tidings.filters import FilterTimeout
from tidings.outbox import Outbox, Row, Settlement
from tidings.retry import backoff
from tidings.transport import ExchangeSpec, Outcome, SendResult, Topology

log = logging.getLogger(__name__)
T = TypeVar("T")

#: how long an idle connector waits before looking for events from other processes
IDLE_POLL = 0.02
#: most just-committed events kept in memory per connector (and most bytes of them); beyond,
#: they are read back instead
FRESH_LIMIT, FRESH_BYTES = 20_000, 64 * 1024 * 1024
#: a batch ends at batch_size events or once it holds this many bytes of stored events (always one
#: at least): with in_flight batches on the wire, what a connector holds is bounded in bytes
BATCH_BYTES = 8 * 1024 * 1024
#: reconnect backoff of a connector that cannot reach its broker: base * 2^n, capped
DOWN_BASE, DOWN_CAP = 0.5, 30.0
PURGE_EVERY = 60.0
#: seconds between a connector's activity lines (when it did something)
REPORT_EVERY = 1.0
#: how often a connector holding unroutable events asks its broker whether a queue was bound since
ROUTES_POLL = 0.5
#: most entries a connector remembers having tried early (see ConnectorWorker._early)
EARLY_LIMIT = 1_000_000


class Dispatcher:
    """Runs one worker per enabled connector over one outbox."""

    def __init__(
        self,
        outbox: Outbox,
        connectors: Sequence[Connector],
        *,
        retention: float = 7 * 86400.0,
        clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
        wake_source: Outbox | None = None,
        holders: Sequence[str] | None = None,
    ) -> None:
        self.outbox = outbox
        # publishers in this process append through wake_source (the bus's outbox); the
        # dispatcher reads and settles through its own connection, off the event loop, so a
        # publisher's fsync never stalls delivery
        self.wake_source = wake_source or outbox
        self._io = ThreadPoolExecutor(1, thread_name_prefix="tidings-dispatch-io")
        self.connectors = [c for c in connectors if c.config.enabled]
        self.retention = retention
        #: the connectors whose cursors hold the purge: every configured one, even when this
        #: dispatcher serves only some (``--connector``, ``tidings archive``), so that no event
        #: is purged before each of them took it
        self.holders = list(holders) if holders is not None else [c.name for c in self.connectors]
        self.clock, self.rng = clock, rng
        self.workers = [ConnectorWorker(self, c) for c in self.connectors]
        self._lock_fd: int | None = None

    # -- one dispatcher per outbox ------------------------------------------------------

    def acquire(self) -> None:
        """Take the outbox's dispatcher lock; two dispatchers would send everything twice.
        (Taking it again is nothing: a caller may take it before :meth:`run`, which takes it.)"""
        if self._lock_fd is not None:
            return
        path = Path(f"{self.outbox.path}.dispatch.lock")
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:  # a folder in its place, a read-only home
            raise StorageError(f"cannot open the dispatcher's lock {path}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise DispatcherBusy(
                f"another dispatcher (pid {holder}) is already delivering from {self.outbox.path}"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd

    def release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing drops the flock
            self._lock_fd = None

    # -- running -------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until ``stop`` is set; in-flight batches finish first. A dispatcher runs once."""
        self.acquire()
        loop = asyncio.get_running_loop()
        wake = lambda rows: loop.call_soon_threadsafe(self._wake_all, rows)  # noqa: E731 - publisher threads
        self.wake_source.add_listener(wake)
        # publishers in other processes ring the outbox's doorbell: read what they committed, now
        self.outbox.doorbell.listen(lambda: self._wake_all([]), others_only=True)
        tasks = [asyncio.create_task(w.run(stop), name=f"connector-{w.connector.name}") for w in self.workers]
        tasks.append(asyncio.create_task(self._purge_loop(stop), name="purge"))
        tasks += [asyncio.create_task(w.activity.report_every(REPORT_EVERY, stop)) for w in self.workers]
        try:
            await asyncio.gather(*tasks)
        finally:
            # gather gives up at the first failure or cancel; the other workers must not outlive us
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks)
            self.wake_source.remove_listener(wake)
            self.outbox.doorbell.close()
            await self.close_transports()
            self.release()
            self._io.shutdown(wait=True)  # its thread must not outlive the run (it is idle by now)

    async def close_transports(self) -> None:
        """Close every connector's transport once (connectors on one transport share it)."""
        closing = {id(c.transport): c.transport for c in self.connectors}
        for transport in closing.values():
            try:
                await transport.close()
            except Exception as exc:  # closing is best effort: a broker gone away must not hide the stop
                log.warning("closing transport %s failed: %s", transport.kind, exc)
        for worker in self.workers:
            worker.connected = False

    def _wake_all(self, committed: list[Row]) -> None:
        for worker in self.workers:
            worker.offer(committed)
            worker.wake.set()

    async def io(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run an outbox call on the dispatcher's own I/O thread."""
        return await asyncio.get_running_loop().run_in_executor(self._io, lambda: fn(*args, **kwargs))

    async def _purge_loop(self, stop: asyncio.Event) -> None:
        while not await _stopped_within(stop, PURGE_EVERY):
            await self.io(self.purge)

    def purge(self) -> int:
        for name in self.holders:  # one that never ran holds everything: it starts from the oldest
            self.outbox.ensure_connector(name)
        return self.outbox.purge(self.holders, self.clock() - self.retention)

    async def deliver_due(self, timeout: float = 3600.0) -> None:
        """Once: take the outbox's lock, deliver what is due, let go (``--once`` of the commands)."""
        self.acquire()
        try:
            await self.drain(timeout=timeout)
        finally:
            self.release()
            await self.close_transports()

    async def drain(self, timeout: float = 30.0) -> None:
        """Step every connector until none has anything due (tests, one-shot CLI runs).

        A connector whose broker is away does not keep the others from delivering: they drain,
        then its error is raised (its events wait for the next run)."""
        deadline = time.monotonic() + timeout
        failures: list[TransportError] = []
        busy = []
        for worker in self.workers:
            try:
                await worker.ensure_connected()
                busy.append(worker)
            except TransportError as exc:
                failures.append(exc)
        while busy:
            stepping, busy = busy, []
            for worker in stepping:
                try:
                    if await worker.step():
                        busy.append(worker)
                except TransportError as exc:
                    failures.append(exc)
            if busy and time.monotonic() > deadline:
                raise TimeoutError("dispatcher did not drain in time")
        if failures:
            raise failures[0]


class ConnectorWorker:
    """Delivers one connector's events.

    :meth:`run` keeps up to ``in_flight`` batches on the wire: the next batch is
    sent while the broker still confirms the last, so a confirm round trip never
    idles the connection. Batches are settled strictly in order, and the cursor
    only moves past a batch once it and every batch before it are settled; a
    failure sends everything after the cursor again (duplicates, never loss).
    :meth:`step` sends and settles one batch at a time (tests, ``drain``).
    """

    def __init__(self, dispatcher: Dispatcher, connector: Connector) -> None:
        self.dispatcher = dispatcher
        self.connector = connector
        self.outbox = dispatcher.outbox
        self.cursor = self.outbox.ensure_connector(connector.name)
        self.wake = asyncio.Event()
        self.connected = False
        self.next_due: float | None = None
        #: an ordered connector's backlog holds an entry its new events wait behind
        self.holding = False
        #: batches sent and not yet settled, oldest first; each settles after its predecessor
        self._in_flight: deque[asyncio.Task[None]] = deque()
        #: the last seq handed to a batch in flight (the cursor when none is)
        self._sent_upto = self.cursor
        #: events this process just committed, handed over by the outbox: sent without reading
        #: them back, as long as they follow on from ``_sent_upto`` and the backlog is empty
        self._fresh: deque[Row] = deque()
        self._fresh_bytes = 0
        #: when the last look at the outbox found no backlog and nothing more to read (monotonic
        #: seconds); for IDLE_POLL after it, only handed-over events can be new (other processes'
        #: are found by the next look, as they always were), so no look is needed
        self._caught_up_at: float | None = None
        stats = connector.stats
        self.activity = Activity(
            f"connector {connector.name}",
            lambda: {"delivered": stats.delivered, "to backlog": stats.retried, "dead": stats.dead},
            latency_label="batches confirmed in",
        )
        config = connector.config
        self.notices = BacklogNotices(connector.name, exchange=config.exchange, ordered=config.ordered)
        #: the broker's routing version when an event was last found unroutable (None: none was)
        self._unroutable_at: int | None = None
        self._routes_checked = 0.0
        #: unroutable entries made due before their time by a change of the broker's bindings: a
        #: refusal of such a try spends no attempt (a binding for some other topic must not
        #: bring every waiting event nearer its dead letters)
        self._early: set[int] = set()

    async def run(self, stop: asyncio.Event) -> None:
        failures = 0
        try:
            while not stop.is_set():
                self.wake.clear()  # before looking: a publish during the step wakes the next idle
                try:
                    await self.ensure_connected()
                    worked = await self._pipeline_step()
                    failures = 0
                    self._back_up()
                except TransportError as exc:
                    failures += 1
                    await self._abandon_in_flight()
                    await self._pause(exc, failures, stop)
                    continue
                if not worked:
                    await self._retry_when_routed()
                    await self._idle(stop)
            await self._settle_all()  # in-flight batches finish before a clean stop
        finally:
            await self._abandon_in_flight(cancel=True)  # only left after an error or a cancel

    async def ensure_connected(self) -> None:
        if self.connected:
            return
        transport = self.connector.transport
        await transport.connect()
        config = self.connector.config
        await transport.declare(Topology([ExchangeSpec(config.exchange, passive=config.passive_exchange)]))
        open_sender = getattr(
            transport, "open_sender", None
        )  # a ZeroMQ PUB binds here, not at the first send
        if open_sender is not None:
            await open_sender()
        if getattr(transport, "routed_with", None) is not None:
            # bindings may have changed while no dispatcher looked (``dispatch --once`` after a
            # consumer started): what waited for a queue is tried now, at no cost of an attempt
            self._early.update(
                await self.dispatcher.io(self.outbox.retry_unroutable_now, self.connector.name)
            )
        self.connected = True

    def _back_up(self) -> None:
        stats = self.connector.stats
        if stats.down_since is not None:
            down = self.dispatcher.clock() - stats.down_since
            log.warning("connector %s is back after %.1fs; delivering what waited", self.connector.name, down)
            stats.down_since = None

    async def _pause(self, exc: TransportError, failures: int, stop: asyncio.Event) -> None:
        stats = self.connector.stats
        if stats.down_since is None:
            stats.down_since = self.dispatcher.clock()
            log.warning(
                "connector %s is down: %s; events wait in the outbox, retrying with backoff",
                self.connector.name,
                exc,
            )
        stats.last_error = str(exc)
        self.connected = False
        delay = backoff(failures, DOWN_BASE, DOWN_CAP, self.dispatcher.rng)
        await _stopped_within(stop, delay)

    async def _idle(self, stop: asyncio.Event) -> None:
        wait = IDLE_POLL
        if self.next_due is not None:
            wait = max(0.0, min(wait, self.next_due - self.dispatcher.clock()))
        waiters = [asyncio.ensure_future(self.wake.wait()), asyncio.ensure_future(stop.wait())]
        await asyncio.wait(waiters, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
        for waiter in waiters:
            waiter.cancel()

    async def step(self) -> bool:
        """Send one batch and settle it (from the backlog if one is due); False if idle."""
        due, new = await self.dispatcher.io(self._look, self.cursor, True)
        rows = due or new
        if not rows:
            return False
        settlements = await self._send(rows, from_backlog=bool(due))
        await self._settle(rows, settlements, from_backlog=bool(due))
        return True

    async def _pipeline_step(self) -> bool:
        """Like :meth:`step`, but new batches go out while earlier ones await confirms."""
        config = self.connector.config
        window_open = len(self._in_flight) < config.in_flight
        # caught up with the outbox a moment ago: what is new was handed over by the commit itself,
        # so no read (an I/O thread round trip) is needed; any doubt clears _caught_up_at
        new = self._take_fresh(config.batch_size) if window_open and self._caught_up() else []
        due: list[Row] = []
        if not new and not (window_open and self._caught_up()):
            due, new = await self.dispatcher.io(self._look, self._sent_upto, window_open)
        if due:
            await self._settle(due, await self._send(due, from_backlog=True), from_backlog=True)
            return True
        if new:
            previous = self._in_flight[-1] if self._in_flight else None
            self._in_flight.append(asyncio.create_task(self._deliver_in_turn(previous, new)))
            self._sent_upto = new[-1].seq
            return True
        if not self._in_flight:
            return False
        may_send = not self.holding
        if may_send and window_open:
            # nothing new yet: settle the oldest batch when it is confirmed, unless a publish comes first
            await self._first_of(self._in_flight[0], self.wake.wait())
        if self._in_flight[0].done() or not window_open or not may_send:
            await self._settle_oldest()
        return True

    def _look(self, after: int, want_new: bool) -> tuple[list[Row], list[Row]]:
        """In the I/O thread, in one go: (due backlog rows, new rows after ``after``).

        Sets :attr:`next_due` when the backlog waits; an ordered connector whose backlog holds
        its order gets no new rows, so new events queue behind it.
        """
        name, config = self.connector.name, self.connector.config
        started = time.monotonic()
        self._caught_up_at = None
        now = self.dispatcher.clock()
        self.next_due, self.holding = self.outbox.backlog_next_at(name, ordered=config.ordered)
        if self.next_due is not None and self.next_due <= now:
            due = self.outbox.backlog_due(
                name, now, config.batch_size, ordered=config.ordered, max_bytes=BATCH_BYTES
            )
            if due:
                self.next_due = None
                return due, []
        if self.holding:
            return [], []
        if not want_new:
            return [], []
        new = self.outbox.read_after(after, config.batch_size, max_bytes=BATCH_BYTES)
        if len(new) < config.batch_size and sum(len(row.data) for row in new) < BATCH_BYTES:
            self._caught_up_at = started  # (a batch cut by bytes is not the end)
        return [], new

    # -- events handed over by this process's outbox ---------------------------------------------

    def offer(self, committed: list[Row]) -> None:
        """Keep just-committed events to send without reading them back (called on the loop)."""
        if not committed:
            self._caught_up_at = None  # the outbox could not tell which rows they were: read them
            return
        if self._fresh and committed[0].seq != self._fresh[-1].seq + 1:
            self._forget_fresh()  # a gap: another process committed in between; read from the outbox
        self._fresh.extend(committed)
        self._fresh_bytes += sum(len(row.data) for row in committed)
        if len(self._fresh) > FRESH_LIMIT or self._fresh_bytes > FRESH_BYTES:
            self._forget_fresh()  # far behind (a slow or paused connector): reading is as good

    def _forget_fresh(self) -> None:
        self._fresh.clear()
        self._fresh_bytes = 0
        self._caught_up_at = None

    def _take_fresh(self, limit: int) -> list[Row]:
        """Up to ``limit`` handed-over events (and BATCH_BYTES of them) that follow ``_sent_upto``
        with no gap; else []."""
        fresh = self._fresh
        while fresh and fresh[0].seq <= self._sent_upto:
            self._fresh_bytes -= len(fresh.popleft().data)  # already read from the outbox and sent
        if not fresh:
            return []
        if fresh[0].seq != self._sent_upto + 1:
            self._caught_up_at = None  # something between: read it from the outbox first
            return []
        taken: list[Row] = []
        size = 0
        while fresh and len(taken) < limit and (not taken or size < BATCH_BYTES):
            taken.append(fresh.popleft())
            size += len(taken[-1].data)
        self._fresh_bytes -= size
        return taken

    def _caught_up(self) -> bool:
        at = self._caught_up_at
        return at is not None and time.monotonic() - at < IDLE_POLL

    @staticmethod
    async def _first_of(task: asyncio.Task[None], wakeup: Coroutine[Any, Any, Any]) -> None:
        waiter = asyncio.ensure_future(wakeup)
        try:
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()

    async def _deliver_in_turn(self, previous: asyncio.Task[None] | None, rows: list[Row]) -> None:
        started = time.monotonic()
        try:
            settlements = await self._send(rows, from_backlog=False)
        finally:
            if previous is not None:
                await asyncio.wait({previous})  # settle after it, whatever became of our send
        if previous is not None and (previous.cancelled() or previous.exception() is not None):
            raise TransportError("an earlier batch failed; this one is sent again from the cursor")
        await self._settle(rows, settlements, from_backlog=False)
        self.activity.note(time.monotonic() - started)

    async def _settle_oldest(self) -> None:
        oldest = self._in_flight[0]
        try:
            await asyncio.shield(oldest)  # a cancel of ours must not cancel it half settled
        except TidingsError:
            await self._abandon_in_flight()
            raise
        self._in_flight.popleft()

    async def _settle_all(self) -> None:
        try:
            while self._in_flight:
                await self._settle_oldest()
        except TidingsError as exc:
            log.warning("connector %s: unconfirmed batches will be sent again: %s", self.connector.name, exc)

    async def _abandon_in_flight(self, *, cancel: bool = False) -> None:
        """Forget every unsettled batch; what they carried is read again from the cursor."""
        tasks = list(self._in_flight)
        self._in_flight.clear()
        self._sent_upto = self.cursor
        self._caught_up_at = None
        for task in tasks if cancel else ():
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _send(self, rows: list[Row], *, from_backlog: bool) -> list[Settlement]:
        """Encode and send ``rows``; the settlements to record (nothing recorded yet)."""
        connector = self.connector
        settlements: list[Settlement] = []
        sending: list[Row] = []
        messages = []
        for row in rows:
            if not from_backlog and not connector.wants(row.topic):
                continue  # the cheap test first: rows are decoded only if the topic is wanted
            try:
                event = row.event()
                # in the backlog means it was taken once: a filter is not asked again
                if not from_backlog and connector.accepts is not None and not connector.accepts(event):
                    continue
                messages.append(connector.format.encode(event))
            except FilterTimeout as exc:  # it would take as long every time
                settlements.append(self._dead(row, str(exc)))
                continue
            except TidingsError as exc:  # this connector can never carry it
                settlements.append(self._dead(row, f"cannot encode for {connector.format.name}: {exc}"))
                continue
            sending.append(row)
        if messages:
            results = await connector.transport.send(connector.config.exchange, messages)
            self._note_routing(results)
            if len(results) != len(messages):
                raise TransportError(
                    f"transport {connector.transport.kind} answered {len(results)} results "
                    f"for {len(messages)} messages"
                )
            settlements.extend(
                self._settlement(row, result) for row, result in zip(sending, results, strict=True)
            )
        return settlements

    async def _settle(self, rows: list[Row], settlements: list[Settlement], *, from_backlog: bool) -> None:
        if any(s.state == "retry" for s in settlements):
            self._caught_up_at = None  # the backlog is not empty any more: look before sending more
        new_cursor = None if from_backlog else rows[-1].seq
        await self.dispatcher.io(
            self.outbox.settle,
            self.connector.name,
            settlements,
            new_cursor=new_cursor,
            from_backlog=from_backlog,
        )
        if new_cursor is not None:
            self.cursor = new_cursor
        self._tell(rows, settlements)

    def _tell(self, rows: list[Row], settlements: list[Settlement]) -> None:
        """Warn about what went to the backlog (once per topic); a line per event with --verbose."""
        topics = {row.seq: row.topic for row in rows}
        now = self.dispatcher.clock()
        verbose = events_log.isEnabledFor(logging.INFO)
        for settled in settlements:
            topic = topics[settled.seq]
            if settled.state == "retry":
                self.notices.kept(topic, settled.reason, settled.next_at - now)
            elif settled.state == "delivered":
                self.notices.delivered(topic)
            if verbose:
                events_log.info(
                    "connector %s: seq %d %s %s%s",
                    self.connector.name,
                    settled.seq,
                    topic,
                    settled.state,
                    f" ({settled.reason})" if settled.reason else "",
                )

    # -- unroutable events on a broker that says when a queue is bound (the embedded one) ---------

    def _note_routing(self, results: list[SendResult]) -> None:
        version = getattr(self.connector.transport, "routed_with", None)
        if version is None or self._unroutable_at is not None:
            return
        if any(r.outcome is Outcome.RETRY and r.reason.startswith("unroutable") for r in results):
            self._unroutable_at = version

    async def _retry_when_routed(self) -> None:
        """Make the backlog due at once when the broker's bindings changed since an unroutable send.

        The embedded broker knows when a consumer binds a queue: the event that waited for one
        goes out then, not at the retry schedule's next step (which may be minutes away).
        """
        if self._unroutable_at is None or time.monotonic() - self._routes_checked < ROUTES_POLL:
            return
        self._routes_checked = time.monotonic()
        version: int = await self.connector.transport.routes_version()  # type: ignore[attr-defined]
        if version != self._unroutable_at:
            self._unroutable_at = None
            early = await self.dispatcher.io(self.outbox.retry_unroutable_now, self.connector.name)
            if len(self._early) > EARLY_LIMIT:
                self._early.clear()  # forgetting some costs them an attempt each, nothing more
            self._early.update(early)
            self.next_due = self.dispatcher.clock()

    def _settlement(self, row: Row, result: SendResult) -> Settlement:
        stats = self.connector.stats
        early = row.seq in self._early
        self._early.discard(row.seq)
        if result.outcome is Outcome.DELIVERED:
            stats.delivered += 1
            return Settlement(row.seq, "delivered")
        if result.outcome is Outcome.REFUSED:
            return self._dead(row, result.reason or "refused")
        # tried early because a binding changed, and still unroutable: no attempt of its schedule spent
        attempts = row.attempts if early and result.reason.startswith("unroutable") else row.attempts + 1
        if attempts >= self.connector.config.max_attempts:
            return self._dead(row, f"gave up after {attempts} attempts: {result.reason}", attempts)
        stats.retried += 1
        stats.last_error = result.reason
        next_at = self.dispatcher.clock() + self.connector.retry_delay(attempts, self.dispatcher.rng)
        return Settlement(row.seq, "retry", attempts, next_at, result.reason)

    def _dead(self, row: Row, reason: str, attempts: int | None = None) -> Settlement:
        self.connector.stats.dead += 1
        log.error("connector %s: event seq %d dead-lettered: %s", self.connector.name, row.seq, reason)
        return Settlement(
            row.seq, "dead", attempts if attempts is not None else row.attempts + 1, reason=reason
        )


async def _stopped_within(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep up to ``seconds``; True as soon as ``stop`` is set."""
    waiter = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({waiter}, timeout=seconds)  # not wait_for: see EmbeddedTransport._nap
    finally:
        waiter.cancel()
    return stop.is_set()
