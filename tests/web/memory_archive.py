"""An in-memory :class:`tidings.archive.Archive`: a test double of the protocol, nothing more.

It does what the protocol's docstrings say, the straightforward way (a list and a scan), so
that the web app's tests exercise the protocol and not one store's quirks; the fixture
``archive`` in conftest.py is the one place that picks the store.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Sequence
from datetime import datetime

from tidings.archive import Archived, NumberedPage, Order, Page, Query
from tidings.event import Event, dumps
from tidings.topics import topic_matches


def _any(wanted: Sequence[str], have: Sequence[str]) -> bool:
    return not wanted or any(value in have for value in wanted)


def matches(item: Archived, query: Query) -> bool:
    event = item.event
    if event.visibility == "private" and not query.include_private:
        return False
    if query.topics and not any(topic_matches(p, event.topic) for p in query.topics):
        return False
    if any(topic_matches(p, event.topic) for p in query.not_topics):
        return False
    if query.start is not None and event.time < query.start:
        return False
    if query.end is not None and event.time > query.end:
        return False
    text = dumps(event.body).decode()
    return (
        _any(query.categories, [item.category])
        and _any(query.users, item.fields.users)
        and _any(query.packages, item.fields.packages)
        and _any(query.containers, item.fields.containers)
        and _any(query.agents, [item.fields.agent] if item.fields.agent else [])
        and _any(query.sources, [event.source])
        and (not query.contains or any(part in text for part in query.contains))
    )


def _key(item: Archived) -> tuple[datetime, int]:
    return (item.event.time, item.seq)


def _cursor(item: Archived) -> str:
    return f"{item.event.time.timestamp():.6f}:{item.seq}"


def _after(cursor: str) -> tuple[float, int]:
    moment, _, seq = cursor.partition(":")
    try:
        return float(moment), int(seq)
    except ValueError:
        raise ValueError(f"not a cursor of this archive: {cursor!r}") from None


class MemoryArchive:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: list[Archived] = []  # in seq order
        self._ids: dict[str, Archived] = {}
        self._next = 1  # seqs are never reused, even after a purge

    def ingest(self, events: Sequence[Archived | Event]) -> int:
        with self._lock:
            new = 0
            for one in events:
                item = one if isinstance(one, Archived) else Archived(0, one)
                if item.event.id in self._ids:
                    continue
                stored = Archived(self._next, item.event, item.fields)
                self._next += 1
                self._items.append(stored)
                self._ids[stored.event.id] = stored
                new += 1
            return new

    def get(self, event_id: str, *, include_private: bool = False) -> Archived | None:
        with self._lock:
            item = self._ids.get(event_id)
        if item is None or (item.event.visibility == "private" and not include_private):
            return None
        return item

    def _matching(self, query: Query, order: Order) -> list[Archived]:
        with self._lock:
            items = [item for item in self._items if matches(item, query)]
        return sorted(items, key=_key, reverse=order == "desc")

    def search(
        self, query: Query, *, limit: int = 100, cursor: str | None = None, order: Order = "desc"
    ) -> Page:
        items = self._matching(query, order)
        total = len(items)
        if cursor is not None:
            moment, seq = _after(cursor)

            def beyond(item: Archived) -> bool:
                key = (round(item.event.time.timestamp(), 6), item.seq)
                return key < (moment, seq) if order == "desc" else key > (moment, seq)

            items = [item for item in items if beyond(item)]
        shown = items[:limit]
        following = _cursor(shown[-1]) if len(items) > limit else None
        return Page(shown, following, total)

    def numbered(
        self, query: Query, *, page: int = 1, rows_per_page: int = 25, order: Order = "desc"
    ) -> NumberedPage:
        items = self._matching(query, order)
        start = (page - 1) * rows_per_page
        return NumberedPage(
            items[start : start + rows_per_page], len(items), math.ceil(len(items) / rows_per_page)
        )

    def since(self, seq: int, query: Query, *, limit: int = 500) -> list[Archived]:
        with self._lock:
            later = self._items[bisect.bisect_right(self._items, seq, key=lambda item: item.seq) :]
        return [item for item in later if matches(item, query)][:limit]

    def last_seq(self) -> int:
        with self._lock:
            return self._next - 1

    def purge(self, older_than: datetime) -> int:
        with self._lock:
            gone = [item for item in self._items if item.event.time < older_than]
            for item in gone:
                del self._ids[item.event.id]
            self._items = [item for item in self._items if item.event.time >= older_than]
            return len(gone)

    def close(self) -> None:
        pass
