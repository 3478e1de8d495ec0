"""The one small protocol every format implements, and how formats are found.

A format turns an :class:`~tidings.event.Event` into what a given system puts on
the wire (routing key, headers and properties, body bytes or frames) and back, so
one transport serves every seed system. ``tidings`` (CloudEvents binary mode) is
the native format; each seed system has its own module or package under
``tidings/formats/``.

Formats are plug-ins of the same shape as transports (:mod:`tidings.plugins`): the
built-in ones are listed once below, more come from the ``tidings.formats``
entry-point group, and their options are checked when the config is read.
"""

from __future__ import annotations

import uuid
from typing import Any, Protocol, runtime_checkable

from tidings.archive import SearchFields
from tidings.event import Event, dumps
from tidings.plugins import Plugin, Registry
from tidings.transport import WireMessage


@runtime_checkable
class Format(Protocol):
    name: str

    def encode(self, event: Event) -> WireMessage:
        """The wire message this system would send for ``event``."""

    def decode(self, message: WireMessage) -> Event:
        """The event a wire message carries; raises DecodeError (never anything else)."""

    # optional: ``search_fields(event) -> tidings.archive.SearchFields``: what this system's
    # messages say about users, packages, containers and the agent (datagrepper's search keys),
    # for the archive; a format without it gives none (see :func:`search_fields`)


#: Formats that ship with tidings (each module's plug-in); entry points may add to or override these.
BUILTIN_FORMATS = {
    "tidings": "tidings.formats.native:PLUGIN",
    "cloudevents-structured": "tidings.formats.native:STRUCTURED_PLUGIN",
    "cki": "tidings.formats.cki:PLUGIN",
    "fedora-messaging": "tidings.formats.fedora:FEDORA_MESSAGING_PLUGIN",
    "fedmsg": "tidings.formats.fedora:FEDMSG_PLUGIN",
    "lava": "tidings.formats.lava:PLUGIN",
    "bugzilla": "tidings.formats.bugzilla:PLUGIN",
    "taskcluster": "tidings.formats.taskcluster:PLUGIN",
}
FORMATS = Registry("tidings.formats", BUILTIN_FORMATS, "format")


def format_names() -> dict[str, str]:
    return FORMATS.names()


def format_plugin(name: str) -> Plugin:
    return FORMATS.find(name)


def load_format(name: str, options: dict[str, Any] | None = None, where: str = "") -> Format:
    """Build the format registered as ``name`` with its options (checked first)."""
    return format_plugin(name).build("format", options or {}, where or f"format {name!r}")


def wire_pattern(fmt: Format, pattern: str) -> str:
    """A subscription's topic pattern as a binding on the wire.

    Consumers subscribe in the topics events are published with; a format whose routing
    keys differ (fedora-messaging puts its ``topic_prefix`` in front) says how with an
    optional ``wire_pattern`` method.
    """
    translate = getattr(fmt, "wire_pattern", None)
    return translate(pattern) if translate is not None else pattern


def search_fields(fmt: Format, event: Event) -> SearchFields:
    """The archive's search fields of ``event`` as ``fmt`` reads them (none if it cannot)."""
    find = getattr(fmt, "search_fields", None)  # optional in the format protocol
    if find is None:
        return SearchFields()
    try:
        found: SearchFields = find(event)
    except Exception:  # a body the format half recognises must not stop the archive: no fields
        return SearchFields()
    return found


# -- helpers the seed formats share ------------------------------------------------------------


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


def stable_id(message: WireMessage, namespace: uuid.UUID, *more: str) -> str:
    """An id for a message that arrived without one: the same message always gets the same id,
    so a redelivery is recognised by an inbox. ``more``: whatever else tells two messages apart
    in this format (an exchange, routes)."""
    text = "\0".join((message.routing_key, *more, message.body.decode("utf-8", "replace")))
    return str(uuid.uuid5(namespace, text))
