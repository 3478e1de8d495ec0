"""The one small protocol every transport implements, and how transports are found.

A transport moves :class:`WireMessage` objects; it knows nothing of events or
schemas. A *format* (``tidings.formats``) turns an event into a wire message
and back, so one transport serves every seed system's wire format.

The core never imports a transport module: :func:`load_transport` finds its
plug-in (:mod:`tidings.plugins`) by name — the built-in ones below, then the
``tidings.transports`` entry-point group.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

from tidings.errors import ConfigError, InvalidEvent, UnknownTransport
from tidings.event import format_time, parse_time
from tidings.plugins import Plugin, Registry


@dataclass(slots=True)
class WireMessage:
    """What a broker carries: routing key, headers/properties and body bytes.

    ``exchange`` overrides the connector's exchange (Taskcluster publishes each
    kind of event to its own exchange); ``cc`` lists extra routing keys that
    the broker routes the same single message by (a queue matched by several
    of them still gets one copy); ``frames`` replaces the body for frame-based
    transports (ZeroMQ multipart).
    """

    routing_key: str
    body: bytes
    headers: dict[str, Any] = field(default_factory=dict)
    message_id: str | None = None
    content_type: str | None = "application/json"
    content_encoding: str | None = None
    timestamp: datetime | None = None
    priority: int | None = None
    exchange: str | None = None
    cc: list[str] = field(default_factory=list)
    frames: list[bytes] | None = None
    #: further AMQP basic properties (app_id, user_id, correlation_id, type, ...)
    properties: dict[str, Any] = field(default_factory=dict)


class Outcome(enum.Enum):
    """What became of one message a transport was asked to send."""

    DELIVERED = "delivered"  # the broker confirmed it and routed it somewhere
    RETRY = "retry"  # not taken now (nack, unroutable, throttled); try again later
    REFUSED = "refused"  # never acceptable (too large, forbidden): dead-letter it


@dataclass(slots=True, frozen=True)
class SendResult:
    outcome: Outcome
    reason: str = ""


DELIVERED = SendResult(Outcome.DELIVERED)


@dataclass(slots=True, frozen=True)
class ExchangeSpec:
    name: str
    type: str = "topic"
    durable: bool = True
    #: only check that it exists (brokers where the app may not declare, as Fedora's)
    passive: bool = False


@dataclass(slots=True, frozen=True)
class Binding:
    exchange: str
    pattern: str


@dataclass(slots=True)
class QueueSpec:
    """A durable queue owned by one consuming service."""

    name: str
    bindings: list[Binding] = field(default_factory=list)
    durable: bool = True
    #: "classic" or "quorum" where the broker knows the difference
    kind: str = "classic"
    #: broker-specific queue arguments, passed through untouched
    arguments: dict[str, Any] = field(default_factory=dict)

    @property
    def dead_letter_queue(self) -> str:
        return f"{self.name}.dead"


@dataclass(slots=True)
class Topology:
    exchanges: list[ExchangeSpec] = field(default_factory=list)
    queues: list[QueueSpec] = field(default_factory=list)


@dataclass(slots=True)
class Findings:
    """What a transport's ``verify(topology)`` found (``tidings doctor``): one line each."""

    problems: list[str] = field(default_factory=list)
    #: checks that could not run, and why
    notes: list[str] = field(default_factory=list)


#: headers a dead letter carries (every acknowledging transport): why, after how many attempts, from where
REASON_HEADER = "x-tidings-reason"
ATTEMPTS_HEADER = "x-tidings-attempts"
QUEUE_HEADER = "x-tidings-queue"
#: the last error of a message on its way back for another try (brokers that carry the count in it)
LAST_ERROR_HEADER = "x-tidings-last-error"
#: when a message was dead-lettered (RFC 3339, UTC): ``tidings dead list`` shows it
DEAD_AT_HEADER = "x-tidings-dead-at"
#: what a dead letter carries about its death; a requeued copy starts afresh without them
DEAD_LETTER_HEADERS = (REASON_HEADER, ATTEMPTS_HEADER, QUEUE_HEADER, LAST_ERROR_HEADER, DEAD_AT_HEADER)


def death_headers(reason: str, attempts: int, queue: str) -> dict[str, Any]:
    """The headers a message gets as it is dead-lettered, on every transport that acknowledges."""
    return {
        REASON_HEADER: reason[:1000],
        ATTEMPTS_HEADER: attempts,
        QUEUE_HEADER: queue,
        DEAD_AT_HEADER: format_time(datetime.now(UTC)),
    }


@runtime_checkable
class Delivery(Protocol):
    """One message handed to a consumer; settle it exactly once.

    A delivery may also say ``lost`` (a property): true once the connection it came on is gone,
    so that the broker hands it out again. The consumer runtime then leaves it unhandled.
    """

    message: WireMessage
    #: 1 + the tries settled so far (retries), counted by the broker, so it survives restarts
    attempt: int
    #: the broker handed this message out before and it came back unsettled (a consumer died, a
    #: connection dropped, a lease ran out, a release): the consumer runtime's journal tells
    #: whether a handler was running on it then
    redelivered: bool

    async def ack(self) -> None:
        """Done: remove it for good."""

    async def retry(self, delay: float, reason: str = "", *, attempts: int | None = None) -> None:
        """Deliver again after ``delay`` seconds; ``attempts`` tries were made (default ``attempt``),
        so the next delivery's ``attempt`` is one more."""

    async def reject(self, reason: str, *, attempts: int | None = None) -> None:
        """Give up: move it to the queue's dead letters with the reason and the attempts made."""

    async def release(self) -> None:
        """Put it back untouched, now, without counting an attempt (shutdown, halt)."""


@runtime_checkable
class Transport(Protocol):
    """A broker connection. Instances are made from the config table of one transport."""

    #: the registered name ("embedded", "amqp", "zeromq", ...)
    kind: str
    #: whether a DELIVERED outcome means the broker durably took the message
    acknowledged: bool
    # optional: ``guesses_redelivery = True`` where ``Delivery.redelivered`` can only be a guess
    # that errs towards yes (Kafka), and a message comes back no sooner than a session timeout
    # optional: ``dead_letters() -> DeadLetters`` where consumers' dead letters can be seen and
    # settled by an operator (``tidings dead``; see :class:`DeadLetters`)

    async def connect(self) -> None: ...

    async def close(self) -> None: ...

    async def declare(self, topology: Topology) -> None:
        """Create (or passively check) exchanges, queues and bindings; idempotent."""

    async def send(self, exchange: str, messages: Sequence[WireMessage]) -> list[SendResult]:
        """Send a batch; one result per message, in order.

        Raises :class:`~tidings.errors.TransportError` when the broker cannot be
        reached at all: then no message of the batch counts as delivered.
        """

    def consume(self, queue: QueueSpec, *, prefetch: int) -> AsyncIterator[Delivery]:
        """Deliveries from a declared queue, at most ``prefetch`` unsettled at once."""


@dataclass(slots=True)
class DeadLetter:
    """One message in a queue's dead letters (``<queue>.dead``), as ``tidings dead`` shows it."""

    #: the transport's handle for it: the embedded broker's row number, Kafka's ``partition:offset``,
    #: RabbitMQ's message id (a queue there has no other; a digest of the body without one)
    id: str
    #: the message as it lies in the dead letters, their headers included
    message: WireMessage
    reason: str = ""
    last_error: str = ""
    #: the tries made before it died (None: the message does not say)
    attempts: int | None = None
    #: when it was dead-lettered (None: not known)
    dead_at: datetime | None = None

    @classmethod
    def read(cls, id: str, message: WireMessage, dead_at: datetime | None = None) -> DeadLetter:  # noqa: A002
        """What a dead letter's headers say about its death (``dead_at``: the broker's, if it has one)."""
        headers = message.headers
        reason = str(headers.get(REASON_HEADER, ""))
        last_error = str(headers.get(LAST_ERROR_HEADER, ""))
        # the runtime writes "failed N times; last error: ..." into the reason: show the two apart
        before, sep, after = reason.partition("; last error: ")
        if sep and not last_error:
            reason, last_error = before, after
        return cls(
            id,
            message,
            reason,
            last_error,
            _attempts(headers.get(ATTEMPTS_HEADER)),
            _moment(headers.get(DEAD_AT_HEADER)) or dead_at,
        )

    def matches(self, wanted: str) -> bool:
        """Named by its handle or by its message id (the event id)."""
        return wanted in (self.id, self.message.message_id)

    def fresh(self) -> WireMessage:
        """The message as it was before it died: requeued, its handler gets it as a first attempt."""
        headers = {k: v for k, v in self.message.headers.items() if k not in DEAD_LETTER_HEADERS}
        return replace(self.message, headers=headers)


def _attempts(value: Any) -> int | None:
    if isinstance(value, str) and value.isdigit():  # text on brokers whose headers are text
        value = int(value)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _moment(value: Any) -> datetime | None:
    try:
        return parse_time(value) if isinstance(value, str) else None
    except InvalidEvent:
        return None


@runtime_checkable
class DeadLetters(Protocol):
    """Optional: a transport that keeps dead letters lets an operator see and settle them.

    A transport offers it with a method ``dead_letters() -> DeadLetters`` working over its own
    (connected) broker connection; ``tidings dead`` uses it. ``queue`` is a consumer's queue,
    whose dead letters are ``<queue>.dead``; ``ids`` name dead letters by :attr:`DeadLetter.id`
    or message id, ``None`` means all of them. Every method raises
    :class:`~tidings.errors.NotFound` for a queue that has no dead letters queue, and
    ``requeue``/``drop`` raise it, changing nothing, when an id names no dead letter.
    """

    async def count(self, queue: str, limit: int) -> int:
        """How many dead letters there are (up to ``limit``), without handing any out: a page
        anyone may open calls it (on RabbitMQ, even a look that gives a message back counts as a
        delivery of it against a quorum queue's delivery limit)."""

    async def list(self, queue: str, limit: int) -> list[DeadLetter]:
        """The oldest ``limit`` dead letters, oldest first; nothing is taken from them."""

    async def get(self, queue: str, id: str) -> DeadLetter | None:  # noqa: A002
        """The dead letter ``id`` names (the first, when a message id names several)."""

    async def requeue(self, queue: str, ids: Sequence[str] | None) -> int:
        """Put them back on ``queue`` as first attempts, then remove them from the dead letters.

        A copy is on the queue, confirmed by the broker, before its dead letter is removed: a
        failure in between leaves it in both (handled twice at worst, never lost). Returns how
        many were requeued.
        """

    async def drop(self, queue: str, ids: Sequence[str] | None) -> int:
        """Delete them for good; returns how many."""


def dead_letters(transport: Transport) -> DeadLetters:
    """The transport's dead letters, or a configuration error for a transport that keeps none."""
    make = getattr(transport, "dead_letters", None)  # optional in the transport protocol
    if make is None:
        raise ConfigError(f"the {transport.kind} transport keeps no dead letters")
    found: DeadLetters = make()
    return found


#: Transports that ship with tidings (each package's plug-in); entry points may add to or override these.
BUILTIN_TRANSPORTS = {
    "embedded": "tidings.transports.embedded:PLUGIN",
    "amqp": "tidings.transports.amqp:PLUGIN",
    "kafka": "tidings.transports.kafka:PLUGIN",
    "stomp": "tidings.transports.stomp:PLUGIN",
    "zeromq": "tidings.transports.zeromq:PLUGIN",
    "file": "tidings.transports.file:PLUGIN",
}
TRANSPORTS = Registry("tidings.transports", BUILTIN_TRANSPORTS, "transport", UnknownTransport)


def transport_plugin(kind: str) -> Plugin:
    """The plug-in registered as ``kind`` (its options' struct and where its class is)."""
    return TRANSPORTS.find(kind)


def load_transport(kind: str, options: dict[str, Any], where: str = "") -> Transport:
    """Build the transport registered as ``kind`` from its config options (checked first)."""
    return transport_plugin(kind).build("transport", options, where or f"transport {kind!r}")
