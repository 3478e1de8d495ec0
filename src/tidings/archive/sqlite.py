"""The archive on SQLite: the default, one file under ``[bus] home`` (``archive.db``).

One row per event, its search fields twice: as JSON beside the event (to give them back) and
in ``tags`` (kind, value, seq), a WITHOUT ROWID table whose primary key is the index a search by
user, package or container uses. Times are integer microseconds; ``seq`` is the archive's own
order, handed out from ``meta`` so that it never goes down, even when a purge removed the newest
rows (a live stream resuming from a seq must never be given an old number again).

Searches order by (time, seq): indexes on (time), (topic, time) and (category, time) with the
rowid (the seq) at their end serve a topic + time window and every keyset page from the index,
without OFFSET.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from tidings.archive import Archived, NumberedPage, Order, Page, Query
from tidings.archive.patterns import category_hint, compile_pattern, prefix_upper
from tidings.archive.rows import (
    PURGE_BATCH,
    category_of,
    check_page,
    cursor_after,
    decode_cursor,
    fields_of,
    from_micros,
    micros,
    unique_new,
)
from tidings.errors import StorageError, TidingsError
from tidings.event import Event, dumps, loads
from tidings.sqlite import connect, explain, rollback, rows_up_to
from tidings.topics import topic_matches

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    topic TEXT NOT NULL,
    time INTEGER NOT NULL,
    source TEXT NOT NULL,
    type TEXT,
    private INTEGER NOT NULL,
    category TEXT NOT NULL,
    agent TEXT,
    fields TEXT,
    headers TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_time ON events (time);
CREATE INDEX IF NOT EXISTS events_topic_time ON events (topic, time);
CREATE INDEX IF NOT EXISTS events_category_time ON events (category, time);
CREATE TABLE IF NOT EXISTS tags (
    kind INTEGER NOT NULL, value TEXT NOT NULL, seq INTEGER NOT NULL,
    PRIMARY KEY (kind, value, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
#: tags.kind of each search field
USERS, PACKAGES, CONTAINERS = 1, 2, 3
_COLUMNS = "seq, id, topic, time, source, type, private, agent, fields, headers, body"
_INSERT = f"INSERT INTO events ({_COLUMNS}, category) VALUES ({', '.join('?' * 12)})"
#: the page cache of an archive's connection, in KiB
CACHE_KIB = 64 * 1024
#: ids looked up per statement (SQLite's oldest limit on parameters is 999)
_CHUNK = 900


class SqliteArchive:
    """The Archive protocol on one SQLite file (WAL; a commit is on disk when ingest returns)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self._db = connect(self.path, schema=SCHEMA)
            # five indexes take a row each per event: with SQLite's 2 MB default cache a big
            # archive reads index pages back from disk on every batch
            self._db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
            # tidings' own matcher (linear in the topic): a regular expression for a pattern of
            # many '#' backtracks for minutes, with the store's lock held
            self._db.create_function("topic_matches", 2, topic_matches, deterministic=True)
        except sqlite3.Error as exc:
            raise StorageError(f"archive {str(self.path)!r}: {explain(exc)}") from None
        self._lock = threading.Lock()  # one connection, shared by the threads of a web server

    # -- writing ------------------------------------------------------------------------

    def ingest(self, events: Sequence[Archived | Event]) -> int:
        if not events:
            return 0
        with self._lock:
            db = self._db
            try:
                db.execute("BEGIN IMMEDIATE")
                fresh = unique_new(events, self._known([_id(e) for e in events]))
                last = self._last_seq()
                rows, tags = _rows(fresh, last)
                db.executemany(_INSERT, rows)
                db.executemany("INSERT OR IGNORE INTO tags VALUES (?, ?, ?)", tags)
                db.execute("INSERT OR REPLACE INTO meta VALUES ('seq', ?)", (last + len(rows),))
                db.execute("COMMIT")
            except Exception as exc:
                raise self._refused(exc) from None
        return len(fresh)

    def _known(self, ids: list[str]) -> set[str]:
        known: set[str] = set()
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            known.update(
                r[0] for r in self._db.execute(f"SELECT id FROM events WHERE id IN ({marks})", chunk)
            )
        return known

    def _last_seq(self) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'seq'").fetchone()
        return row[0] if row else 0

    def purge(self, older_than: datetime) -> int:
        """Delete events older than ``older_than``, ``PURGE_BATCH`` per transaction."""
        cutoff, total = micros(older_than), 0
        while True:
            with self._lock:
                done = self._purge_batch(cutoff)
            total += done
            if done < PURGE_BATCH:
                return total

    def _purge_batch(self, cutoff: int) -> int:
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            rows = db.execute(
                "SELECT seq, fields FROM events WHERE time < ? LIMIT ?", (cutoff, PURGE_BATCH)
            ).fetchall()
            db.executemany("DELETE FROM events WHERE seq = ?", [(seq,) for seq, _ in rows])
            db.executemany("DELETE FROM tags WHERE kind = ? AND value = ? AND seq = ?", _tag_rows(rows))
            db.execute("COMMIT")
        except Exception as exc:
            raise self._refused(exc) from None
        return len(rows)

    def _refused(self, exc: Exception) -> Exception:
        """Roll the write back, whatever stopped it: left open, the transaction would make every
        later BEGIN fail. A database error, or any error but one of tidings' own (a bug of ours
        on some value of an event), is the store refusing that batch: a StorageError."""
        rollback(self._db)
        if isinstance(exc, sqlite3.Error):
            return StorageError(f"archive {self.path.name}: {explain(exc)}")
        if isinstance(exc, TidingsError):
            return exc
        return StorageError(f"archive {self.path.name}: {type(exc).__name__}: {exc}")

    # -- reading ------------------------------------------------------------------------

    def get(self, event_id: str, *, include_private: bool = False) -> Archived | None:
        rows = self._read(f"SELECT {_COLUMNS} FROM events WHERE id = ?", [event_id])
        if not rows or (rows[0].event.visibility == "private" and not include_private):
            return None
        return rows[0]

    def search(
        self, query: Query, *, limit: int = 100, cursor: str | None = None, order: Order = "desc"
    ) -> Page:
        where, params = where_clause(query)
        if cursor is not None:
            time_us, seq = decode_cursor(cursor)
            # "time <= ?" alone is what the index can seek to; the OR settles the ties by seq
            op = "<" if order == "desc" else ">"
            where += f" AND time {op}= ? AND (time {op} ? OR seq {op} ?)"
            params += [time_us, time_us, seq]
        direction = "DESC" if order == "desc" else "ASC"
        sql = (
            f"SELECT {_COLUMNS} FROM events WHERE {where} ORDER BY time {direction}, seq {direction} LIMIT ?"
        )
        items = self._read(sql, [*params, limit + 1])
        more = len(items) > limit
        items = items[:limit]
        last = items[-1] if items else None
        next_cursor = cursor_after(last) if more and last else None
        return Page(items, next_cursor, None)

    def numbered(
        self, query: Query, *, page: int = 1, rows_per_page: int = 25, order: Order = "desc"
    ) -> NumberedPage:
        check_page(page, rows_per_page)
        where, params = where_clause(query)
        with self._lock:
            total = self._db.execute(f"SELECT count(*) FROM events WHERE {where}", params).fetchone()[0]
        direction = "DESC" if order == "desc" else "ASC"
        sql = (
            f"SELECT {_COLUMNS} FROM events WHERE {where} "
            f"ORDER BY time {direction}, seq {direction} LIMIT ? OFFSET ?"
        )
        items = self._read(sql, [*params, rows_per_page, (page - 1) * rows_per_page])
        return NumberedPage(items, total, -(-total // rows_per_page))

    def since(
        self, seq: int, query: Query, *, limit: int = 500, max_bytes: int | None = None
    ) -> list[Archived]:
        where, params = where_clause(query)
        # Walked by seq (the rowid), whatever the filter: a live stream asks for the few events
        # after the newest, and even from far behind this reads each later event at most once
        # (a filter that rarely matches: 200,000 events in 20 ms). The planner would take the
        # filter's index when it has no statistics (no ANALYZE) and sort every event of that
        # topic or category by seq, on every look of every stream (200,000: 1.7 s).
        sql = f"SELECT {_COLUMNS} FROM events NOT INDEXED WHERE seq > ? AND {where} ORDER BY seq LIMIT ?"
        return self._read(sql, [seq, *params, limit], max_bytes=max_bytes)

    def last_seq(self) -> int:
        with self._lock:
            return self._last_seq()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def analyze(self) -> None:
        """Refresh the planner's statistics (after a bulk load: the benchmark's million rows)."""
        with self._lock:
            self._db.execute("ANALYZE")

    def _read(self, sql: str, params: list[Any], *, max_bytes: int | None = None) -> list[Archived]:
        try:
            with self._lock:
                cursor = self._db.execute(sql, params)
                rows = cursor.fetchall() if max_bytes is None else rows_up_to(cursor, max_bytes, -1)
        except sqlite3.Error as exc:
            raise StorageError(f"archive {self.path.name}: {explain(exc)}") from None
        return [_archived(row) for row in rows]


# -- rows ---------------------------------------------------------------------------------


def _id(item: Archived | Event) -> str:
    return item.id if isinstance(item, Event) else item.event.id


def _rows(fresh: list[Archived], last: int) -> tuple[list[tuple[Any, ...]], list[tuple[int, str, int]]]:
    """The events' rows and tag rows: the ingest's Python work, kept to one pass per event."""
    rows, tags = [], []
    for seq, archived in enumerate(fresh, last + 1):
        event, f = archived.event, archived.fields
        lists = (f.users, f.packages, f.containers)
        has_fields = bool(f.users or f.packages or f.containers)
        rows.append(
            (
                seq,
                event.id,
                event.topic,
                micros(event.time),
                event.source,
                event.type,
                event.visibility == "private",
                f.agent,
                dumps(lists).decode() if has_fields else None,
                dumps(event.headers).decode(),
                dumps(event.body).decode(),
                category_of(event.topic),
            )
        )
        if has_fields:
            for kind, values in zip((USERS, PACKAGES, CONTAINERS), lists, strict=True):
                tags.extend([(kind, value, seq) for value in values])
    return rows, tags


def _tag_rows(rows: list[tuple[int, str | None]]) -> list[tuple[int, str, int]]:
    tags = []
    for seq, fields in rows:
        for kind, values in zip(
            (USERS, PACKAGES, CONTAINERS), orjson.loads(fields) if fields else (), strict=False
        ):
            tags.extend((kind, value, seq) for value in values)
    return tags


def _archived(row: tuple[Any, ...]) -> Archived:
    seq, id_, topic, time_us, source, type_, private, agent, fields, headers, body = row
    lists = orjson.loads(fields) if fields else ((), (), ())
    event = Event(
        topic=topic,
        body=loads(body),
        source=source,
        type=type_,
        id=id_,
        time=from_micros(time_us),
        headers=loads(headers),
        visibility="private" if private else "public",
    )
    return Archived(seq, event, fields_of(*lists, agent))


# -- the WHERE clause of a Query ------------------------------------------------------------


def where_clause(query: Query) -> tuple[str, list[Any]]:
    """SQL (ANDed conditions) and its parameters for ``query``; "1" when it has none."""
    parts: list[str] = []
    params: list[Any] = []

    def add(sql: str, *values: Any) -> None:
        parts.append(sql)
        params.extend(values)

    if query.topics:
        sql, values = _topics(query.topics)
        add(sql, *values)
    if query.not_topics:
        sql, values = _topics(query.not_topics)
        add(f"NOT {sql}", *values)
    for column, values in (
        ("category", query.categories),
        ("source", query.sources),
        ("agent", query.agents),
    ):
        if values:
            add(f"{column} IN ({','.join('?' * len(values))})", *values)
    for kind, values in ((USERS, query.users), (PACKAGES, query.packages), (CONTAINERS, query.containers)):
        if values:
            marks = ",".join("?" * len(values))
            add(f"seq IN (SELECT seq FROM tags WHERE kind = {kind} AND value IN ({marks}))", *values)
    if query.contains:
        add("(" + " OR ".join("instr(body, ?) > 0" for _ in query.contains) + ")", *query.contains)
    if query.start is not None:
        add("time >= ?", micros(query.start))
    if query.end is not None:
        add("time <= ?", micros(query.end))
    if not query.include_private:
        add("private = 0")
    return (" AND ".join(parts) or "1"), params


def _topics(patterns: Sequence[str]) -> tuple[str, list[Any]]:
    """Any of ``patterns``: exact topics with IN, the others as a prefix range and an expression."""
    exact = [p for p in patterns if compile_pattern(p).exact is not None]
    ors, params = [], []
    if exact:
        ors.append(f"topic IN ({','.join('?' * len(exact))})")
        params += exact
    for pattern in patterns:
        compiled = compile_pattern(pattern)
        if compiled.exact is not None:
            continue
        category = category_hint(pattern)
        # with the category known, "+topic" keeps the planner on the (category, time) index,
        # which gives rows in time order; without, the topic index narrows by the prefix
        column = "+topic" if category is not None else "topic"
        found: list[str] = [] if category is None else ["category = ?"]
        values: list[Any] = [] if category is None else [category]
        if compiled.regex is None:  # "a.b.#": a.b itself or below a.b.; "#": everything
            if not compiled.prefix:
                return "1", []
            found.append(f"({column} = ? OR ({column} >= ? AND {column} < ?))")
            values += [compiled.prefix, compiled.prefix + ".", prefix_upper(compiled.prefix + ".")]
        else:
            if compiled.prefix:
                found.append(f"{column} >= ? AND {column} < ?")
                values += [compiled.prefix, prefix_upper(compiled.prefix)]
            found.append("topic_matches(?, topic)")
            values.append(pattern)
        ors.append("(" + " AND ".join(found) + ")")
        params += values
    return "(" + " OR ".join(ors) + ")", params


__all__ = ["SqliteArchive", "where_clause"]
