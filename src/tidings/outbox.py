"""The durable queue between producers and connectors, on SQLite.

``append`` returns only after the events are committed and the write-ahead log
holding them is fsynced (:mod:`tidings.sqlite`: FULL's guarantee, the fsync taken
outside the write lock). Threads of one process share commits
(:mod:`tidings.groupcommit`); coroutines of one event loop share commits too
(:meth:`Outbox.append_async`), made on the loop itself when the file is free, so
that asyncio publishers pay no hand-off to a thread but the fsync's. Several
processes may append to one outbox; a file lock orders their transactions, and
one's fsync overlaps the next one's commit.

Per connector the outbox keeps a cursor (the last event it took responsibility
for), a backlog of events to try again later and dead letters. Rows are
addressed by ``seq``, which is never reused: a new event's seq is one above the
highest in the table, and the purge always keeps the newest event, so the highest
never goes down and a purge can never make a cursor skip an event. (Not
AUTOINCREMENT: its bookkeeping row costs every commit a page write, ~5 % of a
single publisher's rate.)
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tidings.batching import AsyncBatcher
from tidings.doorbell import Doorbell
from tidings.errors import InvalidEvent, OutboxError
from tidings.event import Event, loads
from tidings.groupcommit import GroupCommit
from tidings.sqlite import LogSync, WriterLock, connect, explain, rollback, rows_up_to

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,  -- never reused: see the module's docstring
    id TEXT NOT NULL UNIQUE,
    topic TEXT NOT NULL,
    created REAL NOT NULL,
    data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS cursors (connector TEXT PRIMARY KEY, seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS backlog (
    connector TEXT NOT NULL, seq INTEGER NOT NULL, attempts INTEGER NOT NULL,
    next_at REAL NOT NULL, last_error TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (connector, seq)
) WITHOUT ROWID;
-- an ordered connector's later events wait behind every backlog entry but an unroutable one: no
-- queue was bound for it, so it reached nobody whose order could break (Outbox.backlog_next_at)
CREATE INDEX IF NOT EXISTS backlog_holding ON backlog (connector, seq)
    WHERE last_error NOT LIKE 'unroutable%';
CREATE INDEX IF NOT EXISTS backlog_unroutable ON backlog (connector, next_at)
    WHERE last_error LIKE 'unroutable%';
CREATE INDEX IF NOT EXISTS backlog_next ON backlog (connector, next_at);
CREATE TABLE IF NOT EXISTS dead (
    connector TEXT NOT NULL, seq INTEGER NOT NULL, attempts INTEGER NOT NULL,
    reason TEXT NOT NULL, failed_at REAL NOT NULL,
    PRIMARY KEY (connector, seq)
) WITHOUT ROWID;
"""


#: a backlog entry an ordered connector's later events wait behind, and one they do not (the very
#: expressions of the partial indexes ``backlog_holding`` and ``backlog_unroutable``: SQLite
#: uses a partial index only for a query that says the same)
_HOLDS = "last_error NOT LIKE 'unroutable%'"
_UNROUTABLE = "last_error LIKE 'unroutable%'"
#: rows per INSERT statement: 4 parameters a row stays under the oldest SQLite's limit of 999
ROWS_PER_STATEMENT = 200
#: the largest seq SQLite stores (a signed 64-bit integer): what an operator may name
MAX_SEQ = 2**63 - 1
#: a loop-side commit of at least this many events fsyncs on the loop; a smaller one in a thread
#: (measured: 64 coroutines publish a third faster with the fsync inline, and a lone publisher's event
#: reaches its consumer twice as fast with it in a thread, where the loop meanwhile runs the rest)
INLINE_SYNC_ROWS = 16
#: an event ready to store: (id, topic, its JSON)
Encoded = tuple[str, str, bytes]


@functools.lru_cache(maxsize=ROWS_PER_STATEMENT)
def _insert_sql(rows: int) -> str:
    return "INSERT OR IGNORE INTO events (id, topic, created, data) VALUES " + ",".join(["(?,?,?,?)"] * rows)


def _flatten(rows: list[tuple[str, str, float, bytes]]) -> list[object]:
    return [value for row in rows for value in row]


def _is_private(data: bytes) -> bool:
    try:
        stored = loads(data)
    except InvalidEvent:
        return True  # unreadable: shown to nobody who could not see a private event
    return not isinstance(stored, dict) or stored.get("visibility", "public") != "public"


@dataclass(slots=True)
class Row:
    """An outbox event as the dispatcher sees it."""

    seq: int
    topic: str
    data: bytes
    attempts: int = 0

    def event(self) -> Event:
        return Event.from_stored(self.data)


@dataclass(slots=True, frozen=True)
class Settlement:
    """What to record for one event after a connector tried it."""

    seq: int
    #: "delivered", "retry" (to the backlog, due at next_at) or "dead"
    state: str
    attempts: int = 0
    next_at: float = 0.0
    reason: str = ""


@dataclass(slots=True, frozen=True)
class ConnectorStatus:
    connector: str
    cursor: int
    pending: int
    backlog: int
    next_retry: float | None
    dead: int


class Outbox:
    """One outbox file. Safe to share between threads; one instance per process is enough."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._db = connect(self.path, schema=SCHEMA, sync_commits=False)
        self._log = LogSync(self.path)
        self._writer = WriterLock(self.path)
        # one sqlite3 connection serves every thread of this process, one at a time
        self._db_lock = threading.Lock()
        self._group_commit: GroupCommit[tuple[str, str, bytes]] = GroupCommit(self._write)
        #: per event loop: coroutines that publish while a commit runs share the next one
        self._async_commits: dict[asyncio.AbstractEventLoop, AsyncBatcher[list[Encoded], None]] = {}
        #: the fsync of loop-side commits runs here, so the loop prepares the next group meanwhile
        self._syncer = ThreadPoolExecutor(1, thread_name_prefix="tidings-outbox-sync")
        self._listeners: list[Callable[[list[Row]], None]] = []
        #: rung after every commit of events: a dispatcher in another process delivers at once
        self.doorbell = Doorbell(self.path)

    def close(self) -> None:
        self.doorbell.close()
        self._syncer.shutdown(wait=True)
        with self._db_lock:
            self._db.close()
            self._log.close()
            self._writer.close()

    # -- producers ---------------------------------------------------------------------

    def append(self, events: Sequence[Event]) -> None:
        """Store events durably; returns once they are committed. Raises OutboxError."""
        self.append_encoded([(e.id, e.topic, e.to_json()) for e in events])

    def append_encoded(self, rows: list[Encoded]) -> None:
        """:meth:`append` for events already serialised as (id, topic, JSON).

        Serialising happens in the caller's thread, outside the commit, so it
        overlaps with another thread's fsync instead of lengthening it.
        """
        self._group_commit.submit(rows)

    async def append_async(self, rows: list[Encoded]) -> None:
        """:meth:`append_encoded` for asyncio code; returns once the events are on disk.

        Coroutines that append while a commit runs share the next one. The commit runs on the
        event loop when the outbox file is free (a few hundred microseconds for a group, less
        than a thread hand-off costs when the interpreter is busy), and only the fsync goes to a
        thread; when another process holds the file, the whole write waits in a thread.
        """
        loop = asyncio.get_running_loop()
        batcher = self._async_commits.get(loop)
        if batcher is None:
            batcher = self._async_commits[loop] = AsyncBatcher(self._commit_groups, self._flat)
        await batcher.submit(rows)

    @staticmethod
    def _flat(groups: list[list[Encoded]]) -> list[Encoded]:
        return [row for group in groups for row in group]

    async def _commit_groups(
        self, flat: Callable[[list[list[Encoded]]], list[Encoded]], groups: list[list[Encoded]]
    ) -> list[None]:
        encoded = flat(groups)
        committed: list[Row] | None = None
        if self._db_lock.acquire(blocking=False):
            try:
                if self._writer.try_acquire():
                    try:
                        committed = self._commit(encoded)
                    finally:
                        self._writer.release()
            finally:
                self._db_lock.release()
        loop = asyncio.get_running_loop()
        if committed is None:  # another writer holds the file: the threads' path waits for it
            await loop.run_in_executor(self._syncer, self._group_commit.submit, encoded)
        elif len(encoded) >= INLINE_SYNC_ROWS:
            self._sync(len(encoded))  # a big group: its publishers are what the loop is busy with
            self._committed(committed)
        else:  # a small one: the loop goes on (a dispatcher, consumers) while the disk confirms
            await loop.run_in_executor(self._syncer, self._sync, len(encoded))
            self._committed(committed)
        return [None] * len(groups)

    def _write(self, encoded: list[Encoded]) -> BaseException | None:
        """The group commit of publishing threads: commit, fsync, tell the listeners."""
        try:
            with self._db_lock, self._writer:
                committed = self._commit(encoded)
            # the locks are free again: another process commits while this fsync runs
            self._sync(len(encoded))
        except OutboxError as exc:
            return exc
        self._committed(committed)
        return None

    def _commit(self, encoded: list[Encoded]) -> list[Row]:
        """Insert and commit (the caller holds both locks); the committed rows, or [] (see _insert)."""
        now = time.time()
        try:
            return self._insert([(event_id, topic, now, data) for event_id, topic, data in encoded])
        except sqlite3.Error as exc:
            rollback(self._db)
            problem = f"could not store {len(encoded)} event(s): {explain(exc)}"
            raise OutboxError(f"outbox {self.path.name}: {problem}") from None

    def _sync(self, count: int) -> None:
        try:
            self._log.sync()
        except OSError as exc:
            raise OutboxError(
                f"outbox {self.path.name}: the disk did not confirm {count} event(s) ({exc}); "
                "they may or may not be stored: publish them again, with the same ids"
            ) from None

    def _committed(self, committed: list[Row]) -> None:
        for listener in self._listeners:
            listener(committed)
        self.doorbell.ring()

    def _insert(self, rows: list[tuple[str, str, float, bytes]]) -> list[Row]:
        """Insert and commit; the rows as the dispatcher reads them, or [] if some were already there."""
        # a re-published id (a producer retrying after an unknown outcome) is stored once
        if len(rows) <= ROWS_PER_STATEMENT:
            # one statement is its own transaction: the commit is a single call into SQLite, so
            # the committing thread gives up and retakes the GIL once, not once per row
            cursor = self._db.execute(_insert_sql(len(rows)), _flatten(rows))
            inserted = cursor.rowcount
        else:
            self._db.execute("BEGIN IMMEDIATE")
            inserted = 0
            for start in range(0, len(rows), ROWS_PER_STATEMENT):
                chunk = rows[start : start + ROWS_PER_STATEMENT]
                cursor = self._db.execute(_insert_sql(len(chunk)), _flatten(chunk))
                inserted += cursor.rowcount
            self._db.execute("COMMIT")
        if inserted != len(rows):
            return []
        # one writer at a time, each new seq one above the highest: one transaction's seqs are consecutive
        first = (cursor.lastrowid or 0) - len(rows) + 1
        return [Row(first + n, topic, data) for n, (_, topic, _, data) in enumerate(rows)]

    def add_listener(self, listener: Callable[[list[Row]], None]) -> None:
        """Call ``listener(rows)`` after every commit of events by this process, from the committing
        thread: the dispatcher's wake-up. ``rows`` are the committed events as :meth:`read_after`
        would return them, or empty when that cannot be told (then read them)."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[list[Row]], None]) -> None:
        self._listeners.remove(listener)

    # -- dispatcher ---------------------------------------------------------------------

    def _read(self, sql: str, params: Iterable[object] = (), *, max_bytes: int | None = None) -> list[tuple]:
        """The rows; with ``max_bytes``, read one at a time until their third column (an event's
        stored data) reaches that many bytes, the first row always."""
        with self._db_lock:
            try:
                cursor = self._db.execute(sql, tuple(params))
                return cursor.fetchall() if max_bytes is None else rows_up_to(cursor, max_bytes, 2)
            except sqlite3.Error as exc:
                raise OutboxError(f"outbox {self.path.name}: {explain(exc)}") from None

    def _transaction(self, statements: list[tuple[str, Sequence[tuple]]], *, durable: bool = True) -> None:
        """Run statements in one transaction; with ``durable``, return once it is on disk.

        ``durable=False`` skips the fsync: for bookkeeping whose loss on a power
        failure can only make the dispatcher send something again (a cursor, a
        backlog entry), never lose an event. The log is replayed only as a prefix,
        so the next durable write puts this one on disk too.
        """
        with self._db_lock:
            try:
                with self._writer:
                    self._db.execute("BEGIN IMMEDIATE")
                    for sql, rows in statements:
                        if rows:
                            self._db.executemany(sql, rows)
                    self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                rollback(self._db)
                raise OutboxError(f"outbox {self.path.name}: {explain(exc)}") from None
        if durable:
            try:
                self._log.sync()
            except OSError as exc:
                problem = f"the disk did not confirm a write: {exc}"
                raise OutboxError(f"outbox {self.path.name}: {problem}") from None

    def last_seq(self) -> int:
        return self._read("SELECT max(seq) FROM events")[0][0] or 0

    def cursor_of(self, connector: str) -> int:
        """The connector's cursor, without writing: 0 for one not seen yet (it will start there).
        For what only looks (``backlog list`` on a full disk, where a write fails)."""
        row = self._read("SELECT seq FROM cursors WHERE connector = ?", (connector,))
        return row[0][0] if row else 0

    def ensure_connector(self, connector: str) -> int:
        """The connector's cursor, creating it if new.

        A new connector starts before the oldest event still in the outbox: events
        published before any dispatcher ran must not be skipped.
        """
        row = self._read("SELECT seq FROM cursors WHERE connector = ?", (connector,))
        if row:
            return row[0][0]
        self._transaction([("INSERT OR IGNORE INTO cursors (connector, seq) VALUES (?, 0)", [(connector,)])])
        return self._read("SELECT seq FROM cursors WHERE connector = ?", (connector,))[0][0]

    def read_after(self, cursor: int, limit: int, *, max_bytes: int | None = None) -> list[Row]:
        """Up to ``limit`` events after ``cursor``; with ``max_bytes``, fewer once their stored
        bytes reach it (the first is always read): a batch of large events stays bounded."""
        rows = self._read(
            "SELECT seq, topic, data FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
            (cursor, limit),
            max_bytes=max_bytes,
        )
        return [Row(seq, topic, data) for seq, topic, data in rows]

    def topics_before(self, seq: int, limit: int) -> list[tuple[int, str]]:
        """(seq, topic) of up to ``limit`` events before ``seq``, newest first (``tidings tail``)."""
        return self._read(
            "SELECT seq, topic FROM events WHERE seq < ? ORDER BY seq DESC LIMIT ?", (seq, limit)
        )

    def backlog_head(self, connector: str) -> tuple[int, float] | None:
        """(count, the soonest next try) of a connector's backlog, or None if empty."""
        row = self._read("SELECT count(*), min(next_at) FROM backlog WHERE connector = ?", (connector,))
        count, soonest = row[0]
        return (count, soonest) if count else None

    def backlog_next_at(self, connector: str, *, ordered: bool = False) -> tuple[float | None, bool]:
        """(When the connector's backlog next has an entry due — None if it is empty —, and
        whether, ``ordered``, its new events must wait behind it.)

        Ordered, an entry waits behind the first one that holds the order and is not due (every
        entry but an unroutable one holds it); so the next due is that first holding entry's, or
        an unroutable one's before it. The dispatcher asks before every batch and every idle poll:
        index lookups only.
        """
        if not ordered:
            row = self._read("SELECT min(next_at) FROM backlog WHERE connector = ?", (connector,))
            return row[0][0], False
        first = self._read(
            f"SELECT seq, next_at FROM backlog INDEXED BY backlog_holding WHERE connector = ? AND {_HOLDS} "
            "ORDER BY seq LIMIT 1",
            (connector,),
        )
        if not first:
            row = self._read(
                "SELECT next_at FROM backlog INDEXED BY backlog_unroutable "
                f"WHERE connector = ? AND {_UNROUTABLE} ORDER BY next_at LIMIT 1",
                (connector,),
            )
            return (row[0][0] if row else None), False
        ((seq, next_at),) = first
        # every entry before the first holding one is an unroutable one: the soonest of them is
        # found walking the unroutable entries by next_at, past only those after the holding one
        # (few: nothing new is sent while one holds) — not all of the ones before it, which
        # can be many (a topic nobody bound for a day) and are asked for every idle poll
        before = self._read(
            "SELECT next_at FROM backlog INDEXED BY backlog_unroutable "
            f"WHERE connector = ? AND {_UNROUTABLE} AND seq < ? ORDER BY next_at LIMIT 1",
            (connector, seq),
        )
        return (min(next_at, before[0][0]) if before else next_at), True

    def backlog_due(
        self, connector: str, now: float, limit: int, *, ordered: bool = False, max_bytes: int | None = None
    ) -> list[Row]:
        """Due backlog entries, in seq order (``max_bytes``: as for :meth:`read_after`).

        Ordered: none at or after the first entry that holds the order and is not due
        (:meth:`backlog_next_at`). Not ordered: the ``limit`` due the longest, however many wait
        before them.
        """
        if not ordered:
            rows = self._read(
                "SELECT b.seq, e.topic, e.data, b.attempts FROM backlog b INDEXED BY backlog_next "
                "JOIN events e ON e.seq = b.seq WHERE b.connector = ? AND b.next_at <= ? "
                "ORDER BY b.next_at, b.seq LIMIT ?",
                (connector, now, limit),
                max_bytes=max_bytes,
            )
            return sorted((Row(*row) for row in rows), key=lambda row: row.seq)
        waiting = self._read(
            f"SELECT min(seq) FROM backlog INDEXED BY backlog_holding WHERE connector = ? AND {_HOLDS} "
            "AND next_at > ?",
            (connector, now),
        )[0][0]
        rows = self._read(
            "SELECT b.seq, e.topic, e.data, b.attempts FROM backlog b JOIN events e ON e.seq = b.seq "
            "WHERE b.connector = ? AND b.seq < ? AND b.next_at <= ? ORDER BY b.seq LIMIT ?",
            (connector, MAX_SEQ if waiting is None else waiting, now, limit),
            max_bytes=max_bytes,
        )
        return [Row(*row) for row in rows]

    def settle(
        self,
        connector: str,
        settlements: Sequence[Settlement],
        *,
        new_cursor: int | None,
        from_backlog: bool = True,
    ) -> None:
        """Record a batch's outcomes (and move the cursor) in one transaction.

        ``from_backlog=False`` says the events came from the cursor, so none of them has a
        backlog entry to remove: a batch that all went through costs one statement.
        """
        retry = [
            (connector, s.seq, s.attempts, s.next_at, s.reason) for s in settlements if s.state == "retry"
        ]
        dead = [
            (connector, s.seq, s.attempts, s.reason, time.time()) for s in settlements if s.state == "dead"
        ]
        done = ("delivered", "dead")
        finished = [(connector, s.seq) for s in settlements if s.state in done] if from_backlog else []
        statements: list[tuple[str, Sequence[tuple]]]
        if from_backlog:
            # only entries still there: one an operator dropped while its try was on the wire
            # (`tidings backlog drop`) stays dropped, neither back in the backlog nor dead
            statements = [
                (
                    "UPDATE backlog SET attempts = ?, next_at = ?, last_error = ? "
                    "WHERE connector = ? AND seq = ?",
                    [
                        (attempts, next_at, reason, name, seq)
                        for name, seq, attempts, next_at, reason in retry
                    ],
                ),
                (
                    "INSERT OR REPLACE INTO dead (connector, seq, attempts, reason, failed_at) "
                    "SELECT ?,?,?,?,? WHERE EXISTS (SELECT 1 FROM backlog WHERE connector = ? AND seq = ?)",
                    [(*row, row[0], row[1]) for row in dead],
                ),
            ]
        else:
            statements = [
                (
                    "INSERT OR REPLACE INTO backlog (connector, seq, attempts, next_at, last_error) "
                    "VALUES (?,?,?,?,?)",
                    retry,
                ),
                (
                    "INSERT OR REPLACE INTO dead (connector, seq, attempts, reason, failed_at) "
                    "VALUES (?,?,?,?,?)",
                    dead,
                ),
            ]
        statements.append(("DELETE FROM backlog WHERE connector = ? AND seq = ?", finished))
        if new_cursor is not None:
            statements.append(
                ("UPDATE cursors SET seq = max(seq, ?) WHERE connector = ?", [(new_cursor, connector)])
            )
        # a settlement lost to a power failure means events are sent again, never lost; a later
        # durable commit (a publish, a purge) fsyncs the log up to and including this one
        self._transaction(statements, durable=False)

    # -- operators (tidings backlog) -------------------------------------------------------

    def status(self, connectors: Iterable[str]) -> list[ConnectorStatus]:
        result = []
        last = self.last_seq()
        for name in connectors:
            cursor = self.cursor_of(name)
            pending = self._read("SELECT count(*) FROM events WHERE seq > ?", (cursor,))[0][0]
            head = self.backlog_head(name)
            dead = self._read("SELECT count(*) FROM dead WHERE connector = ?", (name,))[0][0]
            result.append(
                ConnectorStatus(
                    name,
                    cursor,
                    pending if last > cursor else 0,
                    head[0] if head else 0,
                    head[1] if head else None,
                    dead,
                )
            )
        return result

    def entries(self, connector: str, table: str, limit: int = 100) -> list[dict[str, object]]:
        """Backlog or dead-letter entries with their events, oldest first."""
        if table not in ("backlog", "dead"):
            raise ValueError(table)
        detail = "b.next_at, b.last_error" if table == "backlog" else "b.failed_at, b.reason"
        rows = self._read(
            f"SELECT b.seq, b.attempts, {detail}, e.id, e.topic, e.data FROM {table} b "
            "JOIN events e ON e.seq = b.seq WHERE b.connector = ? ORDER BY b.seq LIMIT ?",
            (connector, limit),
        )
        keys = ("seq", "attempts", "when", "reason", "id", "topic")
        # "private": whether the event is (a page shows those entries to readers only)
        return [dict(zip(keys, row[:-1], strict=True), private=_is_private(row[-1])) for row in rows]

    def retry_dead(
        self, connector: str, seqs: Sequence[int] | None = None, *, now: float | None = None
    ) -> int:
        """Move dead letters back into the backlog, due now, with a fresh attempt count."""
        where, params = _selection(connector, seqs)
        rows = self._read(f"SELECT seq FROM dead WHERE {where}", params)
        now = time.time() if now is None else now
        self._transaction(
            [
                (
                    "INSERT OR REPLACE INTO backlog (connector, seq, attempts, next_at, last_error) "
                    "VALUES (?,?,0,?,'')",
                    [(connector, seq, now) for (seq,) in rows],
                ),
                ("DELETE FROM dead WHERE connector = ? AND seq = ?", [(connector, seq) for (seq,) in rows]),
            ]
        )
        return len(rows)

    def retry_unroutable_now(self, connector: str) -> list[int]:
        """Make the connector's unroutable entries due now (a queue may have been bound since);
        the seqs of those that were not due yet (tried early, at no cost of an attempt: one due
        anyway is a try of its schedule, or ``dispatch --once`` from cron would try it for ever).
        The others keep their time: a binding does not change what refused them."""
        now = time.time()
        rows = self._read(
            f"SELECT seq FROM backlog WHERE connector = ? AND {_UNROUTABLE} AND next_at > ?", (connector, now)
        )
        self._transaction(
            [
                (
                    f"UPDATE backlog SET next_at = ? WHERE connector = ? AND {_UNROUTABLE} AND next_at > ?",
                    [(now, connector, now)],
                )
            ]
        )
        return [seq for (seq,) in rows]

    def retry_backlog_now(self, connector: str) -> int:
        rows = self._read("SELECT seq FROM backlog WHERE connector = ?", (connector,))
        self._transaction(
            [("UPDATE backlog SET next_at = ? WHERE connector = ?", [(time.time(), connector)])]
        )
        return len(rows)

    def missing(self, connector: str, table: str, seqs: Sequence[int]) -> list[int]:
        """Which of ``seqs`` the connector's backlog or dead letters (``table``) do not hold."""
        if table not in ("backlog", "dead"):
            raise ValueError(table)
        where, params = _selection(connector, seqs)
        found = {seq for (seq,) in self._read(f"SELECT seq FROM {table} WHERE {where}", params)}
        return sorted(set(seqs) - found)

    def drop(self, connector: str, table: str, seqs: Sequence[int] | None = None) -> int:
        """Forget backlog or dead-letter entries (an operator's explicit decision)."""
        if table not in ("backlog", "dead"):
            raise ValueError(table)
        where, params = _selection(connector, seqs)
        count = self._read(f"SELECT count(*) FROM {table} WHERE {where}", params)[0][0]
        self._transaction([(f"DELETE FROM {table} WHERE {where}", [tuple(params)])])
        return count

    def purge(self, connectors: Iterable[str], older_than: float) -> int:
        """Delete events every connector has finished with, created before ``older_than``.

        The newest event always stays: the next seq is one above it (see the module's docstring).
        """
        names = list(connectors)
        if not names:
            return 0
        marks = ",".join("?" * len(names))
        floor = self._read(f"SELECT min(seq) FROM cursors WHERE connector IN ({marks})", names)[0][0] or 0
        sql = (
            "DELETE FROM events WHERE seq <= ? AND created < ? AND seq < (SELECT max(seq) FROM events) "
            "AND seq NOT IN (SELECT seq FROM backlog) AND seq NOT IN (SELECT seq FROM dead)"
        )
        before = self._read("SELECT count(*) FROM events")[0][0]
        self._transaction([(sql, [(floor, older_than)])])
        return before - self._read("SELECT count(*) FROM events")[0][0]

    def history(self, *, since: float = 0.0) -> Iterable[Event]:
        """Events still in the outbox, oldest first (for replays)."""
        rows = self._read("SELECT data FROM events WHERE created >= ? ORDER BY seq", (since,))
        for (data,) in rows:
            yield Event.from_stored(data)


def _selection(connector: str, seqs: Sequence[int] | None) -> tuple[str, list[object]]:
    if seqs is None:
        return "connector = ?", [connector]
    marks = ",".join("?" * len(seqs))
    return f"connector = ? AND seq IN ({marks})", [connector, *seqs]
