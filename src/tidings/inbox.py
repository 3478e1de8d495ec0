"""The idempotent inbox: which events a consumer has already handled.

Keyed by (consumer, event id). The runtime skips an event it finds here and
records one after its handlers returned, before the ack: a crash between the
two leaves a duplicate delivery that the inbox then swallows. A handler that
writes its side effect through ``ctx.transaction()`` gets the record in the
same transaction, so that side effect happens exactly once.

Records older than ``[bus] inbox_retention`` are purged by the consumers that use the inbox,
a batch at a time so a purge never holds the file long: the inbox stays bounded by what a
retention period brings. A duplicate can only come while its original may still be redelivered,
so the retention must outlast a consumer's retry schedule (the default, 7 days, does).
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

from tidings.errors import StorageError
from tidings.sqlite import connect, explain, rollback

SCHEMA = """
CREATE TABLE IF NOT EXISTS inbox (
    consumer TEXT NOT NULL, event_id TEXT NOT NULL, handled_at REAL NOT NULL,
    PRIMARY KEY (consumer, event_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS inbox_by_age ON inbox (handled_at);
"""
#: records deleted per purge transaction: short enough not to stall a handler's transaction
PURGE_BATCH = 1000


class Inbox:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._db = connect(self.path, schema=SCHEMA)
        self._lock = threading.Lock()

    async def aseen(self, consumer: str, event_id: str) -> bool:
        """:meth:`seen` for the event loop: a handler's transaction may hold the lock for long."""
        await self._acquire_on_the_loop()
        try:
            return self._seen(consumer, event_id)
        finally:
            self._lock.release()

    async def amark(self, consumer: str, event_id: str) -> None:
        """:meth:`mark` for the event loop (as :meth:`aseen`)."""
        await self._acquire_on_the_loop()
        try:
            self._mark(consumer, event_id)
        finally:
            self._lock.release()

    async def _acquire_on_the_loop(self) -> None:
        """Take the lock without stopping the loop (the holder may be a handler awaiting on it)
        and without parking a thread of the loop's shared executor on it (the holder may need
        one): tried again after short sleeps. Cancelled meanwhile, it holds nothing."""
        wait = 0.001
        while not self._lock.acquire(blocking=False):
            await asyncio.sleep(wait)
            wait = min(wait * 2, 0.02)

    def _seen(self, consumer: str, event_id: str) -> bool:
        row = self._db.execute(
            "SELECT 1 FROM inbox WHERE consumer = ? AND event_id = ?", (consumer, event_id)
        ).fetchone()
        return row is not None

    def _mark(self, consumer: str, event_id: str) -> None:
        try:
            self._db.execute(
                "INSERT OR IGNORE INTO inbox VALUES (?, ?, ?)", (consumer, event_id, time.time())
            )
        except sqlite3.Error as exc:
            raise StorageError(f"inbox {self.path.name}: {explain(exc)}") from None

    def seen(self, consumer: str, event_id: str) -> bool:
        with self._lock:
            return self._seen(consumer, event_id)

    def mark(self, consumer: str, event_id: str) -> None:
        with self._lock:
            self._mark(consumer, event_id)

    @contextmanager
    def transaction(self, consumer: str, event_id: str) -> Iterator[sqlite3.Connection]:
        """Run the caller's writes and the inbox record in one transaction (see Context.transaction).
        In an async handler that awaits inside it, use :meth:`atransaction`: this one waits for the
        lock on the thread it runs on, and on the event loop's that stops the loop meanwhile."""
        self._lock.acquire()
        try:
            with self._in_transaction(consumer, event_id) as db:
                yield db
        finally:
            self._lock.release()

    @asynccontextmanager
    async def atransaction(self, consumer: str, event_id: str) -> AsyncIterator[sqlite3.Connection]:
        """:meth:`transaction` for async handlers that await inside it: the lock is waited for
        without stopping the event loop, so the handler holding it goes on meanwhile."""
        await self._acquire_on_the_loop()
        try:
            with self._in_transaction(consumer, event_id) as db:
                yield db
        finally:
            self._lock.release()

    @contextmanager
    def _in_transaction(self, consumer: str, event_id: str) -> Iterator[sqlite3.Connection]:
        """BEGIN; the caller's writes (at the yield); the record; COMMIT (under the lock)."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
            self._db.execute(
                "INSERT OR IGNORE INTO inbox VALUES (?, ?, ?)", (consumer, event_id, time.time())
            )
            self._db.execute("COMMIT")
        except BaseException:
            rollback(self._db)
            raise

    def purge(self, older_than: float, batch: int = PURGE_BATCH) -> int:
        """Forget records handled before ``older_than`` (epoch seconds), ``batch`` per transaction."""
        purged = 0
        while True:
            with self._lock:
                try:
                    count = self._db.execute(
                        "DELETE FROM inbox WHERE (consumer, event_id) IN "
                        "(SELECT consumer, event_id FROM inbox WHERE handled_at < ? LIMIT ?)",
                        (older_than, batch),
                    ).rowcount
                except sqlite3.Error as exc:
                    raise StorageError(f"inbox {self.path.name}: {explain(exc)}") from None
            purged += count
            if count < batch:
                return purged

    def size(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM inbox").fetchone()[0])

    def close(self) -> None:
        self._db.close()
