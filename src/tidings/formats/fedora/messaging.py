"""fedora-messaging's wire format, so its publishers and consumers and tidings interoperate.

What a fedora-messaging message carries (fedora-messaging, docs/api/wire-format.rst and
fedora_messaging/message.py, ``Message._build_properties``):

* the routing key is the topic, with the configured ``topic_prefix`` in front;
* properties: content type ``application/json``, content encoding ``utf-8``, delivery mode 2,
  a ``message_id``, an optional ``priority``;
* headers: ``fedora_messaging_schema`` (the message class's entry-point name),
  ``fedora_messaging_schema_package`` (the distribution that ships it, when known), ``sent-at``
  (UTC, whole seconds, ``+00:00``), ``fedora_messaging_severity`` (10/20/30/40), ``priority``
  mirrored, and ``fedora_messaging_{user,group,rpm,container,module,flatpak}_<name>: true`` for
  filtering (``Message._filter_headers``: one for each of the class's ``usernames``, ``groups``,
  ``packages``, ``containers``, ``modules`` and ``flatpaks``);
* the body is the JSON object, UTF-8.

When the event's message class is installed, encoding builds an instance of it from the body, as
a fedora-messaging publisher does, and takes from it what ``_build_properties`` takes: the filter
headers and the class's ``severity`` (when the event names none). Without fedora-messaging or the
class, the event's own headers are all there is. Decoding keeps every header, as ``get_message``
does: one whose value is not a scalar (RabbitMQ's ``x-received-from``) as JSON text, named in
:data:`JSON_HEADERS`, and encoding gives it its structure back.

The tidings event type is the fedora schema name; an event without a type goes out as
fedora-messaging's base schema ``base.message``. The schemas of installed message packages
(``fedora.messages`` entry points: each class's ``body_schema``) are tidings schemas too
(:func:`schemas`), validated as fedora-messaging validates them: ``jsonschema.validate``, the
draft the schema declares, no format checker.
"""

from __future__ import annotations

import functools
import importlib.util
import re
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from tidings.archive import SearchFields
from tidings.errors import DecodeError, InvalidEvent
from tidings.event import Event, JSONScalar, dumps, loads
from tidings.format import stable_id
from tidings.schemas import SchemaPack
from tidings.textheaders import from_text, to_text, whole_number
from tidings.transport import WireMessage

DEBUG, INFO, WARNING, ERROR = 10, 20, 30, 40
SEVERITIES = (DEBUG, INFO, WARNING, ERROR)
BASE_SCHEMA = "base.message"
#: the object kinds fedora-messaging adds filter headers for, with the Message property names
FILTERS = {
    "user": "usernames",
    "group": "groups",
    "rpm": "packages",
    "container": "containers",
    "module": "modules",
    "flatpak": "flatpaks",
}
_ID_NAMESPACE = uuid.UUID("0b5bd0c4-5b2f-4f55-8f8e-3f7d2f6c1a90")
#: the event header naming the headers that hold a structured wire value (an AMQP table or array,
#: such as RabbitMQ's ``x-received-from``) as JSON text: event headers are scalars, and encoding
#: gives those back their structure (a JSON array of names)
JSON_HEADERS = "fedora_json_headers"


@functools.cache
def _message_entry_points() -> dict[str, EntryPoint]:
    """fedora schema name → its ``fedora.messages`` entry point (the message class, not loaded)."""
    return {ep.name: ep for ep in entry_points(group="fedora.messages")}


@functools.cache
def schema_packages() -> dict[str, str]:
    """fedora schema name → the distribution that provides it (``fedora.messages`` entry points)."""
    found = {}
    for name, ep in _message_entry_points().items():
        if ep.dist is not None:
            # normalised as fedora-messaging does: PEP 503, then dashes as underscores
            # (fedora_messaging/message.py, _get_distribution_from_module)
            found[name] = re.sub(r"[-_.]+", "-", ep.dist.name).lower().replace("-", "_")
    return found


@functools.cache
def message_class(schema: str) -> Any:
    """The installed fedora-messaging class of a schema name, or None (unknown, or not importable)."""
    ep = _message_entry_points().get(schema)
    if ep is None or importlib.util.find_spec("fedora_messaging") is None:
        return None
    try:
        return ep.load()
    except Exception:  # a broken message package must not break decoding: the topic still names the app
        return None


def _body_schema(schema: str) -> Callable[[], dict[str, Any]]:
    def load() -> dict[str, Any]:
        ep = _message_entry_points()[schema]
        body_schema = getattr(ep.load(), "body_schema", None)
        if not isinstance(body_schema, dict):
            raise TypeError(f"{ep.value} has no body_schema")
        return body_schema

    return load


def schemas() -> SchemaPack:
    """The ``tidings.schemas`` entry point: the body schema of every installed message class.

    Lazy: a class is imported when an event of its type is first checked. Formats are not
    asserted, as fedora-messaging's ``Message.validate`` (``jsonschema.validate`` with no format
    checker) does not assert them. Without fedora-messaging installed, the message packages
    cannot be imported, and only the built-in ``base.message`` is known.
    """
    if importlib.util.find_spec("fedora_messaging") is None:
        return SchemaPack({})
    packages = schema_packages()
    return SchemaPack(
        {name: _body_schema(name) for name in _message_entry_points()},
        assert_formats=False,
        origins={name: f"fedora.messages: {packages.get(name, '?')}" for name in _message_entry_points()},
    )


def class_message(schema: str, topic: str, body: dict[str, Any]) -> Any:
    """An instance of the schema's installed message class for this body, or None (no
    fedora-messaging, no such class, or a class that cannot be built from the body)."""
    cls = message_class(schema)
    if cls is None:
        return None
    try:
        return cls(body=body, topic=topic)
    except Exception:  # a broken message package must not stop the event: its own headers go out
        return None


def class_filter_headers(message: Any) -> dict[str, bool]:
    """The filter headers a message instance gets from its class, as ``Message._filter_headers``
    makes them: a property that raises (a body the class cannot read) adds none."""
    headers: dict[str, bool] = {}
    for kind, prop in FILTERS.items():
        try:
            items = getattr(message, prop)
        except Exception:  # fedora-messaging logs and skips it too
            continue
        headers.update({f"fedora_messaging_{kind}_{item}": True for item in items or ()})
    return headers


def filter_headers(**objects: Iterable[str]) -> dict[str, JSONScalar]:
    """``filter_headers(user=["alice"], rpm=["kernel"])`` → the ``fedora_messaging_*`` filter headers."""
    headers: dict[str, JSONScalar] = {}
    for kind, names in objects.items():
        if kind not in FILTERS:
            raise InvalidEvent(f"fedora filter headers exist for {', '.join(FILTERS)}, not {kind!r}")
        headers.update({f"fedora_messaging_{kind}_{name}": True for name in names})
    return headers


def fedora_event(
    topic: str,
    body: dict[str, Any],
    *,
    schema: str = BASE_SCHEMA,
    severity: int | None = None,
    source: str = "fedora",
    **objects: Iterable[str],
) -> Event:
    """An event as a fedora-messaging ``Message`` subclass would describe itself.

    Without ``severity`` the message class's own goes out (``INFO`` when it is not installed);
    the class's filter headers are added on encoding, ``user=``/``rpm=``... add more.
    """
    headers = filter_headers(**objects)
    if severity is not None:
        if severity not in SEVERITIES:
            raise InvalidEvent(f"fedora severity must be one of {SEVERITIES}, not {severity!r}")
        headers["fedora_messaging_severity"] = severity
    return Event.create(topic, body, source=source, type=schema, headers=headers)


def _whole(value: Any) -> int | None:
    """An integer header as a number: ``tidings publish -H`` gives every value as text."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return whole_number(value) if isinstance(value, str) else None


def _severity(value: Any) -> int:
    """fedora-messaging's consumers refuse a severity that is not one of its four numbers (and
    drop the message)."""
    severity = _whole(value)
    if severity not in SEVERITIES:
        raise InvalidEvent(f"fedora_messaging_severity must be one of {SEVERITIES}, not {value!r}")
    return severity


def _priority(value: Any) -> int | None:
    """AMQP's priority: 0 to 255 (a number given as text is taken as that number)."""
    if value is None:
        return None
    priority = _whole(value)
    if priority is None or not 0 <= priority <= 255:
        raise InvalidEvent(f"priority must be a whole number from 0 to 255, not {value!r}")
    return priority


class FedoraMessagingFormat:
    """Format ``fedora-messaging``; option ``topic_prefix`` (e.g. ``org.fedoraproject.prod``).

    Encoding puts the prefix in front of the topic; decoding takes it off again (a topic
    without it is kept whole). A decoded event's ``source`` is the application that sent it:
    the message class's ``app_name`` when its package is installed, else the topic's
    application word (the first after the prefix).
    """

    name = "fedora-messaging"

    def __init__(self, topic_prefix: str = "") -> None:
        self.topic_prefix = topic_prefix.rstrip(".")

    def wire_pattern(self, pattern: str) -> str:
        """A subscription on ``bodhi.#`` binds ``<prefix>.bodhi.#``: the routing keys carry the prefix."""
        return f"{self.topic_prefix}.{pattern}" if self.topic_prefix else pattern

    def encode(self, event: Event) -> WireMessage:
        schema = event.type or BASE_SCHEMA
        headers: dict[str, Any] = {"fedora_messaging_schema": schema}
        package = event.headers.get("fedora_messaging_schema_package") or schema_packages().get(schema)
        if package:
            headers["fedora_messaging_schema_package"] = package
        headers["sent-at"] = event.time.astimezone(UTC).replace(microsecond=0).isoformat()
        message = class_message(schema, event.topic, event.body)
        severity = getattr(message, "severity", INFO)  # the class's, unless the event names one
        named = event.headers.get("fedora_messaging_severity")
        headers["fedora_messaging_severity"] = severity if named is None else _severity(named)
        priority = _priority(event.headers.get("priority"))
        headers["priority"] = priority or 0
        headers.update({k: v for k, v in wire_headers(event.headers).items() if k not in headers})
        if message is not None:  # last, as _build_properties adds them: what the class says goes
            headers.update(class_filter_headers(message))
        topic = f"{self.topic_prefix}.{event.topic}" if self.topic_prefix else event.topic
        return WireMessage(
            routing_key=topic,
            body=dumps(event.body),
            headers=headers,
            message_id=event.id,
            content_type="application/json",
            content_encoding="utf-8",
            timestamp=event.time,
            priority=priority if isinstance(priority, int) else None,
            properties={"delivery_mode": 2},
        )

    def decode(self, message: WireMessage) -> Event:
        headers = dict(message.headers or {})
        encoding = message.content_encoding or "utf-8"
        try:
            text = message.body.decode(encoding)
        except (LookupError, UnicodeDecodeError) as exc:
            raise DecodeError(f"fedora message body cannot be decoded as {encoding}: {exc}") from None
        body = loads(text)
        if not isinstance(body, dict):
            raise DecodeError("fedora message body must be a JSON object")
        schema = headers.pop("fedora_messaging_schema", BASE_SCHEMA)
        if not isinstance(schema, str):
            raise DecodeError("header fedora_messaging_schema must be a string")
        topic = message.routing_key
        if self.topic_prefix and topic.startswith(self.topic_prefix + "."):
            topic = topic[len(self.topic_prefix) + 1 :]
        return Event.create(
            topic,
            body,
            source=app_name(schema, topic, body, message.routing_key),
            type=schema,
            headers=event_headers(headers),
            id=message.message_id or stable_id(message, _ID_NAMESPACE),
            time=_sent_at(headers, message),
        )

    def search_fields(self, event: Event) -> SearchFields:
        """datagrepper's fields: the installed message class's, else the filter headers."""
        return fedora_search_fields(event)


def event_headers(headers: dict[str, Any]) -> dict[str, JSONScalar]:
    """Wire headers as event headers: a structured value (fedora-messaging keeps it in
    ``Message._headers``) becomes its JSON text, named in :data:`JSON_HEADERS`."""
    return to_text(headers, kept=_SCALARS, list_header=JSON_HEADERS, default=_json_default)


def wire_headers(headers: dict[str, Any]) -> dict[str, Any]:
    """Event headers as wire headers: those :data:`JSON_HEADERS` names get their structure back."""
    return from_text(headers, JSON_HEADERS)


_SCALARS = (str, int, float, bool, type(None))


def _json_default(value: Any) -> Any:
    # what an AMQP table may hold besides JSON: byte arrays, decimals (orjson writes datetimes)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def fedora_search_fields(event: Event) -> SearchFields:
    """The message class's ``usernames``, ``packages``, ``containers`` and ``agent_name`` when its
    package is installed (what datagrepper stores), together with what the sender put in the filter
    headers (``fedora_messaging_user_alice``: fedora-messaging writes one per username, package and
    container, so a message whose class is not installed, or is ``base.message``, still has them);
    the agent falls back on the body's ``agent``."""
    found: dict[str, list[str]] = {"user": [], "rpm": [], "container": []}
    for key in event.headers:
        kind, _, name = key.removeprefix("fedora_messaging_").partition("_")
        if key.startswith("fedora_messaging_") and kind in found and name:
            found[kind].append(name)
    agent = event.body.get("agent")
    agent = agent if isinstance(agent, str) and agent else None
    cls = message_class(event.type or BASE_SCHEMA)
    if cls is not None:
        try:
            message = cls(body=event.body, topic=event.topic, headers=dict(event.headers))
            found["user"] += list(message.usernames or ())
            found["rpm"] += list(message.packages or ())
            found["container"] += list(getattr(message, "containers", None) or ())
            named = getattr(message, "agent_name", None)
            agent = named if isinstance(named, str) and named else agent
        except Exception:  # a class whose properties need fields this body lacks: the headers
            pass
    return SearchFields(_names(found["user"]), _names(found["rpm"]), _names(found["container"]), agent)


def _names(values: Any) -> tuple[str, ...]:
    return tuple(sorted({str(v) for v in values or () if v}))


#: topic prefixes Fedora's and CentOS's brokers use: ``<org>.<environment>.<application>.<...>``
_KNOWN_PREFIXES = ("org.fedoraproject.", "org.centos.")


def app_name(schema: str, topic: str, body: dict[str, Any], routing_key: str = "") -> str:
    """The application a message comes from, as fedora-messaging's ``Message.app_name`` says.

    The message class computes it when its package is installed (Bodhi's says "bodhi");
    otherwise, as for ``base.message`` whose ``app_name`` is None, it is the topic's application
    word: the first after the prefix (``bodhi.update.comment`` → ``bodhi``; a topic that still
    carries Fedora's ``org.fedoraproject.<env>.`` prefix gives the word after it).
    """
    cls = message_class(schema)
    if cls is not None:
        try:
            name = cls(body=body, topic=routing_key or topic).app_name
        except Exception:  # a class whose property needs fields this body lacks: use the topic
            name = None
        if isinstance(name, str) and name:
            return name
    words = topic.split(".")
    if topic.startswith(_KNOWN_PREFIXES) and len(words) > 3:
        return words[3]
    return words[0] or "fedora"


def _sent_at(headers: dict[str, Any], message: WireMessage) -> datetime | None:
    sent = headers.get("sent-at")
    if isinstance(sent, str):
        try:
            moment = datetime.fromisoformat(sent)
        except ValueError:
            raise DecodeError(f"header sent-at {sent!r} is not ISO 8601") from None
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return message.timestamp


# -- fedora-messaging's JSON-lines dump format (fedora_messaging.message.dumps / loads) ----------


def dump_lines(events: Iterable[Event], fmt: FedoraMessagingFormat | None = None) -> str:
    """Events as fedora-messaging's dump lines: ``{body, headers, id, priority, queue, topic}``."""
    fmt = fmt or FedoraMessagingFormat()
    lines = []
    for event in events:
        wire = fmt.encode(event)
        record = {
            "topic": event.topic,
            "headers": wire.headers,
            "id": event.id,
            "body": event.body,
            "queue": None,
            "priority": wire.headers.get("priority", 0),
        }
        lines.append(dumps(record, sort_keys=True).decode())
    return "".join(line + "\n" for line in lines)


def load_lines(text: str, fmt: FedoraMessagingFormat | None = None) -> list[Event]:
    """Events from fedora-messaging dump lines (as written by its ``dumps`` or ``consume`` CLI)."""
    fmt = fmt or FedoraMessagingFormat()
    events = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        record = loads(line)
        if not isinstance(record, dict) or not {"topic", "headers", "id", "body"} <= record.keys():
            raise DecodeError(f"dump line {number}: needs topic, headers, id and body")
        if not isinstance(record["headers"], dict) or not isinstance(record["topic"], str):
            raise DecodeError(f"dump line {number}: headers must be an object and topic a string")
        wire = WireMessage(
            routing_key=record["topic"],
            body=dumps(record["body"]),
            headers=record["headers"],
            message_id=str(record["id"]),
        )
        try:
            events.append(fmt.decode(wire))
        except InvalidEvent as exc:
            raise DecodeError(f"dump line {number}: {exc}") from None
    return events
