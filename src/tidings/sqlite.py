"""SQLite connections set up the one way tidings relies on: WAL, and no write reported
durable before the log holding it is on disk.

Two ways to get there. ``connect()`` alone gives ``synchronous=FULL``: SQLite fsyncs the
write-ahead log inside every COMMIT, while it holds the database's write lock. The outbox
and the embedded broker, whose writers queue behind one another, use
``connect(sync_commits=False)`` with a :class:`LogSync` instead: SQLite commits without
the fsync (``synchronous=NORMAL``, which still syncs the log before every checkpoint and
the database after it), the writer lock is released, and then the log is fsynced, before
anyone is told the write is durable. The guarantee is FULL's; what changes is that the
next writer (another process) appends its commit while this one's fsync runs.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
from pathlib import Path
from typing import Any

from tidings.errors import OutboxError, StorageError

#: how long a writer waits for another process's transaction before failing
BUSY_TIMEOUT_MS = 30_000


def connect(path: str | Path, *, schema: str = "", sync_commits: bool = True) -> sqlite3.Connection:
    """Open (creating folders and tables) a database shared safely by several processes.

    ``sync_commits=False``: SQLite does not fsync commits; the caller makes each durable
    write durable with a :class:`LogSync` before it reports the write done.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(
            path,
            isolation_level=None,
            check_same_thread=False,
            timeout=BUSY_TIMEOUT_MS / 1000,
            # the outbox prepares one INSERT per batch size (up to 200): keep them all prepared
            cached_statements=512,
        )
        db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        db.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is on disk (WAL fsynced) before it returns. NORMAL: the caller's
        # LogSync does that fsync, outside the write lock (see the module's docstring)
        db.execute("PRAGMA synchronous=" + ("FULL" if sync_commits else "NORMAL"))
        if schema:
            db.executescript(schema)
        db.execute("SELECT count(*) FROM sqlite_master").fetchone()  # a read opens (creates) the log
    except (sqlite3.Error, OSError) as exc:
        raise OutboxError(f"cannot open database {str(path)!r}: {exc}{_why_not(path)}") from None
    return db


def _why_not(path: Path) -> str:
    """What SQLite's "unable to open database file" leaves out, when it is a folder's fault."""
    folder = path.parent
    if folder.is_dir() and not os.access(folder, os.W_OK | os.X_OK):
        # even a reader needs the write-ahead log's files (-wal, -shm) beside the database
        return f" (the folder {str(folder)!r} is not writable: SQLite keeps its log files beside it)"
    return ""


def rollback(db: sqlite3.Connection) -> None:
    """Undo the open transaction, if there still is one.

    On some errors (a full disk, an I/O error) SQLite has rolled the transaction back itself, and
    a ROLLBACK then fails with "no transaction is active" — which must not take the place of the
    error that caused it: this never raises.
    """
    if db.in_transaction:
        try:
            db.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # rolled back meanwhile: nothing left to undo


def explain(exc: sqlite3.Error) -> str:
    text = str(exc)
    if "disk is full" in text or "disk I/O" in text:
        return f"{text} (free disk space; nothing of this call was stored)"
    return text


class LogSync:
    """fsyncs a database's write-ahead log: the commit point of ``sync_commits=False`` connections.

    Once ``sync()`` returns, every transaction committed to the database before the call
    is on disk, whichever connection or process committed it: the log is one file, and
    recovery replays it only as an unbroken prefix of checksummed frames.
    """

    def __init__(self, database: str | Path) -> None:
        self.path = Path(f"{database}-wal")
        # opened, never created: the connection, opened before this, created it. SQLite removes
        # the log only when the last connection to the database closes, so while the caller's
        # connection is open this descriptor stays the log's (no stat per sync: it costs ~20%)
        try:
            self._fd = os.open(self.path, os.O_RDONLY)
        except OSError as exc:
            raise OutboxError(f"cannot open the write-ahead log {str(self.path)!r}: {exc}") from None

    def sync(self) -> None:
        """Put the log on disk; raises OSError if the disk refuses (then nothing is known durable)."""
        os.fdatasync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def rows_up_to(cursor: sqlite3.Cursor, max_bytes: int, column: int) -> list[tuple[Any, ...]]:
    """A query's rows, one at a time, until those read hold ``max_bytes`` bytes in ``column``
    (text counted encoded); the first row always: a batch of large values stays bounded."""
    rows: list[tuple[Any, ...]] = []
    read = 0
    for row in cursor:
        if rows and read >= max_bytes:
            break
        rows.append(row)
        value = row[column]
        read += len(value.encode()) if isinstance(value, str) else len(value)
    return rows


class WriterLock:
    """A blocking file lock taken around each write transaction.

    SQLite lets only one writer in at a time, and a writer that finds the lock
    taken waits in its busy handler by *sleeping* (1, 2, 5, 10 ... ms), which
    wastes most of the disk's fsync rate when several processes publish. A
    kernel file lock instead wakes the next writer the moment the lock is free.
    """

    def __init__(self, database: str | Path) -> None:
        self.path = Path(f"{database}.writer-lock")
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:  # a read-only or full file system, a folder not ours
            raise StorageError(
                f"cannot open {self.path.name} beside {Path(database).name}: {exc.strerror}"
            ) from None

    def __enter__(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def try_acquire(self) -> bool:
        """Take the lock if it is free now; False if another writer holds it."""
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def release(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        os.close(self._fd)
