"""The idempotent inbox: which events a consumer has already handled.

Keyed by (consumer, event id). The runtime skips an event it finds here and
records one after its handlers returned, before the ack: a crash between the
two leaves a duplicate delivery that the inbox then swallows. A handler that
writes its side effect through ``ctx.transaction()`` gets the record in the
same transaction, so that side effect happens exactly once.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tidings.errors import StorageError
from tidings.sqlite import connect, explain, rollback

SCHEMA = """
CREATE TABLE IF NOT EXISTS inbox (
    consumer TEXT NOT NULL, event_id TEXT NOT NULL, handled_at REAL NOT NULL,
    PRIMARY KEY (consumer, event_id)
) WITHOUT ROWID;
"""


class Inbox:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._db = connect(self.path, schema=SCHEMA)
        self._lock = threading.Lock()

    def seen(self, consumer: str, event_id: str) -> bool:
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM inbox WHERE consumer = ? AND event_id = ?", (consumer, event_id)
            ).fetchone()
        return row is not None

    def mark(self, consumer: str, event_id: str) -> None:
        with self._lock:
            try:
                self._db.execute(
                    "INSERT OR IGNORE INTO inbox VALUES (?, ?, ?)", (consumer, event_id, time.time())
                )
            except sqlite3.Error as exc:
                raise StorageError(f"inbox {self.path.name}: {explain(exc)}") from None

    @contextmanager
    def transaction(self, consumer: str, event_id: str) -> Iterator[sqlite3.Connection]:
        """Run the caller's writes and the inbox record in one transaction (see Context.transaction)."""
        with self._lock:
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

    def purge(self, older_than: float) -> int:
        with self._lock:
            return self._db.execute("DELETE FROM inbox WHERE handled_at < ?", (older_than,)).rowcount

    def close(self) -> None:
        self._db.close()
