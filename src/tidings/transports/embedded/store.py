"""The embedded broker's tables and the SQL that moves messages through them.

A message sent to several queues is stored once: its routing metadata and body
live in ``payloads`` (with a count of the queue rows that point at it), and each
queue gets a small row in ``messages`` holding only what changes as the message
moves — when it is visible, how often it was tried, who leases it. Leasing,
renewing and releasing rewrite those small rows, never the bodies; a payload is
deleted with the last queue row that points at it.

Every function here runs inside a write transaction the caller opened.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import MISSING, fields
from typing import Any

import orjson

from tidings.event import dumps, format_time, loads, parse_time
from tidings.sqlite import rollback
from tidings.transport import WireMessage

SCHEMA = """
CREATE TABLE IF NOT EXISTS exchanges (name TEXT PRIMARY KEY, type TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS queues (name TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS bindings (
    queue TEXT NOT NULL, exchange TEXT NOT NULL, pattern TEXT NOT NULL,
    PRIMARY KEY (queue, exchange, pattern)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS topology (version INTEGER NOT NULL);
INSERT INTO topology SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM topology);
CREATE TABLE IF NOT EXISTS payloads (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    refs INTEGER NOT NULL,  -- rows of messages pointing here
    meta BLOB NOT NULL,
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: a stale settle must not hit a newer message
    queue TEXT NOT NULL,
    visible_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,  -- tries settled so far (a retry sets it)
    lease TEXT,
    payload INTEGER NOT NULL,
    leased INTEGER NOT NULL DEFAULT 0  -- leases since the last retry: above 1, it was handed out before
);
CREATE INDEX IF NOT EXISTS messages_by_queue ON messages (queue, id);
"""

#: rows per multi-row INSERT: 3 parameters a row stays under the oldest SQLite's limit of 999
_ROWS_PER_STATEMENT = 300

#: a leased message goes back, visible now, as if it had not been handed out
RELEASE = (
    "UPDATE messages SET visible_at = ?, leased = max(leased - 1, 0), lease = NULL WHERE id = ? AND lease = ?"
)
RENEW = "UPDATE messages SET visible_at = ? WHERE id = ? AND lease = ?"

Leased = tuple[int, int, int, int, bytes, bytes]  # message id, attempts, leased, payload id, meta, body


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


def encode_meta(message: WireMessage, exchange: str) -> bytes:
    # only what differs from WireMessage's defaults: less JSON to write, read and store
    meta = {name: value for name in _META_FIELDS if (value := getattr(message, name)) != _META_DEFAULTS[name]}
    meta["exchange"] = exchange
    if message.timestamp is not None:
        meta["timestamp"] = format_time(message.timestamp)
    return dumps(meta)


def decode_meta(meta: bytes, body: bytes) -> WireMessage:
    stored = loads(meta)
    stamp = stored.pop("timestamp", None)
    return WireMessage(body=body, timestamp=parse_time(stamp) if stamp else None, **stored)


def create(db: sqlite3.Connection) -> None:
    """Create the tables, first moving a broker file of the one-table layout over.

    All in one write transaction, so that two processes opening an old file at once
    cannot both move it.
    """
    db.execute("BEGIN IMMEDIATE")
    try:
        columns = {row[1] for row in db.execute("PRAGMA table_info(messages)")}
        if "body" in columns:  # made by tidings before payloads were shared: keep every message
            db.execute("ALTER TABLE messages RENAME TO messages_before_payloads")
            db.execute("DROP INDEX IF EXISTS messages_by_queue")
        elif columns and "leased" not in columns:
            # made before leases were counted apart from tries: its attempts counted leases, which
            # now read as tries (a message handed out before comes back as its next attempt)
            db.execute("ALTER TABLE messages ADD COLUMN leased INTEGER NOT NULL DEFAULT 0")
        _run_script(db, SCHEMA)
        if "body" in columns:
            _run_script(db, _MOVE_TO_PAYLOADS)
        db.execute("COMMIT")
    except BaseException:
        rollback(db)
        raise


_MOVE_TO_PAYLOADS = """
INSERT INTO payloads (id, refs, meta, body) SELECT id, 1, meta, body FROM messages_before_payloads;
INSERT INTO messages (id, queue, visible_at, attempts, lease, payload)
    SELECT id, queue, visible_at, attempts, lease, id FROM messages_before_payloads;
DROP TABLE messages_before_payloads;
"""


def _run_script(db: sqlite3.Connection, script: str) -> None:
    # executescript would commit the open transaction first; these statements hold no ';'
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)


def insert(db: sqlite3.Connection, now: float, routed: Sequence[tuple[Sequence[str], bytes, bytes]]) -> None:
    """Store each (queues, meta, body) once and put a row for it in each of its queues."""
    for start in range(0, len(routed), _ROWS_PER_STATEMENT):
        chunk = routed[start : start + _ROWS_PER_STATEMENT]
        params = [value for queues, meta, body in chunk for value in (len(queues), meta, body)]
        last = db.execute(_insert_payloads_sql(len(chunk)), params).lastrowid or 0
        # one writer and AUTOINCREMENT: the payloads of one statement have consecutive ids
        first = last - len(chunk) + 1
        db.executemany(
            "INSERT INTO messages (queue, visible_at, payload) VALUES (?, ?, ?)",
            [(queue, now, first + n) for n, (queues, _, _) in enumerate(chunk) for queue in queues],
        )


def _insert_payloads_sql(rows: int) -> str:
    return "INSERT INTO payloads (refs, meta, body) VALUES " + ",".join(["(?,?,?)"] * rows)


def lease(
    db: sqlite3.Connection, queue: str, token: str, now: float, until: float, limit: int
) -> list[Leased]:
    """Take up to ``limit`` visible messages of ``queue`` in order, counting the lease."""
    taken = db.execute(
        "UPDATE messages SET visible_at = ?, leased = leased + 1, lease = ? WHERE id IN "
        "(SELECT id FROM messages WHERE queue = ? AND visible_at <= ? ORDER BY id LIMIT ?) "
        "RETURNING id, attempts, leased, payload",
        (until, token, queue, now, limit),
    ).fetchall()
    if not taken:
        return []
    stored = {
        payload: (meta, body)
        for payload, meta, body in db.execute(
            "SELECT id, meta, body FROM payloads WHERE id IN (SELECT value FROM json_each(?))",
            (_json_ids(payload for *_, payload in taken),),
        )
    }
    return sorted(
        (row_id, attempts, leased, payload, *stored[payload]) for row_id, attempts, leased, payload in taken
    )


def remove(db: sqlite3.Connection, row_ids: Iterable[int], token: str) -> list[int]:
    """Delete leased rows that ``token`` still holds; the ids of those it deleted."""
    gone = db.execute(
        "DELETE FROM messages WHERE id IN (SELECT value FROM json_each(?)) AND lease = ? "
        "RETURNING id, payload",
        (_json_ids(row_ids), token),
    ).fetchall()
    _drop_refs(db, [payload for _, payload in gone])
    return [row_id for row_id, _ in gone]


def requeue(db: sqlite3.Connection, row_id: int, token: str, visible_at: float, tries: int) -> None:
    """Move a leased message to the back of its queue, visible from ``visible_at``, ``tries`` made."""
    moved = db.execute(
        "INSERT INTO messages (queue, visible_at, attempts, payload) "
        "SELECT queue, ?, ?, payload FROM messages WHERE id = ? AND lease = ?",
        (visible_at, tries, row_id, token),
    ).rowcount
    if moved:  # the new row took over the old one's reference
        db.execute("DELETE FROM messages WHERE id = ?", (row_id,))


def dead_letter(
    db: sqlite3.Connection, row_id: int, token: str, queue: str, now: float, meta: bytes, body: bytes
) -> None:
    """Move a leased message to ``queue`` (a dead-letter queue) with new metadata, count reset."""
    if remove(db, [row_id], token):  # only the lease holder may move it
        insert(db, now, [((queue,), meta, body)])


# -- an operator's view of a queue (``tidings dead``) ----------------------------------------

#: a queue's row: message id, payload id, when it became visible, meta, body (b"" unless asked for)
Row = tuple[int, int, float, bytes, bytes]


def has_queue(db: sqlite3.Connection, queue: str) -> bool:
    return db.execute("SELECT 1 FROM queues WHERE name = ?", (queue,)).fetchone() is not None


def rows(db: sqlite3.Connection, queue: str, limit: int = -1, *, bodies: bool = True) -> list[Row]:
    """The rows of ``queue`` in order (``limit`` -1: all), leased or not; bodies only if asked for."""
    body = "p.body" if bodies else "x''"
    found: list[Row] = db.execute(
        f"SELECT m.id, m.payload, m.visible_at, p.meta, {body} FROM messages m "
        "JOIN payloads p ON p.id = m.payload WHERE m.queue = ? ORDER BY m.id LIMIT ?",
        (queue, limit),
    ).fetchall()
    return found


def body(db: sqlite3.Connection, payload: int) -> bytes:
    found: bytes = db.execute("SELECT body FROM payloads WHERE id = ?", (payload,)).fetchone()[0]
    return found


def revive(db: sqlite3.Connection, payload: int, queue: str, meta: bytes, now: float) -> None:
    """A copy of a stored message, with new metadata, at the back of ``queue``, its tries at 0."""
    copied = db.execute(
        "INSERT INTO payloads (refs, meta, body) SELECT 1, ?, body FROM payloads WHERE id = ?",
        (meta, payload),
    ).lastrowid
    db.execute("INSERT INTO messages (queue, visible_at, payload) VALUES (?, ?, ?)", (queue, now, copied))


def delete(db: sqlite3.Connection, row_ids: Iterable[int]) -> int:
    """Delete rows whoever leases them (an operator's decision); how many went."""
    gone = db.execute(
        "DELETE FROM messages WHERE id IN (SELECT value FROM json_each(?)) RETURNING payload",
        (_json_ids(row_ids),),
    ).fetchall()
    _drop_refs(db, [payload for (payload,) in gone])
    return len(gone)


def _drop_refs(db: sqlite3.Connection, payloads: list[int]) -> None:
    if not payloads:
        return
    counts = Counter(payloads)
    db.executemany("UPDATE payloads SET refs = refs - ? WHERE id = ?", [(n, p) for p, n in counts.items()])
    db.execute(
        "DELETE FROM payloads WHERE id IN (SELECT value FROM json_each(?)) AND refs <= 0",
        (_json_ids(counts),),
    )


def _json_ids(ids: Iterable[int]) -> str:
    return orjson.dumps(list(ids)).decode()
