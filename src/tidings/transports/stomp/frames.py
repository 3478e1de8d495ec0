"""Wire messages as STOMP frames' headers, and back, as RabbitMQ's STOMP adapter maps them.

A SEND's headers become the AMQP message RabbitMQ routes: ``content-type``,
``content-encoding``, ``persistent:true`` (delivery mode 2), ``priority``,
``amqp-message-id`` (the message id), ``timestamp`` (whole seconds), ``correlation-id``,
``reply-to``, ``expiration``, ``type`` and ``app-id`` become properties; every other header
goes into the headers table as a string. So a header keeps its type, values that are not
strings travel as JSON with their names listed (:mod:`tidings.textheaders`), and
the routing key travels in ``x-tidings-routing-key`` (a message read from a queue, or moved
through a retry queue, no longer shows it in its destination).
"""

from __future__ import annotations

from typing import Any

# BROKER_HEADERS: RabbitMQ writes them when it dead-letters (a retry coming back)
from tidings.event import BROKER_HEADERS, in_utc, whole_seconds
from tidings.textheaders import from_text, to_text, utc_moment, whole_number
from tidings.transport import ATTEMPTS_HEADER, LAST_ERROR_HEADER, REASON_HEADER, WireMessage

ROUTING_KEY_HEADER = "x-tidings-routing-key"
#: the exchange a message came through before a retry put it straight into a queue (over AMQP)
EXCHANGE_HEADER = "x-tidings-exchange"
#: STOMP headers of a SEND frame that say how to send it, not what is sent
RESERVED = frozenset(
    {"destination", "receipt", "content-length", "content-type", "transaction", "ack", "id", "message-id"}
)
#: message properties and the SEND headers RabbitMQ maps them from
PROPERTY_HEADERS = {
    "correlation_id": "correlation-id",
    "reply_to": "reply-to",
    "expiration": "expiration",
    "type": "type",
    "app_id": "app-id",
}
#: what RabbitMQ adds to a MESSAGE frame, or maps from properties: not the message's own headers
_ADDED = frozenset(
    {
        "subscription",
        "destination",
        "message-id",
        "redelivered",
        "ack",
        "persistent",
        "content-length",
        "content-type",
        "content-encoding",
        "amqp-message-id",
        "timestamp",
        "priority",
        "user-id",
        "x-delivery-count",
        "receipt",
        ROUTING_KEY_HEADER,
        EXCHANGE_HEADER,
        *PROPERTY_HEADERS.values(),
    }
)


#: what a header name cannot hold: STOMP escapes values only (stomp.py writes names as they are),
#: and a name with a line break or a colon breaks the frame (RabbitMQ drops the connection)
_UNSAFE_IN_NAMES = (":", "\\", "\n", "\r")


def reserved_headers(message: WireMessage) -> list[str]:
    """Headers of the message that a STOMP frame cannot carry under their own name: those that
    say how to send the frame, those RabbitMQ reads as message properties (``expiration`` would
    expire the message, ``priority=high`` refuse it) or writes itself, and names a frame cannot hold."""
    return sorted(
        name
        for name in message.headers
        if (name.lower() in RESERVED or name.lower() in _ADDED or any(c in name for c in _UNSAFE_IN_NAMES))
        and not _says_its_priority(message, name)
    )


def _says_its_priority(message: WireMessage, name: str) -> bool:
    """A ``priority`` header that is the message's priority (fedora-messaging writes both, 0 for
    none): it goes as the frame's ``priority``, which RabbitMQ makes the same property."""
    value = message.headers[name]
    return (
        name == "priority"
        and isinstance(value, int)
        and not isinstance(value, bool)
        and value == (message.priority or 0)
    )


def send_headers(message: WireMessage, extra: dict[str, Any] | None = None) -> dict[str, str]:
    """The headers of a SEND frame for ``message`` (without destination and receipt)."""
    headers = to_text({**message.headers, **(extra or {})})
    headers[ROUTING_KEY_HEADER] = message.routing_key
    headers["persistent"] = "true"
    if message.message_id:
        headers["amqp-message-id"] = message.message_id
    if message.content_type:
        headers["content-type"] = message.content_type
    if message.content_encoding:
        headers["content-encoding"] = message.content_encoding
    if message.timestamp is not None:
        headers["timestamp"] = str(whole_seconds(in_utc(message.timestamp)))
    if message.priority is not None:
        headers["priority"] = str(message.priority)
    for name, header in PROPERTY_HEADERS.items():
        value = message.properties.get(name)
        if value is not None:
            headers[header] = str(value)
    return headers


def received(headers: dict[str, str], body: bytes, *, dead_letters: bool) -> tuple[WireMessage, int, bool]:
    """A MESSAGE frame as a wire message, its attempt (1 + tries made) and whether it came back.

    A dead letter keeps its attempts and last error in its headers, for whoever reads it.
    """
    own = from_text({k: v for k, v in headers.items() if k not in _ADDED and k not in BROKER_HEADERS})
    tries = own.get(ATTEMPTS_HEADER)
    if isinstance(tries, str):  # written by a client that sends text only
        tries = whole_number(tries)
    if not dead_letters or REASON_HEADER not in own:
        own.pop(ATTEMPTS_HEADER, None)
        own.pop(LAST_ERROR_HEADER, None)
    elif isinstance(tries, int):
        own[ATTEMPTS_HEADER] = tries
    count = whole_number(headers.get("x-delivery-count", "0"))
    came_back = headers.get("redelivered") == "true" or bool(count)
    stamp = whole_number(headers.get("timestamp", ""))
    priority = whole_number(headers.get("priority", ""))
    message = WireMessage(
        routing_key=headers.get(ROUTING_KEY_HEADER) or _routing_key_of(headers.get("destination", "")),
        body=body,
        headers=own,
        message_id=headers.get("amqp-message-id") or None,
        content_type=headers.get("content-type") or None,
        content_encoding=headers.get("content-encoding") or None,
        timestamp=utc_moment(stamp) if stamp is not None else None,
        priority=priority if priority is not None and priority <= 255 else None,
        properties={name: headers[h] for name, h in PROPERTY_HEADERS.items() if h in headers},
        exchange=headers.get(EXCHANGE_HEADER) or None,
    )
    attempt = tries + 1 if isinstance(tries, int) and not isinstance(tries, bool) and tries >= 0 else 1
    return message, attempt, came_back


def _routing_key_of(destination: str) -> str:
    """``/exchange/<exchange>/<key>`` or ``/topic/<key>``: the key; else ""."""
    if destination.startswith("/exchange/"):
        return destination.split("/", 3)[3] if destination.count("/") >= 3 else ""
    if destination.startswith("/topic/"):
        return destination.removeprefix("/topic/")
    return ""
