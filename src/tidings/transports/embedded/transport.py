"""The embedded broker: durable queues in one SQLite file that processes share.

Semantics follow a RabbitMQ topic exchange so that code moves between the two
unchanged: a message goes to every queue with a matching binding, exactly once
per queue (however many of its bindings or CC keys match); a message no queue
takes is reported back as RETRY (like an AMQP ``mandatory`` return).

Consumers take messages with a lease (a visibility timeout): a leased message
is invisible until it is acked, retried or rejected, or until the lease runs
out because its consumer died — then it comes back, marked ``redelivered``.
The count of tries (retries settled) and of leases live in the row, so they
survive every crash; a death is counted by the consumer runtime's journal.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
import weakref
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from tidings.batching import AsyncBatcher
from tidings.errors import TransportError
from tidings.event import dumps, format_time, loads, parse_time
from tidings.sqlite import LogSync, WriterLock, connect, explain, rollback
from tidings.topics import TopicMatcher
from tidings.transport import (
    ATTEMPTS_HEADER,
    DELIVERED,
    QUEUE_HEADER,
    REASON_HEADER,
    Findings,
    Outcome,
    QueueSpec,
    SendResult,
    Topology,
    WireMessage,
)
from tidings.transports.embedded import store

log = logging.getLogger(__name__)

#: Transports open on each broker file in this process, so a send wakes local consumers at
#: once instead of at their next poll. Only a wake-up shortcut: correctness never depends on it.
_NEIGHBOURS: dict[str, weakref.WeakSet[EmbeddedTransport]] = {}

_META_FIELDS = (
    "routing_key",
    "headers",
    "message_id",
    "content_type",
    "content_encoding",
    "priority",
    "exchange",
    "cc",
    "properties",
)


_META_DEFAULTS: dict[str, Any] = {
    f.name: f.default_factory() if f.default_factory is not MISSING else f.default
    for f in fields(WireMessage)
    if f.name in _META_FIELDS
}


def _encode_meta(message: WireMessage, exchange: str) -> bytes:
    # only what differs from WireMessage's defaults: less JSON to write, read and store
    meta = {name: value for name in _META_FIELDS if (value := getattr(message, name)) != _META_DEFAULTS[name]}
    meta["exchange"] = exchange
    if message.timestamp is not None:
        meta["timestamp"] = format_time(message.timestamp)
    return dumps(meta)


def _decode_meta(meta: bytes, body: bytes) -> WireMessage:
    stored = loads(meta)
    stamp = stored.pop("timestamp", None)
    return WireMessage(body=body, timestamp=parse_time(stamp) if stamp else None, **stored)


@dataclass(slots=True)
class EmbeddedDelivery:
    """A leased message; settling it is batched with its neighbours into one commit."""

    message: WireMessage
    attempt: int
    redelivered: bool
    row_id: int
    queue: str
    _settle: Callable[[str, EmbeddedDelivery, float, str, int], Any] = field(repr=False)
    settled: bool = False

    async def ack(self) -> None:
        await self._settle("ack", self, 0.0, "", self.attempt)

    async def retry(self, delay: float, reason: str = "", *, attempts: int | None = None) -> None:
        await self._settle("retry", self, delay, reason, self.attempt if attempts is None else attempts)

    async def reject(self, reason: str, *, attempts: int | None = None) -> None:
        await self._settle("reject", self, 0.0, reason, self.attempt if attempts is None else attempts)

    async def release(self) -> None:
        await self._settle("release", self, 0.0, "", self.attempt)


#: (action, delivery, delay, reason, attempts made): one settle waiting for its commit
Settle = tuple[str, EmbeddedDelivery, float, str, int]


class EmbeddedTransport:
    """Transport ``embedded``: options ``path`` (the broker file), ``lease`` (seconds), ``poll`` (seconds)."""

    kind = "embedded"
    acknowledged = True

    def __init__(self, path: str = ".tidings/broker.db", lease: float = 30.0, poll: float = 0.01) -> None:
        self.path = Path(path)
        self.lease = float(lease)
        self.poll = float(poll)
        self._db: sqlite3.Connection | None = None
        # one thread owns the connection: the event loop never waits on an fsync
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="tidings-embedded")
        self._routes: dict[str, TopicMatcher[str]] = {}
        self._routes_version = -1
        self._token = f"{os.getpid()}-{id(self):x}"
        self._wake = asyncio.Event()
        # a pipelined dispatcher keeps several sends in flight, and handlers finish together:
        # what queues behind one commit goes in the next, one commit (and fsync) for all
        self._sends: AsyncBatcher[tuple[str, Sequence[WireMessage]], list[SendResult]] = AsyncBatcher(
            self._run, self._write_sends, self._nudge_neighbours
        )
        # handlers that finish in the same turn of the loop settle in the same commit
        self._settles: AsyncBatcher[Settle, None] = AsyncBatcher(
            self._run, self._write_settles, self._wake.set, gather_turns=2
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._writer: WriterLock | None = None
        self._log: LogSync | None = None

    # -- plumbing ---------------------------------------------------------------------

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._db is None:
            raise TransportError(f"embedded broker {self.path.name} is not connected")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        except sqlite3.Error as exc:
            raise TransportError(f"embedded broker {self.path.name}: {explain(exc)}") from None

    def _write(self, work: Callable[[sqlite3.Connection], Any], *, durable: bool = True) -> Any:
        """Run ``work`` in one write transaction; with ``durable``, return once it is on disk.

        ``durable=False`` (leases, acks, retries, dead-lettering) skips the fsync of
        this commit: such a commit survives any process crash, and on a power loss it
        can only roll back to an earlier state — a message delivered again, never one
        lost. The next durable commit (a send) fsyncs it along with its own.
        """
        db = self._db
        assert db is not None and self._writer is not None and self._log is not None
        with self._writer:
            db.execute("BEGIN IMMEDIATE")
            try:
                result = work(db)
                db.execute("COMMIT")
            except BaseException:
                rollback(db)  # never in place of the error that got us here (a full disk)
                raise
        if durable:  # outside the writer lock: other processes commit while the log syncs
            try:
                self._log.sync()
            except OSError as exc:
                problem = f"the disk did not confirm a write: {exc}"
                raise TransportError(f"embedded broker {self.path.name}: {problem}") from None
        return result

    async def connect(self) -> None:
        self._loop = asyncio.get_running_loop()
        _NEIGHBOURS.setdefault(str(self.path.resolve()), weakref.WeakSet()).add(self)
        if self._db is None:
            try:
                self._db = await asyncio.get_running_loop().run_in_executor(self._executor, self._open)
                self._writer = WriterLock(self.path)
                self._log = LogSync(self.path)
            except Exception as exc:
                raise TransportError(str(exc)) from None

    def _open(self) -> sqlite3.Connection:
        db = connect(self.path, sync_commits=False)
        try:
            store.create(db)
        except sqlite3.Error as exc:
            db.close()
            raise TransportError(f"embedded broker {self.path.name}: {explain(exc)}") from None
        return db

    async def close(self) -> None:
        _NEIGHBOURS.get(str(self.path.resolve()), weakref.WeakSet()).discard(self)
        await self._sends.idle()
        await self._settles.idle()
        if self._db is not None:
            db, self._db = self._db, None
            await asyncio.get_running_loop().run_in_executor(self._executor, db.close)
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._log is not None:
            self._log.close()
            self._log = None
        self._executor.shutdown(wait=False)

    # -- topology ---------------------------------------------------------------------

    async def declare(self, topology: Topology) -> None:
        def work(db: sqlite3.Connection) -> None:
            for exchange in topology.exchanges:
                if exchange.passive:
                    if not db.execute("SELECT 1 FROM exchanges WHERE name = ?", (exchange.name,)).fetchone():
                        raise TransportError(f"exchange {exchange.name!r} does not exist")
                    continue
                db.execute("INSERT OR IGNORE INTO exchanges VALUES (?, ?)", (exchange.name, exchange.type))
            for queue in topology.queues:
                db.executemany(
                    "INSERT OR IGNORE INTO queues VALUES (?)", [(queue.name,), (queue.dead_letter_queue,)]
                )
                db.executemany(
                    "INSERT OR IGNORE INTO bindings VALUES (?, ?, ?)",
                    [(queue.name, b.exchange, b.pattern) for b in queue.bindings],
                )
            db.execute("UPDATE topology SET version = version + 1")

        await self._run(self._write, work)

    def _load_routes(self, db: sqlite3.Connection) -> None:
        version = db.execute("SELECT version FROM topology").fetchone()[0]
        if version == self._routes_version:
            return
        routes: dict[str, TopicMatcher[str]] = {}
        for queue, exchange, pattern in db.execute("SELECT queue, exchange, pattern FROM bindings"):
            routes.setdefault(exchange, TopicMatcher()).add(pattern, queue)
        self._routes, self._routes_version = routes, version

    def _queues_for(self, exchange: str, message: WireMessage) -> set[str]:
        matcher = self._routes.get(exchange)
        if matcher is None:
            return set()
        queues: set[str] = set()
        for key in (message.routing_key, *message.cc):
            queues |= matcher.match(key)
        return queues

    # -- sending ----------------------------------------------------------------------

    async def send(self, exchange: str, messages: Sequence[WireMessage]) -> list[SendResult]:
        """Store ``messages``; sends that wait while another is being written share its next commit."""
        return await self._sends.submit((exchange, messages))

    def _write_sends(self, sends: list[tuple[str, Sequence[WireMessage]]]) -> list[list[SendResult]]:
        return self._write(lambda db: [self._insert(db, exchange, messages) for exchange, messages in sends])

    def _nudge_neighbours(self) -> None:
        for neighbour in list(_NEIGHBOURS.get(str(self.path.resolve()), ())):
            neighbour.nudge()

    def nudge(self) -> None:
        """Wake this transport's consumers (callable from any thread)."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._wake.set)

    def _insert(
        self, db: sqlite3.Connection, exchange: str, messages: Sequence[WireMessage]
    ) -> list[SendResult]:
        self._load_routes(db)
        routed: list[tuple[list[str], bytes, bytes]] = []
        results = []
        for message in messages:
            target = message.exchange or exchange
            queues = self._queues_for(target, message)
            if not queues:
                results.append(
                    SendResult(
                        Outcome.RETRY,
                        f"unroutable: no queue bound for {message.routing_key!r} on exchange {target!r}",
                    )
                )
                continue
            routed.append((sorted(queues), _encode_meta(message, target), message.body))
            results.append(DELIVERED)
        store.insert(db, time.time(), routed)
        return results

    # -- consuming --------------------------------------------------------------------

    async def consume(self, queue: QueueSpec, *, prefetch: int) -> AsyncIterator[EmbeddedDelivery]:
        """Lease up to ``prefetch`` messages at a time; extend leases while they are held.

        While the queue has more than a lease took, the next lease is taken as the last
        batch is being handled, so a busy consumer does not wait for the broker between
        batches; a consumer that has caught up waits for a send instead.
        """
        held: dict[int, EmbeddedDelivery] = {}
        renewer = asyncio.create_task(self._renew_leases(held))
        ahead: asyncio.Future[list[store.Leased]] | None = None
        try:
            while True:
                if ahead is None:
                    ahead, wanted = self._lease_ahead(queue.name, held, prefetch)
                    if ahead is None:  # full: wait for handlers to settle some
                        await self._nap()
                        continue
                batch = await ahead
                ahead = None
                if not batch:
                    await self._nap()
                    continue
                deliveries = [self._delivery(row, queue.name) for row in batch]
                held.update((d.row_id, d) for d in deliveries)
                if len(batch) == wanted:  # there may be more waiting: lease it meanwhile
                    ahead, wanted = self._lease_ahead(queue.name, held, prefetch)
                for delivery in deliveries:
                    yield delivery
        finally:
            renewer.cancel()
            if ahead is not None:  # a lease under way: hand back what it takes
                ahead.cancel()
                taken = (await asyncio.gather(ahead, return_exceptions=True))[0]
                if isinstance(taken, list):  # it had finished: those never reached the consumer
                    held.update((d.row_id, d) for d in (self._delivery(row, queue.name) for row in taken))
            unsettled = [d for d in held.values() if not d.settled]
            if unsettled and self._db is not None:  # hand them back at once, not at lease expiry
                await asyncio.gather(*(d.release() for d in unsettled), return_exceptions=True)

    def _lease_ahead(
        self, queue: str, held: dict[int, EmbeddedDelivery], prefetch: int
    ) -> tuple[asyncio.Future[list[store.Leased]] | None, int]:
        """Start leasing as many as there is room for (and say how many); None if too little room."""
        self._wake.clear()  # before looking: a wake-up during the lease is not lost
        for row_id in [r for r, d in held.items() if d.settled]:
            del held[row_id]
        room = prefetch - len(held)
        # refill in chunks, not one message per settle: each lease is a transaction
        if held and room < max(1, prefetch // 4):
            return None, 0
        return asyncio.ensure_future(self._lease_safely(queue, room)), room

    def _delivery(self, row: store.Leased, queue: str) -> EmbeddedDelivery:
        row_id, tries, leases, _, meta, body = row
        return EmbeddedDelivery(_decode_meta(meta, body), tries + 1, leases > 1, row_id, queue, self._settle)

    async def _nap(self) -> None:
        """Wait for a settle or a send in this process, or for ``poll`` seconds (other processes)."""
        # asyncio.wait, not wait_for: on 3.11 wait_for can swallow a cancellation that
        # races with the wake-up, and a consumer being shut down would then never stop
        waiter = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({waiter}, timeout=self.poll)
        finally:
            waiter.cancel()

    async def _lease_safely(self, queue: str, limit: int) -> list[store.Leased]:
        """Lease in the worker thread; if we are cancelled meanwhile, hand back what it took.

        The thread cannot be stopped half-way: without this, messages leased by a
        consumer that is shutting down would stay invisible until their lease ran out.
        """
        job = asyncio.ensure_future(self._run(self._lease, queue, limit))
        try:
            return await asyncio.shield(job)
        except asyncio.CancelledError:
            taken = await job
            ids = [(time.time(), row_id, self._token) for row_id, *_ in taken]
            if ids:
                await self._run(
                    lambda: self._write(lambda db: db.executemany(store.RELEASE, ids), durable=False)
                )
            raise

    def _lease(self, queue: str, limit: int) -> list[store.Leased]:
        now = time.time()
        return self._write(
            lambda db: store.lease(db, queue, self._token, now, now + self.lease, limit), durable=False
        )

    async def _renew_leases(self, held: dict[int, EmbeddedDelivery]) -> None:
        while True:
            await asyncio.sleep(self.lease / 3)
            ids = [
                (time.time() + self.lease, row_id, self._token) for row_id, d in held.items() if not d.settled
            ]
            if not ids:
                continue
            try:
                await self._run(
                    lambda ids=ids: self._write(lambda db: db.executemany(store.RENEW, ids), durable=False)
                )
            except TransportError:
                return  # closed under us: the leases run out and the messages come back

    # -- settling (batched: many acks, one commit) -------------------------------------

    async def _settle(
        self, action: str, delivery: EmbeddedDelivery, delay: float, reason: str, attempts: int
    ) -> None:
        if delivery.settled:
            raise TransportError(f"message {delivery.message.message_id} was already settled")
        delivery.settled = True
        await self._settles.submit((action, delivery, delay, reason, attempts))

    def _write_settles(self, batch: list[Settle]) -> list[None]:
        self._write(lambda db: self._apply(db, batch), durable=False)
        return [None] * len(batch)

    def _apply(self, db: sqlite3.Connection, batch: list[Settle]) -> None:
        now = time.time()
        store.remove(db, [d.row_id for action, d, *_ in batch if action == "ack"], self._token)
        for action, delivery, delay, reason, attempts in batch:
            if action == "release":
                db.execute(store.RELEASE, (now, delivery.row_id, self._token))
            elif action == "retry":
                # to the back of the queue, after the delay, with the tries made so far
                store.requeue(db, delivery.row_id, self._token, now + max(delay, 0.0), attempts)
            elif action == "reject":
                self._dead_letter(db, delivery, reason, attempts, now)

    def _dead_letter(
        self, db: sqlite3.Connection, delivery: EmbeddedDelivery, reason: str, attempts: int, now: float
    ) -> None:
        message = delivery.message
        message.headers = {
            **message.headers,
            REASON_HEADER: reason[:1000],
            ATTEMPTS_HEADER: attempts,
            QUEUE_HEADER: delivery.queue,
        }
        meta = _encode_meta(message, message.exchange or "")
        store.dead_letter(db, delivery.row_id, self._token, f"{delivery.queue}.dead", now, meta, message.body)

    # -- inspection (tests, doctor, backlog views) ---------------------------------------

    async def queue_depth(self, queue: str) -> int:
        def count() -> int:
            assert self._db is not None
            return self._db.execute("SELECT count(*) FROM messages WHERE queue = ?", (queue,)).fetchone()[0]

        return await self._run(count)

    async def queue_names(self) -> list[str]:
        def names() -> list[str]:
            assert self._db is not None
            return [name for (name,) in self._db.execute("SELECT name FROM queues ORDER BY name")]

        return await self._run(names)

    async def verify(self, topology: Topology) -> Findings:
        """Queues and bindings the topology needs, checked without creating anything."""

        def look() -> Findings:
            assert self._db is not None
            findings = Findings()
            queues = {name for (name,) in self._db.execute("SELECT name FROM queues")}
            bound = set(self._db.execute("SELECT queue, exchange, pattern FROM bindings"))
            for queue in topology.queues:
                if queue.name not in queues:
                    findings.problems.append(
                        f"queue {queue.name!r} does not exist: run `tidings consume` or `tidings serve` "
                        "to create it"
                    )
                    continue
                for b in queue.bindings:
                    if (queue.name, b.exchange, b.pattern) not in bound:
                        findings.problems.append(
                            f"queue {queue.name!r} is not bound to exchange {b.exchange!r} with "
                            f"{b.pattern!r}: run `tidings consume` or `tidings serve` to bind it"
                        )
            return findings

        return await self._run(look)
