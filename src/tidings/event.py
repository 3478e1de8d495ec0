"""The event envelope, its identifiers and its CloudEvents 1.0 mapping."""

from __future__ import annotations

import math
import os
import threading
import time as _time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import msgspec
import orjson

from tidings.errors import InvalidEvent
from tidings.topics import validate_topic

Visibility = Literal["public", "private"]
JSONScalar = str | int | float | bool | None

#: CloudEvents ``type`` used for events that carry no schema type of ours.
UNTYPED = "tidings.untyped"
#: header names the native format uses for the envelope (CloudEvents binary mode)
RESERVED_HEADER_PREFIX = "ce_"
#: the relays an event went through, comma-separated, oldest first (tidings.relay)
HOPS_HEADER = "x-tidings-relays"
#: a replayed event's header: when it was replayed (an event that comes back says so)
REPLAY_HEADER = "x-tidings-replayed-at"
#: the names transports and brokers use for their own bookkeeping (attempts, reasons, routing on
#: Kafka, RabbitMQ's dead-lettering): an event's header of that name would be taken for theirs
#: (``x-tidings-attempts: 99`` would dead-letter it at its first failure). tidings' own event
#: headers, above, are the exceptions.
TRANSPORT_HEADER_PREFIX = "x-tidings-"
BROKER_HEADERS = frozenset(
    {"x-death"}
    | {f"x-{when}-death-{what}" for when in ("first", "last") for what in ("queue", "reason", "exchange")}
)


class _Uuid7:
    """UUIDv7 (RFC 9562) with a 12-bit counter, so ids from one process sort in creation order.

    It holds no configuration, only the last timestamp and counter; one per
    process is what makes ids monotonic, so the module keeps one instance.
    """

    #: random bytes drawn from the OS at a time: one getrandom call per ~400 ids, not two per id
    POOL_BYTES = 4096

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_ms = 0
        self._counter = 0
        self._pool = b""
        self._taken = 0
        # a forked child must not hand out the parent's remaining random bytes again
        os.register_at_fork(after_in_child=self._forget_pool)

    def _forget_pool(self) -> None:
        self._pool, self._taken = b"", 0

    def _random(self, size: int) -> int:
        """``size`` fresh random bytes as an integer; the caller holds the lock."""
        if self._taken + size > len(self._pool):
            self._pool, self._taken = os.urandom(self.POOL_BYTES), 0
        start = self._taken
        self._taken += size
        return int.from_bytes(self._pool[start : self._taken])

    def __call__(self) -> str:
        with self._lock:
            ms = _time.time_ns() // 1_000_000
            if ms > self._last_ms:
                self._last_ms, self._counter = ms, self._random(2) & 0x3FF
            else:  # same millisecond (or the clock stepped back): count up
                self._counter += 1
                if self._counter > 0xFFF:
                    self._last_ms, self._counter = self._last_ms + 1, 0
                ms = self._last_ms
            counter = self._counter
            tail = self._random(8) & ((1 << 62) - 1)
        value = (ms << 80) | (0x7 << 76) | (counter << 64) | (0b10 << 62) | tail
        digits = f"{value:032x}"  # the canonical 8-4-4-4-12 form, without building a UUID object
        return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


new_id = _Uuid7()


def year_prefixed(event_id: str) -> bool:
    """Whether an id has fedmsg's ``<year>-<uuid>`` form (bridges and relays keep such ids)."""
    return len(event_id) > 5 and event_id[:4].isdigit() and event_id[4] == "-"


def whole_seconds(moment: datetime) -> int:
    """Seconds since the Unix epoch, rounded down exactly (``int(moment.timestamp())`` goes
    through a float, which rounds .999997 s up to the next second in the year 3059)."""
    return (moment - _EPOCH) // _SECOND


_EPOCH, _SECOND = datetime(1970, 1, 1, tzinfo=UTC), timedelta(seconds=1)


def utcnow() -> datetime:
    return datetime.now(UTC)


def format_time(moment: datetime) -> str:
    """RFC 3339 with microseconds and ``Z``: the one time format of the tidings envelope."""
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    if moment.microsecond:
        # orjson writes this exact form (a third of isoformat's time, which counts: every
        # event is formatted two or three times), but leaves the fraction out when it is zero
        return orjson.dumps(moment, option=orjson.OPT_UTC_Z)[1:-1].decode()
    # timespec keeps ".000000"; in UTC the text ends in "+00:00", which is cut
    return moment.isoformat(timespec="microseconds")[:-6] + "Z"


def parse_time(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        raise InvalidEvent(f"time {text!r} is not an ISO 8601 timestamp") from None
    if moment.tzinfo is None:
        raise InvalidEvent(f"time {text!r} has no time zone")
    return in_utc(moment)


def in_utc(moment: datetime) -> datetime:
    """``moment`` in UTC; an InvalidEvent when that falls outside years 1-9999
    (``0001-01-01T00:30:00+01:00`` is a valid time whose UTC is not)."""
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise InvalidEvent(f"time {moment.isoformat()} is out of range in UTC (years 1 to 9999)") from None


@dataclass(slots=True)
class Event:
    """One thing that happened, as tidings carries it.

    ``id`` is the deduplication key: a redelivered event keeps it.
    ``type`` names the schema (``cki.datawarehouse.v1``); ``None`` means untyped.
    """

    topic: str
    body: dict[str, Any]
    source: str = "tidings"
    type: str | None = None
    id: str = field(default_factory=new_id)
    time: datetime = field(default_factory=utcnow)
    headers: dict[str, JSONScalar] = field(default_factory=dict)
    visibility: Visibility = "public"

    @classmethod
    def create(
        cls,
        topic: str,
        body: dict[str, Any],
        *,
        source: str = "tidings",
        type: str | None = None,  # noqa: A002 - the envelope field is called type
        headers: dict[str, JSONScalar] | None = None,
        visibility: Visibility = "public",
        id: str | None = None,  # noqa: A002
        time: datetime | None = None,
    ) -> Event:
        """Build an event, checking the envelope (not the schema: the bus does that)."""
        validate_topic(topic)
        check_envelope(body, headers or {}, visibility)
        if id:
            check_id(id)
        if time is not None and time.tzinfo is None:
            raise InvalidEvent("event time must carry a time zone (use UTC)")
        return cls(
            topic=topic,
            body=body,
            source=source,
            type=type,
            id=id or new_id(),
            time=in_utc(time or utcnow()),
            headers=dict(headers or {}),
            visibility=visibility,
        )

    # -- the tidings JSON form (outbox rows, archives, dumps) ---------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "topic": self.topic,
            "time": format_time(self.time),
            "source": self.source,
            "type": self.type,
            "headers": self.headers,
            "visibility": self.visibility,
            "body": self.body,
        }

    def to_json(self) -> bytes:
        return dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: Any) -> Event:
        if not isinstance(data, dict):
            raise InvalidEvent("an event must be a JSON object")
        missing = {"id", "topic", "time", "body"} - data.keys()
        if missing:
            raise InvalidEvent(f"event lacks {', '.join(sorted(missing))}")
        unknown = data.keys() - {"id", "topic", "time", "source", "type", "headers", "visibility", "body"}
        if unknown:
            raise InvalidEvent(f"event has unknown field(s) {', '.join(sorted(unknown))}")
        for name in ("id", "topic", "time"):
            if not isinstance(data[name], str):
                raise InvalidEvent(f"event field {name!r} must be a string")
        type_ = data.get("type")
        if type_ is not None and not isinstance(type_, str):
            raise InvalidEvent("event field 'type' must be a string or null")
        source = data.get("source", "tidings")
        if not isinstance(source, str):
            raise InvalidEvent("event field 'source' must be a string")
        return cls.create(
            data["topic"],
            data["body"],
            source=source,
            type=type_,
            headers=data.get("headers") or {},
            visibility=data.get("visibility", "public"),
            id=data["id"],
            time=parse_time(data["time"]),
        )

    @classmethod
    def from_json(cls, raw: bytes | str) -> Event:
        return cls.from_dict(loads(raw))

    @classmethod
    def from_stored(cls, raw: bytes) -> Event:
        """An event this process's own outbox wrote: checked when published, so not checked again."""
        d = _READER.decode(raw)
        return cls(
            topic=d["topic"],
            body=d["body"],
            source=d["source"],
            type=d["type"],
            id=d["id"],
            time=datetime.fromisoformat(d["time"]),
            headers=d["headers"],
            visibility=d["visibility"],
        )

    # -- CloudEvents 1.0 --------------------------------------------------------------

    def to_cloudevent(self) -> dict[str, Any]:
        """Structured-mode CloudEvent (JSON format). Lossless: see :meth:`from_cloudevent`."""
        ce: dict[str, Any] = {
            "specversion": "1.0",
            "id": self.id,
            "source": self.source,
            "type": self.type or UNTYPED,
            "time": format_time(self.time),
            "subject": self.topic,
            "datacontenttype": "application/json",
            "data": self.body,
        }
        if self.type:
            ce["dataschema"] = f"urn:tidings:schema:{self.type}"
        if self.visibility != "public":
            ce["visibility"] = self.visibility
        if self.headers:
            # CloudEvents extension names allow only [a-z0-9]; headers such as
            # fedora_messaging_schema do not fit, so they travel as one JSON string.
            ce["tidingsheaders"] = dumps(self.headers).decode()
        return ce

    @classmethod
    def from_cloudevent(cls, ce: Any) -> Event:
        if not isinstance(ce, dict):
            raise InvalidEvent("a CloudEvent must be a JSON object")
        if ce.get("specversion") != "1.0":
            raise InvalidEvent(f"unsupported CloudEvents specversion {ce.get('specversion')!r}")
        for name in ("id", "source", "type", "subject"):
            if not isinstance(ce.get(name), str):
                raise InvalidEvent(f"CloudEvent attribute {name!r} must be a string")
        headers = ce.get("tidingsheaders")
        return cls.create(
            ce["subject"],
            ce.get("data") if ce.get("data") is not None else {},
            source=ce["source"],
            type=None if ce["type"] == UNTYPED else ce["type"],
            headers=loads(headers) if headers else {},
            visibility=ce.get("visibility", "public"),
            id=ce["id"],
            time=parse_time(ce["time"]) if "time" in ce else None,
        )


# -- JSON: integers of any width are carried exactly, as JSON itself does --------------------------
#
# orjson is the fastest writer, but it refuses integers wider than 64 bits, and as a reader it
# turns them into floats without a word (123456789012345678901234567890 becomes 1.23e+29).
# msgspec reads them exactly, as fast, and writes them too: it reads every document, and
# writes the rare one orjson refuses. Both stop at CPython's limit of 4,300 digits. orjson also
# stops at 254 levels of nesting, below what [bus] max_depth allows (and an archive's envelope
# adds levels around a body): msgspec writes those too, up to CPython's recursion limit.

_READER = msgspec.json.Decoder()
_WIDE = "Integer exceeds 64-bit range"
_DEEP = "Recursion limit reached"


def dumps(value: Any, *, sort_keys: bool = False, default: Callable[[Any], Any] | None = None) -> bytes:
    """JSON bytes of ``value``, integers of any width exact; an unwritable value is an InvalidEvent."""
    try:
        return orjson.dumps(value, default=default, option=orjson.OPT_SORT_KEYS if sort_keys else None)
    except TypeError as exc:  # orjson.JSONEncodeError is a TypeError
        if _WIDE not in str(exc) and _DEEP not in str(exc):
            raise InvalidEvent(f"event cannot be written as JSON: {exc}") from None
    try:
        return msgspec.json.encode(value, enc_hook=default, order="sorted" if sort_keys else None)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidEvent(f"event cannot be written as JSON: {exc}") from None
    except RecursionError:
        raise InvalidEvent("event cannot be written as JSON: nested too deeply") from None


def loads(raw: bytes | str) -> Any:
    """The JSON value of ``raw``, integers of any width exact; garbage in is an InvalidEvent."""
    try:
        return _READER.decode(raw)
    except msgspec.ValidationError as exc:  # what is well-formed but out of range
        limit = " (integers may have up to 4,300 digits)" if "Integer" in str(exc) else ""
        raise InvalidEvent(f"malformed JSON: {exc}{limit}") from None
    except msgspec.DecodeError as exc:  # its "JSON is malformed: ..." said once, not twice
        raise InvalidEvent(f"malformed JSON: {str(exc).removeprefix('JSON is malformed: ')}") from None
    except RecursionError:
        raise InvalidEvent("malformed JSON: nested too deeply to read") from None


def pretty(value: Any) -> bytes:
    """JSON indented by two spaces (for people), integers of any width exact."""
    return msgspec.json.format(dumps(value), indent=2)


#: the longest header name: RabbitMQ cuts longer ones (two names alike in their first 128
#: characters would become one)
MAX_HEADER_NAME = 128


def json_kind(value: Any) -> str:
    """What a JSON value is, in JSON's words (``null``, ``an array``), for messages."""
    for kind, name in ((type(None), "null"), (bool, "a boolean"), (str, "a string"), (list, "an array")):
        if isinstance(value, kind):
            return name
    if isinstance(value, int | float):
        return "a number"
    return "an object" if isinstance(value, dict) else type(value).__name__


def check_id(event_id: str) -> None:
    """An id every transport can carry: AMQP's message id is a short string (255 bytes), and a
    line break would split a STOMP header line. (An id read from the wire that is not one makes
    the message invalid: dead-lettered where it arrives, not by the connector it goes out on.)"""
    if len(event_id) > MAX_ID_BYTES // 4 and len(event_id.encode()) > MAX_ID_BYTES:
        raise InvalidEvent(f"event id {event_id[:40]!r}... is longer than {MAX_ID_BYTES} bytes")
    if not event_id.isprintable():
        raise InvalidEvent(f"event id {event_id[:80]!r} holds a control character")


def check_envelope(body: Any, headers: Any, visibility: Any) -> None:
    if not isinstance(body, dict):
        raise InvalidEvent(f"event body must be a JSON object, not {json_kind(body)}")
    if not isinstance(headers, dict):
        raise InvalidEvent("event headers must be an object")
    for key, value in headers.items():
        if not isinstance(key, str) or not isinstance(value, str | int | float | bool | None):
            raise InvalidEvent(f"header {key!r} must map a string to a JSON scalar")
        if len(key) > MAX_HEADER_NAME:
            raise InvalidEvent(f"header name {key[:40]!r}... is longer than {MAX_HEADER_NAME} characters")
        if key.startswith(RESERVED_HEADER_PREFIX):
            raise InvalidEvent(
                f"header {key!r}: the prefix {RESERVED_HEADER_PREFIX!r} is reserved for "
                "the CloudEvents attributes"
            )
    if visibility not in ("public", "private"):
        raise InvalidEvent(f"visibility must be 'public' or 'private', not {visibility!r}")


def check_publisher_headers(headers: dict[str, Any] | None) -> None:
    """A publisher's headers, before its event is made: none a transport or a broker would take
    for its own. (Not asked of events read from the wire: a dead letter carries such headers.)"""
    for key in headers or ():
        name = key.lower() if isinstance(key, str) else ""
        if not name.isprintable():  # a line break in a name splits a STOMP frame's header line
            raise InvalidEvent(f"header name {key!r} holds a control character")
        if name in BROKER_HEADERS:
            raise InvalidEvent(f"header {key!r} is RabbitMQ's own (its dead-lettering)")
        if is_bookkeeping(name):
            raise InvalidEvent(
                f"header {key!r}: the prefix {TRANSPORT_HEADER_PREFIX!r} is reserved for tidings' "
                "transports (attempts, dead-letter reasons, routing)"
            )


def is_bookkeeping(header: str) -> bool:
    """Whether a header is a transport's or a broker's, not the event's (a relay drops them)."""
    name = header.lower()
    own = name.startswith(TRANSPORT_HEADER_PREFIX) and name not in (HOPS_HEADER, REPLAY_HEADER)
    return own or name in BROKER_HEADERS


def the_events_own(headers: dict[str, Any]) -> dict[str, Any]:
    """``headers`` without those a transport or a broker put on the event (attempts, reasons)."""
    return {key: value for key, value in headers.items() if not is_bookkeeping(key)}


#: a tuple, not ``dict | list``: that expression builds a new union object each time it runs
_CONTAINERS = (dict, list, tuple)  # (a tuple is written as an array)
#: the longest event id, in UTF-8 (AMQP's short string)
MAX_ID_BYTES = 255
#: the deepest nesting of a body anything may hold: JSON writers recurse (CPython stops them
#: near 1,000 levels) and the archive's API wraps a body in a few levels more
DEEPEST = 500


def holds_non_finite(value: Any) -> bool:
    """Whether a JSON value holds NaN or an infinity anywhere (JSON has no such numbers: the
    writer would turn them into null without a word)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return False


def json_depth(value: Any) -> int:
    """Nesting depth of a JSON value (a scalar is 0), without recursion."""
    if isinstance(value, dict):
        for child in value.values():
            if isinstance(child, _CONTAINERS):
                break
        else:
            return 1  # the common flat body, without building the stack
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        depth += 1
        deepest = max(deepest, depth)
        stack.extend((child, depth) for child in children if isinstance(child, _CONTAINERS))
    return deepest
