"""The archive on PostgreSQL (psycopg 3): ``[archive] store = "postgresql"``, ``url = ...``.

``events`` is partitioned by month on the event's time; a month's partition is created by the
ingest that first needs it. Body and headers are JSONB, users/packages/containers text arrays
with GIN indexes; btree indexes on (topic, time, seq), (time, seq), (category, ...) and (source,
...) serve a topic + time window and keyset pages. The topic column uses the "C" collation so
that a pattern's literal prefix is a plain byte range on its index.

Event ids are unique in ``event_ids`` (a unique index on a partitioned table must include the
partition key, and an event's time is not part of its identity). Writers take one advisory lock
per transaction, so seqs become visible in the order they were given: a live stream that read
seq n never finds a smaller one committed later.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import set_json_dumps, set_json_loads

from tidings.archive import Archived, NumberedPage, Order, Page, Query
from tidings.archive.patterns import category_hint, compile_pattern, prefix_upper
from tidings.archive.rows import (
    PURGE_BATCH,
    check_page,
    cursor_after,
    decode_cursor,
    fields_of,
    from_micros,
    unique_new,
)
from tidings.errors import StorageError, TidingsError
from tidings.event import Event, dumps, loads
from tidings.redact import redact

SCHEMA = """
CREATE TABLE IF NOT EXISTS archive_meta (key text PRIMARY KEY, value bigint NOT NULL);
INSERT INTO archive_meta VALUES ('seq', 0) ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS event_ids (id text PRIMARY KEY, seq bigint NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    seq bigint NOT NULL,
    id text NOT NULL,
    topic text COLLATE "C" NOT NULL,
    time timestamptz NOT NULL,
    source text NOT NULL,
    type text,
    private boolean NOT NULL,
    category text NOT NULL,
    agent text,
    users text[] NOT NULL,
    packages text[] NOT NULL,
    containers text[] NOT NULL,
    headers jsonb NOT NULL,
    body jsonb NOT NULL
) PARTITION BY RANGE (time);
CREATE INDEX IF NOT EXISTS events_time ON events (time, seq);
CREATE INDEX IF NOT EXISTS events_topic_time ON events (topic, time, seq);
CREATE INDEX IF NOT EXISTS events_category_time ON events (category, time, seq);
CREATE INDEX IF NOT EXISTS events_source_time ON events (source, time, seq);
CREATE INDEX IF NOT EXISTS events_seq ON events (seq);
CREATE INDEX IF NOT EXISTS events_users ON events USING gin (users);
CREATE INDEX IF NOT EXISTS events_packages ON events USING gin (packages);
CREATE INDEX IF NOT EXISTS events_containers ON events USING gin (containers);
"""
_COLUMNS = "seq, id, topic, time, source, type, private, agent, users, packages, containers, headers, body"
_COPY = f"COPY events ({_COLUMNS}, category) FROM STDIN"
_TYPES = ["int8", "text", "text", "timestamptz", "text", "text", "bool", "text"]
_TYPES += ["text[]", "text[]", "text[]", "jsonb", "jsonb", "text"]
#: the advisory lock every writer takes (any constant: it only has to be the same for all)
_WRITERS = 0x7469646E


class PostgresArchive:
    """The Archive protocol on PostgreSQL; ``schema``: the schema to keep it in (tests use their own)."""

    def __init__(self, url: str, *, schema: str | None = None) -> None:
        self.url, self.schema = url, schema
        self._lock = threading.Lock()
        self._months: set[tuple[int, int]] = set()
        self._db = self._connect()
        with self._transaction() as cur:
            if schema:
                cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
                cur.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_WRITERS,))  # two first starts at once
            cur.execute(SCHEMA)

    def _connect(self) -> psycopg.Connection[Any]:
        """A connection with the session's settings (at the start, and after the last one broke:
        a server restarted, a backend terminated)."""
        try:
            db = psycopg.connect(self.url, autocommit=False)
            set_json_loads(loads, db)  # integers of any width, exactly (as tidings.event reads them)
            set_json_dumps(dumps, db)
            with db.cursor() as cur:
                cur.execute("SET TIME ZONE 'UTC'")
                # a page costs a millisecond; compiling it (the planner's cost of a big partitioned
                # scan passes jit_above_cost) took 40-400 ms
                cur.execute("SET jit = off")
                if self.schema:
                    cur.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))
            db.commit()
        except psycopg.Error as exc:
            raise StorageError(f"cannot connect to the archive at {redact(self.url)}: {_line(exc)}") from None
        return db

    def _usable_connection(self) -> psycopg.Connection[Any]:
        """The connection, opened again when the last one broke (under the lock)."""
        if self._db.closed or self._db.broken:
            self._db.close()
            self._db = self._connect()
        return self._db

    # -- writing ------------------------------------------------------------------------

    def ingest(self, events: Sequence[Archived | Event]) -> int:
        if not events:
            return 0
        fresh = unique_new(events, set())
        with self._transaction() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_WRITERS,))
            # under the writers' lock: the ids already archived, and the last seq, cannot change
            cur.execute("SELECT id FROM event_ids WHERE id = ANY(%s)", ([a.event.id for a in fresh],))
            known = {row[0] for row in cur.fetchall()}
            new = [a for a in fresh if a.event.id not in known]
            if not new:
                return 0
            cur.execute("SELECT value FROM archive_meta WHERE key = 'seq'")
            last = int(cur.fetchone()[0])  # type: ignore[index]
            seqs = {a.event.id: seq for seq, a in enumerate(new, last + 1)}
            cur.execute(
                "INSERT INTO event_ids (id, seq) SELECT * FROM unnest(%s::text[], %s::int8[])",
                (list(seqs), list(seqs.values())),
            )
            months = self._partitions(cur, {(a.event.time.year, a.event.time.month) for a in new})
            with cur.copy(_COPY) as copy:
                copy.set_types(_TYPES)
                for archived in new:
                    copy.write_row(_row(seqs[archived.event.id], archived))
            cur.execute("UPDATE archive_meta SET value = %s WHERE key = 'seq'", (last + len(new),))
        # known to exist once committed: a batch that failed rolled its partitions back too
        self._months |= months
        return len(new)

    def _partitions(self, cur: psycopg.Cursor[Any], months: set[tuple[int, int]]) -> set[tuple[int, int]]:
        """Create the monthly partitions these events go to (once per process and month); the
        months, to remember once the transaction is committed."""
        for year, month in sorted(months - self._months):
            start = datetime(year, month, 1, tzinfo=UTC)
            name = sql.Identifier(f"events_{year:04d}_{month:02d}")
            cur.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {} PARTITION OF events FOR VALUES FROM ({}) TO ({})"
                ).format(name, sql.Literal(start), _month_end(year, month))
            )
        return months

    def purge(self, older_than: datetime) -> int:
        total = 0
        while True:
            with self._transaction() as cur:
                cur.execute(
                    "WITH gone AS (DELETE FROM events WHERE (time, seq) IN "
                    "(SELECT time, seq FROM events WHERE time < %s LIMIT %s) RETURNING id) "
                    "DELETE FROM event_ids WHERE id IN (SELECT id FROM gone)",
                    (older_than, PURGE_BATCH),
                )
                done = cur.rowcount
            total += done
            if done < PURGE_BATCH:
                return total

    # -- reading ------------------------------------------------------------------------

    def get(self, event_id: str, *, include_private: bool = False) -> Archived | None:
        if "\x00" in event_id:
            return None  # no id holds one (PostgreSQL's text cannot), and asking would be an error
        rows = self._read(
            f"SELECT {_COLUMNS} FROM events WHERE seq = (SELECT seq FROM event_ids WHERE id = %s)", [event_id]
        )
        if not rows or (rows[0].event.visibility == "private" and not include_private):
            return None
        return rows[0]

    def search(
        self, query: Query, *, limit: int = 100, cursor: str | None = None, order: Order = "desc"
    ) -> Page:
        where, params = where_clause(query)
        # the planner's statistics count private rows too: a public reader's estimate would tell
        # how many private events match (and that they exist), so only readers of all get one
        estimate = self._estimate(where, params) if cursor is None and query.include_private else None
        if cursor is not None:
            time_us, seq = decode_cursor(cursor)
            op = "<" if order == "desc" else ">"
            where += f" AND (time, seq) {op} (%s, %s)"
            params += [from_micros(time_us), seq]
        direction = "DESC" if order == "desc" else "ASC"
        text = (
            f"SELECT {_COLUMNS} FROM events WHERE {where} ORDER BY time {direction}, seq {direction} LIMIT %s"
        )
        by_fields = query.users or query.packages or query.containers
        items = self._read(text, [*params, limit + 1], ordered=not by_fields)
        more = len(items) > limit
        items = items[:limit]
        last = items[-1] if items else None
        next_cursor = cursor_after(last) if more and last else None
        return Page(items, next_cursor, estimate)

    def _estimate(self, where: str, params: list[Any]) -> int | None:
        """The planner's row estimate (EXPLAIN): never a count, so never slower than the page."""
        with self._transaction() as cur:
            cur.execute(f"EXPLAIN (FORMAT JSON) SELECT 1 FROM events WHERE {where}", params)
            plan = cur.fetchone()
        try:
            return int(plan[0][0]["Plan"]["Plan Rows"]) if plan else None
        except (KeyError, IndexError, TypeError, ValueError):
            return None

    def numbered(
        self, query: Query, *, page: int = 1, rows_per_page: int = 25, order: Order = "desc"
    ) -> NumberedPage:
        check_page(page, rows_per_page)
        where, params = where_clause(query)
        with self._transaction() as cur:
            cur.execute(f"SELECT count(*) FROM events WHERE {where}", params)
            total = cur.fetchone()[0]  # type: ignore[index]
        direction = "DESC" if order == "desc" else "ASC"
        text = (
            f"SELECT {_COLUMNS} FROM events WHERE {where} "
            f"ORDER BY time {direction}, seq {direction} LIMIT %s OFFSET %s"
        )
        items = self._read(text, [*params, rows_per_page, (page - 1) * rows_per_page])
        return NumberedPage(items, total, -(-total // rows_per_page))

    def since(
        self, seq: int, query: Query, *, limit: int = 500, max_bytes: int | None = None
    ) -> list[Archived]:
        where, params = where_clause(query)
        text = f"SELECT {_COLUMNS} FROM events WHERE seq > %s AND {where} ORDER BY seq LIMIT %s"
        if max_bytes is None:
            return self._read(text, [seq, *params, limit])
        # the server counts the bodies' bytes (as text) and sends only the rows that start
        # within the budget: a client-side cursor would receive the whole batch first
        sized = (
            f"SELECT {_COLUMNS} FROM (SELECT {_COLUMNS}, octet_length(body::text) AS size, "
            f"sum(octet_length(body::text)) OVER (ORDER BY seq) AS upto FROM ({text}) AS batch) AS sized "
            "WHERE upto - size < %s ORDER BY seq"
        )
        return self._read(sized, [seq, *params, limit, max_bytes])

    def last_seq(self) -> int:
        with self._transaction() as cur:
            cur.execute("SELECT value FROM archive_meta WHERE key = 'seq'")
            row = cur.fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def analyze(self) -> None:
        with self._transaction() as cur:
            cur.execute("ANALYZE events")

    def _read(self, text: str, params: list[Any], *, ordered: bool = False) -> list[Archived]:
        with self._transaction() as cur:
            if ordered:
                # a keyset page wants the rows its indexes give in (time, seq) order, stopping at
                # the limit; the planner multiplies the selectivities of a pattern's conditions
                # into a few rows and prefers to fetch them all and sort (~0.8 s at 1M rows
                # against ~1 ms). Searches by users, packages or containers keep their GIN
                # indexes, which only bitmap scans use.
                cur.execute("SET LOCAL enable_sort = off")
                cur.execute("SET LOCAL enable_bitmapscan = off")
            cur.execute(text, params)  # type: ignore[arg-type]
            rows = cur.fetchall()
        return [_archived(row) for row in rows]

    def _transaction(self) -> _Transaction:
        return _Transaction(self)


class _Transaction:
    """One transaction under the connection's lock; a database error, or any error but one of
    tidings' own, becomes a StorageError."""

    def __init__(self, archive: PostgresArchive) -> None:
        self.archive = archive

    def __enter__(self) -> psycopg.Cursor[Any]:
        self.archive._lock.acquire()
        try:
            self.cur = self.archive._usable_connection().cursor()
        except BaseException as exc:
            self.archive._lock.release()  # held on, every later call would wait for it for ever
            if isinstance(exc, psycopg.Error):
                raise StorageError(f"archive (PostgreSQL): {_line(exc)}") from None
            raise
        return self.cur

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        db = self.archive._db
        try:
            if exc is None:
                db.commit()
            else:
                db.rollback()
        except psycopg.Error as failed:
            exc = exc or failed
        finally:
            self.cur.close()
            self.archive._lock.release()
        if isinstance(exc, psycopg.Error):
            raise StorageError(f"archive (PostgreSQL): {_line(exc)}") from None
        if isinstance(exc, Exception) and not isinstance(exc, TidingsError):
            # anything else is a bug of ours or a library's on some value of an event (December
            # 9999's month end was a ValueError): rolled back, it is the store refusing that batch,
            # and one event at fault becomes a dead letter instead of stopping the dispatcher
            raise StorageError(f"archive (PostgreSQL): {type(exc).__name__}: {_line(exc)}") from exc


def _month_end(year: int, month: int) -> sql.Composable:
    """The upper bound of a month's partition: the next month's start; December 9999, the last
    month a datetime holds, has none (a datetime of year 10000 is a ValueError), so MAXVALUE."""
    if (year, month) == (9999, 12):
        return sql.SQL("MAXVALUE")
    return sql.Literal(datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC))


def _line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _row(seq: int, archived: Archived) -> tuple[Any, ...]:
    event, f = archived.event, archived.fields
    return (
        seq,
        event.id,
        event.topic,
        event.time,
        event.source,
        event.type,
        event.visibility == "private",
        f.agent,
        list(f.users),
        list(f.packages),
        list(f.containers),
        event.headers,  # written by the connection's JSON dumper: tidings.event.dumps
        event.body,
        archived.category,
    )


def _archived(row: tuple[Any, ...]) -> Archived:
    seq, id_, topic, time, source, type_, private, agent, users, packages, containers, headers, body = row
    event = Event(
        topic=topic,
        body=body,
        source=source,
        type=type_,
        id=id_,
        time=time.astimezone(UTC),
        headers=headers,
        visibility="private" if private else "public",
    )
    return Archived(seq, event, fields_of(users, packages, containers, agent))


# -- the WHERE clause of a Query ------------------------------------------------------------


def where_clause(query: Query) -> tuple[str, list[Any]]:
    parts: list[str] = []
    params: list[Any] = []

    def add(text: str, *values: Any) -> None:
        parts.append(text)
        params.extend(values)

    if query.topics:
        add(*_topics(query.topics))
    if query.not_topics:
        text, *values = _topics(query.not_topics)
        add(f"NOT {text}", *values)
    for column, values in (
        ("category", query.categories),
        ("source", query.sources),
        ("agent", query.agents),
    ):
        if values:
            add(f"{column} = ANY(%s)", list(values))
    for column, values in (
        ("users", query.users),
        ("packages", query.packages),
        ("containers", query.containers),
    ):
        if values:
            add(f"{column} && %s::text[]", list(values))
    if query.contains:
        add("(" + " OR ".join("strpos(body::text, %s) > 0" for _ in query.contains) + ")", *query.contains)
    if query.start is not None:
        add("time >= %s", query.start)
    if query.end is not None:
        add("time <= %s", query.end)
    if not query.include_private:
        add("NOT private")
    return (" AND ".join(parts) or "true"), params


def _topics(patterns: Sequence[str]) -> tuple[Any, ...]:
    exact = [p for p in patterns if compile_pattern(p).exact is not None]
    ors: list[str] = []
    params: list[Any] = []
    if exact:
        ors.append("topic = ANY(%s)")
        params.append(exact)
    for pattern in patterns:
        compiled = compile_pattern(pattern)
        if compiled.exact is not None:
            continue
        category = category_hint(pattern)  # lets the (category, time, seq) index give time order
        found: list[str] = [] if category is None else ["category = %s"]
        values: list[Any] = [] if category is None else [category]
        if compiled.regex is None:
            if not compiled.prefix:
                return ("true",)
            found.append("(topic = %s OR (topic >= %s AND topic < %s))")
            values += [compiled.prefix, compiled.prefix + ".", prefix_upper(compiled.prefix + ".")]
        else:
            if compiled.prefix:
                found.append("topic >= %s AND topic < %s")
                values += [compiled.prefix, prefix_upper(compiled.prefix)]
            found.append("('.' || topic) ~ %s")
            values.append(compiled.regex)
        ors.append("(" + " AND ".join(found) + ")")
        params += values
    return ("(" + " OR ".join(ors) + ")", *params)
