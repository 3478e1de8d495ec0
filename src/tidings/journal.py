"""The handling journal: which messages a consumer's handlers started and never saw settled.

A handler that kills its process (a segfault, the OOM killer, ``os._exit``) never gets
to raise, so the runtime cannot count that attempt after the fact. Instead each
consumer process writes a line before a handler starts (``S``) and another once the
handler returned (``F``), into a file of its own that it holds locked while it
lives. When a process is gone, its lock is gone: the next process that asks about a
message that came back (``Delivery.redelivered``) *adopts* every dead process's file —
each start without a finish after it is a death — adds those deaths to a small
shared SQLite table, and deletes the file. The runtime adds a message's deaths to
the tries the broker counted, so a message that kills its consumer reaches the dead
letters after ``max_attempts``, on every transport — including RabbitMQ's classic
queues, which only say "redelivered", not how often or why.

Costs: two lines copied into a memory-mapped file per message — no system call, no
fsync, nothing read on the common path; SQLite is touched only for messages that
came back unsettled. The file is mapped shared, so what is copied into it belongs to
the kernel's page cache and outlives the process (which is all it has to survive); a
power failure may lose the last lines, and a message then gets an extra try.

The journal lives in the consumer's home folder (``handling/``): consumer
processes sharing it share their deaths; a consumer on another machine counts its
own, so a message that kills consumers on several machines is dead-lettered after
``max_attempts`` deaths on one of them.
"""

from __future__ import annotations

import fcntl
import logging
import mmap
import os
import sqlite3
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import orjson

from tidings.errors import StorageError
from tidings.sqlite import connect, explain, rollback

SCHEMA = """
CREATE TABLE IF NOT EXISTS deaths (
    queue TEXT NOT NULL, event_id TEXT NOT NULL, count INTEGER NOT NULL, updated REAL NOT NULL,
    PRIMARY KEY (queue, event_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS adopted (file TEXT PRIMARY KEY, at REAL NOT NULL);
"""

#: deaths of messages never seen again (dropped by an operator, settled on another machine) and the
#: names of adopted files are forgotten after this long
KEEP_SECONDS = 14 * 86400
#: the size of a process's file (about 2,800 messages); when it is full, the process starts a new one
#: (the running entries move over) and removes the old one. Unwritten space reads as zero bytes.
FILE_BYTES = 256 * 1024

Key = tuple[str, str]  # (queue, event id)
#: how old a look at the journal may be for a message a transport only guesses came back
GUESS_FRESH = 0.5
log = logging.getLogger(__name__)


class HandlingJournal:
    """The journal of one home folder; shared by every consumer of a process through its Bus."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self._lock = threading.Lock()
        self._map: mmap.mmap | None = None
        self._name = ""
        self._written = 0
        #: starts of handlers still running in this process: moved to the next file on rotation
        self._running: Counter[Key] = Counter()
        self._unwritable = False
        self._db: sqlite3.Connection | None = None
        #: the deaths table as last read, and the database version it was read at (None: read it)
        self._deaths: dict[Key, int] | None = None
        self._deaths_version = -1
        self._looked = 0.0  # when the folder and the table were last looked at
        os.register_at_fork(after_in_child=self._forget_file)

    # -- this process's file ---------------------------------------------------------------

    def started(self, queue: str, event_id: str) -> None:
        """Write down that a handler starts on this event; once it returns, a death would be seen.

        If the journal cannot be written (a full disk), the handler runs all the same: a message
        is never held back for want of its death count, which only a death would need.
        """
        with self._lock:
            self._append(orjson.dumps(["S", queue, event_id]) + b"\n")  # may open a file: before counting
            self._running[(queue, event_id)] += 1

    def finished(self, queue: str, event_id: str) -> None:
        """The handler returned: write this before settling (a settle lost with the process is not a
        death, the message just comes back)."""
        key = (queue, event_id)
        with self._lock:
            self._running[key] -= 1
            if self._running[key] <= 0:
                del self._running[key]
            self._append(orjson.dumps(["F", queue, event_id]) + b"\n")

    def _append(self, line: bytes) -> None:
        if self._map is None or self._written + len(line) > len(self._map):
            try:
                self._open_file(len(line))
            except StorageError as exc:
                if not self._unwritable:
                    log.warning("%s; deaths are not counted until it can be written again", exc)
                self._unwritable = True
                return
            if self._unwritable:
                log.warning("handling journal %s: written again; deaths are counted", self.folder)
                self._unwritable = False
        assert self._map is not None
        end = self._written + len(line)
        self._map[self._written : end] = line
        self._written = end

    def _open_file(self, need: int) -> None:
        """Start a file of our own (locked while we live); on rotation, carry the running starts over."""
        carried = b"".join(
            orjson.dumps(["S", queue, event_id]) + b"\n"
            for (queue, event_id), count in self._running.items()
            for _ in range(count)
        )
        name = f"{os.getpid()}-{uuid.uuid4().hex[:12]}.log"
        path = self.folder / name
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)  # held by the open file while we live; not closed below
                size = max(FILE_BYTES, 2 * (len(carried) + need))
                os.posix_fallocate(fd, 0, size)  # the space is ours now: no disk-full error mid-line
                mapped = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            except OSError:
                path.unlink(missing_ok=True)
                raise
            finally:
                os.close(fd)  # the mapping keeps the file, and the lock with it, open
        except OSError as exc:
            raise StorageError(
                f"handling journal {self.folder}: cannot start {name}: {exc.strerror}"
            ) from None
        mapped[: len(carried)] = carried
        old, old_name = self._map, self._name
        self._map, self._name, self._written = mapped, name, len(carried)
        if old is not None:
            (self.folder / old_name).unlink(missing_ok=True)  # after the new file holds the running starts
            old.close()

    def _forget_file(self) -> None:
        # a forked child must not write into its parent's file (the lock stays the parent's)
        self._map, self._name, self._written = None, "", 0
        self._running.clear()
        self._db = None

    # -- deaths ----------------------------------------------------------------------------

    def deaths(self, queue: str, event_id: str, *, guessed: bool = False) -> int:
        """How often a consumer died while a handler ran on this event (adopting the dead's files).

        Asked for every message that came back: the folder is listed (a dead process's file is
        adopted at once), and the deaths table — a handful of rows — is read again only when it
        changed (SQLite's ``data_version`` says when another process wrote it).

        ``guessed``: the transport only guesses that the message came back (Kafka says so of a
        whole backlog after a restart), and hands it out no sooner than a session timeout after a
        death; then a look taken within the last :data:`GUESS_FRESH` seconds is recent enough.
        """
        with self._lock:
            db = self._database()
            now = time.monotonic()
            if not guessed or now - self._looked >= GUESS_FRESH:
                self._looked = now
                self._adopt_dead_files(db)
                version = db.execute("PRAGMA data_version").fetchone()[0]
                if version != self._deaths_version:
                    self._deaths, self._deaths_version = None, version
            if self._deaths is None:
                rows = db.execute("SELECT queue, event_id, count FROM deaths")
                self._deaths = {(q, e): count for q, e, count in rows}
            return self._deaths.get((queue, event_id), 0)

    def forget_deaths(self, queue: str, event_id: str) -> None:
        """A message with deaths was settled: they are in its tries now (a retry carries them), or it
        is gone (acked, dead-lettered)."""
        with self._lock:
            self._transaction(
                self._database(),
                [("DELETE FROM deaths WHERE queue = ? AND event_id = ?", [(queue, event_id)])],
            )

    def _database(self) -> sqlite3.Connection:
        if self._db is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._db = connect(self.folder / "deaths.db", schema=SCHEMA)
            old = time.time() - KEEP_SECONDS
            self._transaction(
                self._db,
                [
                    ("DELETE FROM deaths WHERE updated < ?", [(old,)]),
                    ("DELETE FROM adopted WHERE at < ?", [(old,)]),
                ],
            )
        return self._db

    def _adopt_dead_files(self, db: sqlite3.Connection) -> None:
        with os.scandir(self.folder) as entries:  # (pathlib's glob costs several times as much)
            others = sorted(e.name for e in entries if e.name.endswith(".log") and e.name != self._name)
        for path in (self.folder / name for name in others):
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue  # adopted by another process a moment ago
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # its process lives: its starts are handlers running now
                self._adopt(db, path, fd)
            finally:
                os.close(fd)

    def _adopt(self, db: sqlite3.Connection, path: Path, fd: int) -> None:
        """Count a dead process's unfinished starts as deaths, once, and remove its file."""
        if db.execute("SELECT 1 FROM adopted WHERE file = ?", (path.name,)).fetchone():
            path.unlink(missing_ok=True)  # counted already; the adopter died before removing it
            return
        with open(fd, "rb", closefd=False) as stream:
            unfinished = _unfinished(stream.read())
        now = time.time()
        self._transaction(
            db,
            [
                (
                    "INSERT INTO deaths VALUES (?, ?, ?, ?) ON CONFLICT DO UPDATE "
                    "SET count = count + excluded.count, updated = excluded.updated",
                    [(queue, event_id, count, now) for (queue, event_id), count in unfinished.items()],
                ),
                ("INSERT OR IGNORE INTO adopted VALUES (?, ?)", [(path.name, now)]),
            ],
        )
        path.unlink(missing_ok=True)

    def _transaction(self, db: sqlite3.Connection, statements: list[tuple[str, list[tuple]]]) -> None:
        self._deaths = None  # our own writes do not change data_version for us: read it again
        try:
            db.execute("BEGIN IMMEDIATE")
            for sql, rows in statements:
                if rows:
                    db.executemany(sql, rows)
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            rollback(db)
            raise StorageError(f"handling journal deaths.db: {explain(exc)}") from None

    def close(self) -> None:
        with self._lock:
            if self._map is not None:  # a bus closes after its consumers stopped: no start open, no death
                (self.folder / self._name).unlink(missing_ok=True)
                self._map.close()
                self._map = None
            if self._db is not None:
                self._db.close()
                self._db = None


def _unfinished(data: bytes) -> Counter[Key]:
    """Per (queue, event id): starts after its last finish. A torn last line is ignored."""
    pending: Counter[Key] = Counter()
    for line in data.rstrip(b"\0").splitlines():
        try:
            op, queue, event_id = orjson.loads(line)
        except (orjson.JSONDecodeError, ValueError, TypeError):
            continue
        key = (str(queue), str(event_id))
        if op == "S":
            pending[key] += 1
        else:
            pending.pop(key, None)
    return +pending
