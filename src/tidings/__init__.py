"""tidings: a reliable event bus for CI and infrastructure services.

The public API in one place::

    from tidings import Bus, App, Event, Retry, Drop, Reject, Halt
"""

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
