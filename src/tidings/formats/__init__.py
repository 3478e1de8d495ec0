"""Formats: an Event to what a given system puts on the wire, and back.

Each seed system has its own module; ``tidings`` (CloudEvents binary mode) is
the native one. Formats are found by name through the ``tidings.formats``
entry-point group, the same way transports are.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import entry_points
from typing import Protocol, runtime_checkable

from tidings.errors import ConfigError
from tidings.event import Event
from tidings.transport import WireMessage


@runtime_checkable
class Format(Protocol):
    name: str

    def encode(self, event: Event) -> WireMessage:
        """The wire message this system would send for ``event``."""

    def decode(self, message: WireMessage) -> Event:
        """The event a wire message carries; raises DecodeError (never anything else)."""


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
    cls = getattr(import_module(module_name), attr)
    try:
        return cls(**options)
    except TypeError as exc:
        raise ConfigError(f"format {name!r}: {exc}") from None
