"""The errors tidings raises on purpose.

Every error a user can cause (bad input, bad config, an unreachable broker)
is a :class:`TidingsError`; the CLI turns it into one line on stderr and the
exit code named on the class, never a traceback.
"""

from __future__ import annotations


class TidingsError(Exception):
    """Base of every error tidings raises deliberately."""

    #: exit code the CLI uses for this kind of error (see ``docs/cli.md``)
    exit_code = 1


class ConfigError(TidingsError):
    """The configuration file is missing, unreadable or has unknown keys."""

    exit_code = 3


class InvalidEvent(TidingsError):
    """An event (or a message that should decode to one) is malformed."""

    exit_code = 4


class InvalidTopic(InvalidEvent):
    """A routing key or a binding pattern breaks the topic rules."""


class SchemaError(InvalidEvent):
    """An event body does not satisfy the JSON Schema of its type."""

    def __init__(self, message: str, *, type_: str | None = None, path: str = "") -> None:
        super().__init__(message)
        self.type = type_
        self.path = path


class InvalidSchema(SchemaError):
    """A type's schema cannot itself be compiled: the configuration is wrong, not the event (a
    consumer still dead-letters what it cannot check, with this as the reason)."""

    exit_code = 3


class UnknownSchema(SchemaError):
    """An event names a type for which no schema is registered."""


class DecodeError(InvalidEvent):
    """A wire message could not be decoded by a format."""


class StorageError(TidingsError):
    """A local store (outbox, inbox, handling journal) could not write: disk full, I/O error."""

    exit_code = 5


class OutboxError(StorageError):
    """The outbox could not durably store an event (disk full, I/O error)."""


class TransportError(TidingsError):
    """A transport could not reach or use its broker."""

    exit_code = 6


class ConnectionLost(TransportError):
    """The broker connection dropped; the operation may be retried."""


class UnknownTransport(ConfigError):
    """No transport is registered under the configured name."""


class HaltedError(TidingsError):
    """A consumer's handler raised Halt: the app stopped, the message went back untouched."""

    exit_code = 8


class DispatcherBusy(TidingsError):
    """Another dispatcher already delivers from this outbox (it holds the outbox's lock)."""

    exit_code = 7


class NotFound(TidingsError):
    """What a command names does not exist: a queue's dead letters, a dead letter's id."""

    exit_code = 4


class InvalidQuery(TidingsError, ValueError):
    """An archive search that cannot be run: a malformed cursor, a page below 1 (a ValueError
    too: what the query API answers with a 400)."""

    exit_code = 4
