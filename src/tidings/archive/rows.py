"""What both stores share: times as integers, keyset cursors, events back from their columns."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from functools import lru_cache

from tidings.archive import Archived, SearchFields
from tidings.errors import InvalidQuery
from tidings.event import Event

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: rows a purge deletes per transaction: short transactions, so ingest never waits long
PURGE_BATCH = 1000


_MICROSECOND = timedelta(microseconds=1)


def micros(moment: datetime) -> int:
    """Microseconds since the epoch: exact (a float would round), and compared as integers."""
    return (moment - _EPOCH) // _MICROSECOND  # aware datetimes subtract in UTC


#: the times an event can have, as micros: what a datetime holds (years 1 to 9999)
_TIMES = range(micros(datetime.min.replace(tzinfo=UTC)), micros(datetime.max.replace(tzinfo=UTC)) + 1)


@lru_cache(maxsize=4096)
def category_of(topic: str) -> str:
    """:attr:`Archived.category` of a topic, remembered: a bus sees the same topics again and again."""
    return Archived(0, Event(topic, {})).category


def from_micros(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=value)


def encode_cursor(time_us: int, seq: int) -> str:
    """The opaque cursor of a row: its (time, seq), the key the search orders by."""
    return base64.urlsafe_b64encode(f"{time_us}:{seq}".encode()).decode().rstrip("=")


def cursor_after(item: Archived) -> str:
    """The cursor of the page that goes on after ``item``."""
    return encode_cursor(micros(item.event.time), item.seq)


def decode_cursor(cursor: str) -> tuple[int, int]:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        time_us, seq = (int(part) for part in text.split(":"))
        # a time a datetime holds (PostgreSQL's search makes one of it), a seq a store's integers hold
        if not (time_us in _TIMES and 0 <= seq < 2**63):
            raise ValueError(text)
        return time_us, seq
    except (ValueError, UnicodeDecodeError):
        raise InvalidQuery(f"cursor {cursor[:40]!r} is not one this archive gave out") from None


def as_archived(item: Archived | Event) -> Archived:
    return item if isinstance(item, Archived) else Archived(0, item)


def unique_new(items: Sequence[Archived | Event], known: set[str]) -> list[Archived]:
    """The items whose event ids are neither ``known`` nor repeated earlier in the batch."""
    seen = set(known)
    fresh = []
    for item in items:
        archived = as_archived(item)
        if archived.event.id not in seen:
            seen.add(archived.event.id)
            fresh.append(archived)
    return fresh


def check_page(page: int, rows_per_page: int) -> None:
    if page < 1 or rows_per_page < 1:
        raise InvalidQuery(f"page and rows_per_page start at 1 (got page {page}, rows {rows_per_page})")


def fields_of(
    users: Sequence[str], packages: Sequence[str], containers: Sequence[str], agent: str | None
) -> SearchFields:
    return SearchFields(tuple(users), tuple(packages), tuple(containers), agent)
