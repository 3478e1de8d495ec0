"""The native tidings wire format: CloudEvents 1.0 in binary or structured mode.

Binary mode (the default) puts the envelope in ``ce_``-prefixed headers, as the
CloudEvents Kafka binding does, and the body bytes are the event's data alone,
so a consumer that knows nothing of tidings still reads plain JSON.
"""

from __future__ import annotations

from typing import Any

from tidings.errors import DecodeError
from tidings.event import (
    RESERVED_HEADER_PREFIX,
    UNTYPED,
    Event,
    check_envelope,
    dumps,
    format_time,
    loads,
    parse_time,
)
from tidings.plugins import Plugin
from tidings.topics import validate_topic
from tidings.transport import WireMessage

PREFIX = RESERVED_HEADER_PREFIX


class NativeFormat:
    name = "tidings"

    def encode(self, event: Event) -> WireMessage:
        headers: dict[str, Any] = {
            "ce_specversion": "1.0",
            "ce_id": event.id,
            "ce_source": event.source,
            "ce_type": event.type or UNTYPED,
            "ce_time": format_time(event.time),
            "ce_subject": event.topic,
        }
        if event.visibility != "public":
            headers["ce_visibility"] = event.visibility
        headers.update(event.headers)  # Event.create refused user headers with the ce_ prefix
        return WireMessage(
            routing_key=event.topic,
            body=dumps(event.body),
            headers=headers,
            message_id=event.id,
            content_type="application/json",
            timestamp=event.time,
        )

    def decode(self, message: WireMessage) -> Event:
        headers = message.headers or {}
        if headers.get("ce_specversion") != "1.0":
            raise DecodeError("not a tidings message: header ce_specversion is not '1.0'")
        try:
            event_id, source, type_, time = (_text(headers, key) for key in _REQUIRED)
        except KeyError as missing:
            raise DecodeError(f"tidings message lacks header {missing.args[0]}") from None
        if not event_id:
            raise DecodeError("tidings message has an empty header ce_id")
        own = {k: v for k, v in headers.items() if not k.startswith(PREFIX)}
        visibility = headers.get("ce_visibility", "public")
        body = loads(message.body)
        check_envelope(body, own, visibility)
        # built directly, not through Event.create: the same checks, without copying the headers
        return Event(
            topic=validate_topic(str(headers.get("ce_subject") or message.routing_key)),
            body=body,
            source=source,
            type=None if type_ == UNTYPED else type_,
            id=event_id,
            time=parse_time(time),
            headers=own,
            visibility=visibility,
        )


_REQUIRED = ("ce_id", "ce_source", "ce_type", "ce_time")


class StructuredFormat:
    """CloudEvents structured mode: the whole envelope as one JSON document."""

    name = "cloudevents-structured"

    def encode(self, event: Event) -> WireMessage:
        return WireMessage(
            routing_key=event.topic,
            body=dumps(event.to_cloudevent()),
            message_id=event.id,
            content_type="application/cloudevents+json",
            timestamp=event.time,
        )

    def decode(self, message: WireMessage) -> Event:
        return Event.from_cloudevent(loads(message.body))


def _text(headers: dict[str, Any], key: str) -> str:
    value = headers[key]
    if isinstance(value, bytes):  # some AMQP clients hand back longstr as bytes
        try:
            value = value.decode()
        except UnicodeDecodeError:
            raise DecodeError(f"header {key} is not UTF-8") from None
    if not isinstance(value, str):
        raise DecodeError(f"header {key} must be a string")
    return value


PLUGIN = Plugin("tidings", "tidings.formats.native:NativeFormat")
STRUCTURED_PLUGIN = Plugin("cloudevents-structured", "tidings.formats.native:StructuredFormat")
