"""Request parameters as an archive :class:`~tidings.archive.Query`, and events as JSON.

datagrepper's /raw is the model (its reference, ``datagrepper/docs/reference.rst``): filters
may repeat and are OR'd within a name and AND'ed across names; ``start``/``end`` are UNIX
seconds and ``delta`` seconds, combined as its time table says; ``page`` > 0, ``rows_per_page``
at most 100, ``order`` asc or desc.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import QueryParams

from tidings.archive import Archive, Archived, Order, Query
from tidings.archive.rows import cursor_after
from tidings.errors import InvalidTopic
from tidings.event import format_time
from tidings.textheaders import whole_number
from tidings.topics import validate_pattern

#: datagrepper's defaults and limit
ROWS_PER_PAGE = 25
MAX_ROWS_PER_PAGE = 100
#: with ``end`` alone, datagrepper looks at the 600 seconds before it
END_ONLY_WINDOW = 600.0
#: /v2/search
SEARCH_LIMIT = 50
MAX_SEARCH_LIMIT = 500
#: the times a query may name: from the first day of year 1 to the last of year 9999 (what a
#: datetime holds, a day kept free at each end for time zones)
FIRST_TIME = datetime(1, 1, 2, tzinfo=UTC).timestamp()
LAST_TIME = datetime(9999, 12, 30, tzinfo=UTC).timestamp()
#: the most bytes of events one response or one stream batch carries: a page of large events
#: ends early (its next cursor goes on from there), so a client costs memory by bytes, not count
PAGE_BYTES = 8 * 1024 * 1024
#: events read from the store at a time while a page is put together
SEARCH_CHUNK = 50
#: values one filter parameter may repeat (each is a term of the store's query)
MAX_VALUES = 100
#: the largest page number (its offset must stay within a store's 64-bit integers)
MAX_PAGE = 10**9
#: datagrepper parameters that only shape its HTML or JSONP output: accepted, without effect here
IGNORED = frozenset({"size", "chrome", "meta", "is_raw", "grouped"})
#: datagrepper parameters tidings cannot honour: refused rather than silently widening a search
UNSUPPORTED = frozenset({"not_user", "not_package", "not_category", "callback"})


#: the filters query_of and time_range read
FILTERS = frozenset(
    {"topic", "not_topic", "category", "user", "package", "container", "agent", "source", "contains"}
    | {"start", "end", "delta"}
)


class BadRequest(ValueError):
    """A parameter that cannot be meant: a 400 with this message."""


@dataclass(frozen=True, slots=True)
class TimeRange:
    start: float | None
    end: float | None
    delta: float | None


def number(params: QueryParams, name: str) -> float | None:
    value = params.get(name)
    if value in (None, ""):
        return None
    try:
        seconds = float(value)
    except ValueError:
        raise BadRequest(f"{name} must be a number of seconds, not {value!r}") from None
    if not math.isfinite(seconds):
        raise BadRequest(f"{name} must be a number of seconds, not {value!r}")
    return seconds


#: what FIRST_TIME and LAST_TIME are, as a message says them
BETWEEN = "from 0001-01-02 to 9999-12-30 (UTC)"


def moment(params: QueryParams, name: str) -> float | None:
    """UNIX seconds (datagrepper's form) or an ISO 8601 time with a zone."""
    value = params.get(name)
    if value in (None, ""):
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = _iso_seconds(name, value)
    if not FIRST_TIME <= seconds <= LAST_TIME:  # nan fails this too
        raise BadRequest(f"{name} {value!r} is not a time {BETWEEN}")
    return seconds


def _iso_seconds(name: str, value: str) -> float:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise BadRequest(f"{name} must be UNIX seconds or an ISO 8601 time, not {value!r}") from None
    if parsed.tzinfo is None:
        raise BadRequest(f"{name} {value!r} has no time zone")
    try:
        return parsed.timestamp()
    except (OverflowError, ValueError):  # year 1 in a zone east of UTC
        raise BadRequest(f"{name} {value!r} is not a time {BETWEEN}") from None


def time_range(params: QueryParams, now: float | None = None) -> TimeRange:
    """datagrepper's time table: which of delta, start and end were given decides the window."""
    start, end, delta = moment(params, "start"), moment(params, "end"), number(params, "delta")
    if delta is not None and delta < 0:
        raise BadRequest("delta must not be negative")
    now = time.time() if now is None else now
    if start is not None and end is not None:
        pass  # delta is ignored
    elif start is not None:
        end = start + delta if delta is not None else None
    elif end is not None:
        start = end - (delta if delta is not None else END_ONLY_WINDOW)
    elif delta is not None:
        start, end = now - delta, now
    # a window reaching past what a time can be is the same window cut there ("the last 10^12 s")
    start = None if start is None else max(start, FIRST_TIME)
    end = None if end is None else min(end, LAST_TIME)
    return TimeRange(start, end, delta)


def values_of(params: QueryParams, name: str) -> list[str]:
    """A filter's values (it may repeat): not too many, and text a store can compare (no NUL)."""
    values = [v for v in params.getlist(name) if v]
    if len(values) > MAX_VALUES:
        raise BadRequest(f"{name} is given {len(values)} times; at most {MAX_VALUES} values per filter")
    for value in values:
        if "\x00" in value:
            raise BadRequest(f"{name}: a value cannot hold a NUL character")
    return values


def patterns(params: QueryParams, name: str) -> list[str]:
    values = values_of(params, name)
    for value in values:
        try:
            validate_pattern(value)
        except InvalidTopic as exc:
            raise BadRequest(f"{name}: {exc}") from None
    return values


def query_of(params: QueryParams, window: TimeRange, *, include_private: bool) -> Query:
    listed = lambda name: values_of(params, name)  # noqa: E731

    return Query(
        topics=patterns(params, "topic"),
        not_topics=patterns(params, "not_topic"),
        categories=listed("category"),
        users=listed("user"),
        packages=listed("package"),
        containers=listed("container"),
        agents=listed("agent"),
        sources=listed("source"),
        contains=listed("contains"),
        start=_utc(window.start),
        end=_utc(window.end),
        include_private=include_private,
    )


def _utc(seconds: float | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC)


def order_of(params: QueryParams, default: Order = "desc") -> Order:
    value = params.get("order") or default
    if value not in ("asc", "desc"):
        raise BadRequest("order must be either 'desc' or 'asc'")
    return "asc" if value == "asc" else "desc"


def integer(params: QueryParams, name: str, default: int, low: int, high: int | None = None) -> int:
    raw = params.get(name) or str(default)
    magnitude = whole_number(raw.removeprefix("-"))  # int() takes fullwidth and Arabic-Indic digits too
    if magnitude is None:
        shown = raw if len(raw) <= 40 else f"{raw[:40]}… ({len(raw)} characters)"
        raise BadRequest(f"{name} must be a whole number of at most 19 digits, not {shown!r}")
    value = -magnitude if raw.startswith("-") else magnitude
    if value < low or (high is not None and value > high):
        limit = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise BadRequest(f"{name} must be {limit}")
    return value


def refuse_unknown(params: QueryParams, known: frozenset[str]) -> None:
    """Our own endpoints name every parameter they read: a mistyped one (``topics=``) would
    otherwise widen the search without a word."""
    unknown = sorted(set(params) - known)
    if unknown:
        raise BadRequest(f"unknown parameter {unknown[0][:40]!r}; known: {', '.join(sorted(known))}")


def refuse_unsupported(params: QueryParams) -> None:
    for name in UNSUPPORTED:
        if name in params:
            raise BadRequest(f"{name} is not supported by tidings' /raw")


# -- events as JSON ------------------------------------------------------------------------


def envelope(item: Archived) -> dict[str, Any]:
    """tidings' own form (/v2/search, /stream): the event with its seq and search fields."""
    return {
        "seq": item.seq,
        **item.event.to_dict(),
        "category": item.category,
        "users": list(item.fields.users),
        "packages": list(item.fields.packages),
        "containers": list(item.fields.containers),
        "agent": item.fields.agent,
    }


def raw_message(item: Archived) -> dict[str, Any]:
    """One of datagrepper's raw_messages: the fedmsg-era keys (``msg``, ``msg_id``, ``timestamp``,
    ``i``) and fedora-messaging's (``body``, ``headers``, ``id``), so clients of either work."""
    event = item.event
    return {
        "i": item.seq,
        "msg_id": event.id,
        "id": event.id,
        "topic": event.topic,
        "timestamp": event.time.timestamp(),
        "msg": event.body,
        "body": event.body,
        "headers": {**event.headers, "sent-at": format_time(event.time)},
        "priority": None,
        "queue": None,
        "source_name": event.source,
        "category": item.category,
        "users": list(item.fields.users),
        "packages": list(item.fields.packages),
    }


async def budgeted_page(
    archive: Archive,
    query: Query,
    encode: Callable[[Archived], bytes],
    *,
    limit: int,
    cursor: str | None = None,
    order: Order = "desc",
) -> tuple[list[tuple[Archived, bytes]], str | None, int | None]:
    """Up to ``limit`` matching events with their encoding: read SEARCH_CHUNK at a time and no
    more than PAGE_BYTES in all (at least one); the cursor that goes on after them; the store's
    estimate. A client asking for 500 events of a megabyte each costs megabytes, not 500."""
    kept: list[tuple[Archived, bytes]] = []
    size, estimate = 0, None
    while True:
        want = min(SEARCH_CHUNK, limit - len(kept))
        page = await run_in_threadpool(
            lambda c=cursor, n=want: archive.search(query, limit=n, cursor=c, order=order)
        )
        estimate = page.estimated_total if estimate is None else estimate
        for item in page.items:
            data = encode(item)
            if kept and size + len(data) > PAGE_BYTES:
                return kept, cursor_after(kept[-1][0]), estimate
            kept.append((item, data))
            size += len(data)
        cursor = page.next_cursor
        if cursor is None or len(kept) >= limit:
            return kept, cursor, estimate
