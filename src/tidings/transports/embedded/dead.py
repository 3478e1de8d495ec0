"""The embedded broker's dead letters, for an operator (``tidings dead``): the rows of ``<queue>.dead``.

Dead letters are rows of the ``messages`` table like any queue's, so each operation is one
transaction, committed durably (fsynced) as every operator change is. A requeued message goes
to the back of its queue as a new row — its tries at 0, its metadata without the dead letter's
headers — and its dead row is deleted in the same commit: it is never in neither place. A dead
letter's id is its row number.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from tidings.errors import NotFound
from tidings.transport import DeadLetter
from tidings.transports.embedded import store

if TYPE_CHECKING:
    from tidings.transports.embedded.transport import EmbeddedTransport


class EmbeddedDeadLetters:
    """:class:`~tidings.transport.DeadLetters` of one embedded broker file."""

    def __init__(self, broker: EmbeddedTransport) -> None:
        self.broker = broker

    async def count(self, queue: str, limit: int) -> int:
        def look(db: sqlite3.Connection) -> int:
            return len(store.rows(db, self._dead(db, queue), limit, bodies=False))

        found: int = await self.broker.read(look)
        return found

    async def list(self, queue: str, limit: int) -> list[DeadLetter]:
        def look(db: sqlite3.Connection) -> list[DeadLetter]:
            return [_letter(row) for row in store.rows(db, self._dead(db, queue), limit)]

        found: list[DeadLetter] = await self.broker.read(look)
        return found

    async def get(self, queue: str, id: str) -> DeadLetter | None:  # noqa: A002
        def look(db: sqlite3.Connection) -> DeadLetter | None:
            # metadata first (small): the body only of the one asked for
            for row_id, payload, visible_at, meta, _ in store.rows(db, self._dead(db, queue), bodies=False):
                if _letter((row_id, payload, visible_at, meta, b"")).matches(id):
                    return _letter((row_id, payload, visible_at, meta, store.body(db, payload)))
            return None

        found: DeadLetter | None = await self.broker.read(look)
        return found

    async def requeue(self, queue: str, ids: Sequence[str] | None) -> int:
        def move(db: sqlite3.Connection) -> int:
            dead = self._dead(db, queue)
            chosen = _chosen(store.rows(db, dead, bodies=False), ids, dead)
            now = time.time()
            for row in chosen:
                letter = _letter(row)
                meta = store.encode_meta(letter.fresh(), letter.message.exchange or "")
                store.revive(db, row[1], queue, meta, now)
            return store.delete(db, [row[0] for row in chosen])

        moved: int = await self.broker.commit(move)
        self.broker.doorbell.ring()  # consumers of the queue, in any process, look at once
        return moved

    async def drop(self, queue: str, ids: Sequence[str] | None) -> int:
        def delete(db: sqlite3.Connection) -> int:
            dead = self._dead(db, queue)
            chosen = _chosen(store.rows(db, dead, bodies=False), ids, dead)
            return store.delete(db, [row[0] for row in chosen])

        dropped: int = await self.broker.commit(delete)
        return dropped

    def _dead(self, db: sqlite3.Connection, queue: str) -> str:
        """``queue``'s dead letters' queue, which exists once the queue was declared."""
        dead = f"{queue}.dead"
        if not store.has_queue(db, dead):
            raise NotFound(f"the embedded broker {self.broker.path.name} has no queue {dead!r}")
        return dead


def _letter(row: store.Row) -> DeadLetter:
    row_id, _, visible_at, meta, body = row
    # a dead row is never leased by tidings itself: its visibility is when it was dead-lettered
    return DeadLetter.read(
        str(row_id), store.decode_meta(meta, body), dead_at=datetime.fromtimestamp(visible_at, UTC)
    )


def _chosen(rows: list[store.Row], ids: Sequence[str] | None, dead: str) -> list[store.Row]:
    """The rows ``ids`` name (all for None); NotFound, before anything changes, for an id naming none."""
    if ids is None:
        return rows
    letters = [(row, _letter(row)) for row in rows]
    missing = [wanted for wanted in ids if not any(letter.matches(wanted) for _, letter in letters)]
    if missing:
        raise NotFound(f"no dead letter {', '.join(map(repr, missing))} in {dead!r}")
    return [row for row, letter in letters if any(letter.matches(wanted) for wanted in ids)]
