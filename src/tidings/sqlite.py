"""SQLite connections set up the one way tidings relies on: WAL, synchronous=FULL."""

from __future__ import annotations

import fcntl
import os
import sqlite3
from pathlib import Path

from tidings.errors import OutboxError

#: how long a writer waits for another process's transaction before failing
BUSY_TIMEOUT_MS = 30_000


def connect(path: str | Path, *, schema: str = "") -> sqlite3.Connection:
    """Open (creating folders and tables) a database shared safely by several processes."""
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
        # FULL: a commit is on disk (WAL fsynced) before it returns; durability is the contract
        db.execute("PRAGMA synchronous=FULL")
        if schema:
            db.executescript(schema)
    except (sqlite3.Error, OSError) as exc:
        raise OutboxError(f"cannot open database {str(path)!r}: {exc}") from None
    return db


def explain(exc: sqlite3.Error) -> str:
    text = str(exc)
    if "disk is full" in text or "disk I/O" in text:
        return f"{text} (free disk space; nothing of this call was stored)"
    return text


class WriterLock:
    """A blocking file lock taken around each write transaction.

    SQLite lets only one writer in at a time, and a writer that finds the lock
    taken waits in its busy handler by *sleeping* (1, 2, 5, 10 ... ms), which
    wastes most of the disk's fsync rate when several processes publish. A
    kernel file lock instead wakes the next writer the moment the lock is free.
    """

    def __init__(self, database: str | Path) -> None:
        self.path = Path(f"{database}.writer-lock")
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)

    def __enter__(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        os.close(self._fd)
