"""Formats: an Event to what a given system puts on the wire, and back.

Each seed system has its own module; ``tidings`` (CloudEvents binary mode) is
the native one. Formats are found by name through the ``tidings.formats``
entry-point group, the same way transports are.
"""

from __future__ import annotations

import uuid
from importlib import import_module
from importlib.metadata import entry_points
from typing import Any, Protocol, runtime_checkable

from tidings.errors import ConfigError
from tidings.event import Event, dumps
from tidings.transport import WireMessage


@runtime_checkable
class Format(Protocol):
    name: str

    def encode(self, event: Event) -> WireMessage:
        """The wire message this system would send for ``event``."""

    def decode(self, message: WireMessage) -> Event:
        """The event a wire message carries; raises DecodeError (never anything else)."""


def wire_pattern(fmt: Format, pattern: str) -> str:
    """A subscription's topic pattern as a binding on the wire.

    Consumers subscribe in the topics events are published with; a format whose routing
    keys differ (fedora-messaging puts its ``topic_prefix`` in front) says how with an
    optional ``wire_pattern`` method.
    """
    translate = getattr(fmt, "wire_pattern", None)
    return translate(pattern) if translate is not None else pattern


def json_message(event: Event, body: Any, **fields: Any) -> WireMessage:
    """The persistent JSON message most systems send: event id as message_id, event time as timestamp."""
    return WireMessage(
        routing_key=event.topic,
        body=dumps(body),
        message_id=event.id,
        content_type="application/json",
        timestamp=event.time,
        properties={"delivery_mode": 2},
        **fields,
    )


def stable_id(message: WireMessage, namespace: uuid.UUID) -> str:
    """An id for a message that arrived without one: the same message always gets the same id,
    so a redelivery is recognised by an inbox."""
    return str(uuid.uuid5(namespace, message.routing_key + "\0" + message.body.decode("utf-8", "replace")))


BUILTIN_FORMATS = {
    "tidings": "tidings.formats.native:NativeFormat",
    "cloudevents-structured": "tidings.formats.native:StructuredFormat",
    "cki": "tidings.formats.cki:CKIFormat",
    "fedora-messaging": "tidings.formats.fedora:FedoraMessagingFormat",
    "fedmsg": "tidings.formats.fedmsg:FedmsgFormat",
    "lava": "tidings.formats.lava:LavaFormat",
    "bugzilla": "tidings.formats.bugzilla:BugzillaFormat",
    "taskcluster": "tidings.formats.taskcluster:TaskclusterFormat",
}


def format_names() -> dict[str, str]:
    names = dict(BUILTIN_FORMATS)
    for ep in entry_points(group="tidings.formats"):
        names[ep.name] = ep.value
    return names


def load_format(name: str, **options: object) -> Format:
    target = format_names().get(name)
    if target is None:
        raise ConfigError(f"unknown format {name!r} (known: {', '.join(sorted(format_names()))})")
    module_name, _, attr = target.partition(":")
    try:
        cls = getattr(import_module(module_name), attr)
    except ImportError as exc:
        raise ConfigError(
            f"format {name!r} needs a package that is not installed ({exc.name}); install tidings[all]"
        ) from None
    try:
        return cls(**options)
    except TypeError as exc:
        raise ConfigError(f"format {name!r}: {exc}") from None
