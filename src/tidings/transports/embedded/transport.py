"""The embedded broker: durable queues in one SQLite file that processes share.

Semantics follow a RabbitMQ topic exchange so that code moves between the two
unchanged: a message goes to every queue with a matching binding, exactly once
per queue (however many of its bindings or CC keys match); a message no queue
takes is reported back as RETRY (like an AMQP ``mandatory`` return).

This module is the broker's file and its sending side; consuming (leases,
settles) is :mod:`.consume`, the tables and SQL are :mod:`.store`, and what
``tidings doctor`` checks is :mod:`.doctor`. A send that commits rings the
broker's doorbell (:mod:`tidings.doorbell`): consumers waiting in any process
look for messages at once, instead of at their next poll.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tidings.batching import AsyncBatcher
from tidings.doorbell import Doorbell
from tidings.errors import TransportError
from tidings.sqlite import LogSync, WriterLock, connect, explain, rollback
from tidings.topics import TopicMatcher
from tidings.transport import DELIVERED, Findings, Outcome, QueueSpec, SendResult, Topology, WireMessage
from tidings.transports.embedded import store
from tidings.transports.embedded.consume import Consuming, EmbeddedDelivery
from tidings.transports.embedded.doctor import verify

if TYPE_CHECKING:
    from tidings.transports.embedded.dead import EmbeddedDeadLetters

__all__ = ["EmbeddedDelivery", "EmbeddedTransport"]

#: a transaction that did not run because another writer held the file
_BUSY = object()
#: one send call (its exchange and messages), and its answer
Send = tuple[str, Sequence[WireMessage]]
Results = list[SendResult]


class EmbeddedTransport:
    """Transport ``embedded``: options ``path`` (the broker file), ``lease`` (seconds), ``poll`` (seconds)."""

    kind = "embedded"
    acknowledged = True

    def __init__(self, path: str = ".tidings/broker.db", lease: float = 30.0, poll: float = 0.01) -> None:
        self.path = Path(path)
        self.lease = float(lease)
        self.poll = float(poll)
        self._db: sqlite3.Connection | None = None
        #: the connection is used by the loop (when the file is free) or by the broker's thread
        self._db_lock = threading.Lock()
        # the thread that waits when another process holds the file: the loop never does
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="tidings-embedded")
        self._routes: dict[str, TopicMatcher[str]] = {}
        self._routes_version = -1
        #: who holds a lease: a stale settle of another process (or transport) cannot touch it
        self.token = f"{os.getpid()}-{id(self):x}"
        #: rung after every send: consumers of this file, in any process, look at once
        self.doorbell = Doorbell(self.path)
        # a pipelined dispatcher keeps several sends in flight: what queues behind one commit
        # goes in the next, one commit (and fsync) for all
        self._sends: AsyncBatcher[Send, Results] = AsyncBatcher(
            self._commit_sends, self._insert_sends, self.doorbell.ring
        )
        self._consuming = Consuming(self)
        self._writer: WriterLock | None = None
        self._log: LogSync | None = None

    # -- plumbing ---------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._db is not None

    async def commit(self, work: Callable[[sqlite3.Connection], Any], *, durable: bool = True) -> Any:
        """Run ``work`` in one write transaction; with ``durable``, return once it is on disk.

        The transaction runs on the event loop when the broker file is free — it takes tens of
        microseconds, less than handing it to a thread and back (which, with the handlers and the
        dispatcher all wanting the interpreter, costs milliseconds) — and on the broker's thread
        when another writer holds the file, so that the loop never waits for another process.

        ``durable=False`` (leases, acks, retries, dead-lettering) skips the fsync of this commit:
        such a commit survives any process crash, and on a power loss it can only roll back to an
        earlier state — a message delivered again, never one lost. The next durable commit (a
        send) fsyncs it along with its own.
        """
        db, writer = self._connection(), self._writer
        assert writer is not None
        result: Any = _BUSY
        if self._db_lock.acquire(blocking=False):
            try:
                if writer.try_acquire():
                    try:
                        result = self._transaction(db, work)
                    finally:
                        writer.release()
            finally:
                self._db_lock.release()
        if result is _BUSY:  # another writer holds the file: wait for it off the loop
            result = await self._in_thread(self._locked_transaction, db, work)
        if durable:
            self._sync()  # the log's fsync: after the lock, so another process commits meanwhile
        return result

    def _transaction(self, db: sqlite3.Connection, work: Callable[[sqlite3.Connection], Any]) -> Any:
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                result = work(db)
                db.execute("COMMIT")
            except BaseException:
                rollback(db)  # never in place of the error that got us here (a full disk)
                raise
        except sqlite3.Error as exc:
            raise TransportError(f"embedded broker {self.path.name}: {explain(exc)}") from None
        return result

    def _locked_transaction(self, db: sqlite3.Connection, work: Callable[[sqlite3.Connection], Any]) -> Any:
        assert self._writer is not None
        with self._db_lock, self._writer:
            return self._transaction(db, work)

    def _sync(self) -> None:
        assert self._log is not None
        try:
            self._log.sync()
        except OSError as exc:
            problem = f"the disk did not confirm a write: {exc}"
            raise TransportError(f"embedded broker {self.path.name}: {problem}") from None

    async def read(self, look: Callable[[sqlite3.Connection], Any]) -> Any:
        """``look(db)`` for a read (inspection, doctor), on the broker's thread."""
        return await self._in_thread(self._locked_read, self._connection(), look)

    def _locked_read(self, db: sqlite3.Connection, look: Callable[[sqlite3.Connection], Any]) -> Any:
        with self._db_lock:
            try:
                return look(db)
            except sqlite3.Error as exc:
                raise TransportError(f"embedded broker {self.path.name}: {explain(exc)}") from None

    async def _in_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def connect(self) -> None:
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
        await self._sends.idle()
        await self._consuming.idle()
        self.doorbell.close()
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

        await self.commit(work)

    @property
    def routed_with(self) -> int:
        """The version of the bindings the last send was routed with (see :meth:`routes_version`)."""
        return self._routes_version

    async def routes_version(self) -> int:
        """A number that grows whenever a queue or binding is declared, in any process.

        A dispatcher holding events that were unroutable sends them again when it changes,
        instead of waiting for the retry schedule.
        """
        version: int = await self.read(lambda db: db.execute("SELECT version FROM topology").fetchone()[0])
        return version

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

    async def _commit_sends(
        self,
        insert: Callable[
            [sqlite3.Connection, list[tuple[str, Sequence[WireMessage]]]], list[list[SendResult]]
        ],
        sends: list[tuple[str, Sequence[WireMessage]]],
    ) -> list[list[SendResult]]:
        result: list[list[SendResult]] = await self.commit(lambda db: insert(db, sends))
        return result

    def _insert_sends(
        self, db: sqlite3.Connection, sends: list[tuple[str, Sequence[WireMessage]]]
    ) -> list[list[SendResult]]:
        return [self._insert(db, exchange, messages) for exchange, messages in sends]

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
            routed.append((sorted(queues), store.encode_meta(message, target), message.body))
            results.append(DELIVERED)
        store.insert(db, time.time(), routed)
        return results

    # -- consuming (the lease loop and settling: consume.py) --------------------------------

    def consume(self, queue: QueueSpec, *, prefetch: int) -> AsyncIterator[EmbeddedDelivery]:
        """Lease up to ``prefetch`` messages at a time (see :mod:`.consume`)."""
        return self._consuming.stream(queue, prefetch)

    # -- inspection (tests, doctor, backlog views) ---------------------------------------

    async def queue_depth(self, queue: str) -> int:
        sql = "SELECT count(*) FROM messages WHERE queue = ?"
        count: int = await self.read(lambda db: db.execute(sql, (queue,)).fetchone()[0])
        return count

    async def enqueue(self, queue: str, messages: Sequence[WireMessage]) -> list[SendResult]:
        """``messages`` into ``queue`` alone, in one commit (an operator's replay to one consumer)."""

        def put(db: sqlite3.Connection) -> list[SendResult]:
            if not db.execute("SELECT 1 FROM queues WHERE name = ?", (queue,)).fetchone():
                raise TransportError(f"queue {queue!r} does not exist on the embedded broker")
            routed = [([queue], store.encode_meta(m, m.exchange or ""), m.body) for m in messages]
            store.insert(db, time.time(), routed)
            return [DELIVERED] * len(messages)

        results: list[SendResult] = await self.commit(put)
        self.doorbell.ring()
        return results

    def dead_letters(self) -> EmbeddedDeadLetters:
        """Consumers' dead letters for an operator (``tidings dead``; :mod:`.dead`)."""
        from tidings.transports.embedded.dead import EmbeddedDeadLetters

        return EmbeddedDeadLetters(self)

    async def verify(self, topology: Topology) -> Findings:
        """Queues and bindings the topology needs, checked without creating anything (:mod:`.doctor`)."""
        findings: Findings = await self.read(lambda db: verify(db, topology))
        return findings

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            raise TransportError(f"embedded broker {self.path.name} is not connected")
        return self._db
