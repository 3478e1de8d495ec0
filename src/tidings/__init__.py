"""tidings: a reliable event bus for CI and infrastructure services.

The public API in one place::

    from tidings import Bus, App, Event, Retry, Drop, Reject, Halt
"""

from __future__ import annotations

from importlib import import_module

TYPE_CHECKING = False  # typing's own, without importing typing (see _HOMES)
if TYPE_CHECKING:
    from tidings.bus import Bus
    from tidings.consumer import App, Context, Drop, Halt, Reject, Retry
    from tidings.errors import (
        ConfigError,
        DecodeError,
        InvalidEvent,
        InvalidTopic,
        OutboxError,
        SchemaError,
        TidingsError,
        TransportError,
        UnknownSchema,
    )
    from tidings.event import Event

#: where each public name lives: loaded when first asked for, so that ``import tidings`` (and
#: the command's entry point, tidings._entry) costs nothing before Ctrl-C is the command's to handle
_HOMES = {
    "Bus": "tidings.bus",
    **dict.fromkeys(["App", "Context", "Drop", "Halt", "Reject", "Retry"], "tidings.consumer"),
    **dict.fromkeys(
        [
            "ConfigError",
            "DecodeError",
            "InvalidEvent",
            "InvalidTopic",
            "OutboxError",
            "SchemaError",
            "TidingsError",
            "TransportError",
            "UnknownSchema",
        ],
        "tidings.errors",
    ),
    "Event": "tidings.event",
}


def __getattr__(name: str) -> object:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'tidings' has no attribute {name!r}")
    value = getattr(import_module(home), name)
    globals()[name] = value
    return value


__all__ = [
    "App",
    "Bus",
    "ConfigError",
    "Context",
    "DecodeError",
    "Drop",
    "Event",
    "Halt",
    "InvalidEvent",
    "InvalidTopic",
    "OutboxError",
    "Reject",
    "Retry",
    "SchemaError",
    "TidingsError",
    "TransportError",
    "UnknownSchema",
]
__version__ = "0.1.0"
