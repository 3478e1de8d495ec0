"""Headers for brokers whose header values are text (STOMP) or bytes (Kafka), without losing types.

AMQP tables carry integers, booleans and nulls; a STOMP frame or a Kafka record carries
strings or bytes. A header whose value is not a string is written as JSON, and its name is
listed in ``x-tidings-json-headers`` (a JSON array), so a reader gives back exactly what was
sent: ``{"n": 3}`` comes back as the integer 3, while a header that was the string ``"3"``
stays a string. A reader that knows nothing of tidings still sees readable text.

Formats use it too: fedora-messaging's structured headers become event headers (JSON scalars)
the same way, listed under a name of the format's own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from tidings.errors import InvalidEvent
from tidings.event import dumps, loads

#: the names of the headers whose value is JSON (a JSON array of names)
JSON_HEADERS = "x-tidings-json-headers"


def to_text(
    headers: Mapping[str, Any],
    *,
    kept: tuple[type, ...] = (str,),
    list_header: str = JSON_HEADERS,
    default: Callable[[Any], Any] = str,
) -> dict[str, Any]:
    """Headers as text: a value of none of the ``kept`` types is written as JSON (``default``
    for what JSON cannot hold), and its name listed in ``list_header`` (a JSON array).

    A STOMP frame or a Kafka record keeps only strings (the defaults); the fedora-messaging
    format keeps every JSON scalar and lists its structured headers under its own name.
    """
    text: dict[str, Any] = {}
    typed: list[str] = []
    for name, value in headers.items():
        if isinstance(value, kept):
            text[name] = value
        else:
            if isinstance(value, bytes):
                value = value.decode("utf-8", "replace")
            text[name] = dumps(value, default=default).decode()
            typed.append(name)
    if typed:
        text[list_header] = dumps(typed).decode()
    return text


def to_bytes(headers: Mapping[str, Any]) -> list[tuple[str, bytes]]:
    """What :func:`to_text` gives, as (name, UTF-8 bytes) pairs as Kafka records carry them.

    (Written out rather than built on :func:`to_text`: it runs for every record a Kafka
    connector sends, and the text dict in between cost as much as the rest.)
    """
    if JSON_HEADERS in headers:  # its value is replaced where it stands: as to_text does it
        return [(name, value.encode()) for name, value in to_text(headers).items()]
    pairs: list[tuple[str, bytes]] = []
    typed: list[str] = []
    for name, value in headers.items():
        if isinstance(value, str):
            pairs.append((name, value.encode()))
        else:
            if isinstance(value, bytes):
                value = value.decode("utf-8", "replace")
            pairs.append((name, dumps(value, default=str)))
            typed.append(name)
    if typed:
        pairs.append((JSON_HEADERS, dumps(typed)))
    return pairs


def from_text(headers: Mapping[str, Any], list_header: str = JSON_HEADERS) -> dict[str, Any]:
    """What :func:`to_text` was given (headers from elsewhere stay as they are)."""
    found = dict(headers)
    listed = found.pop(list_header, None)
    if not listed or not isinstance(listed, str):
        return found
    try:
        names = loads(listed)
    except InvalidEvent:
        return found  # not ours after all: keep the text as it is
    for name in names if isinstance(names, list) else ():
        raw = found.get(name) if isinstance(name, str) else None  # [{}] is no list of names
        if isinstance(raw, str):
            try:
                found[name] = loads(raw)
            except InvalidEvent:
                pass  # changed since: kept as the text it now is
    return found


def whole_number(text: str) -> int | None:
    """A whole number >= 0 as another program wrote it (a header, a query parameter), or None:
    ASCII digits only (``"²".isdigit()`` is true, and ``int("²")`` fails) and within 64 bits."""
    if not (text.isascii() and text.isdigit() and len(text) <= 19):
        return None
    return int(text)


def utc_moment(seconds: float) -> datetime | None:
    """A header's UNIX time as a datetime, or None when no datetime can hold it."""
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        return None
