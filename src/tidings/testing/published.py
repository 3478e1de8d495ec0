"""What code under test published: read from the bus's outbox, where ``publish()`` stored it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from tidings.event import Event
from tidings.testing.matching import body_difference, describe
from tidings.topics import topic_matches, validate_pattern
from tidings.transport import WireMessage

if TYPE_CHECKING:
    from tidings.bus import Bus


def published(bus: Bus, pattern: str = "#") -> list[Event]:
    """Every event in the bus's outbox whose topic matches ``pattern``, oldest first."""
    validate_pattern(pattern)
    return [event for event in bus.outbox.history() if topic_matches(pattern, event.topic)]


def assert_published(
    bus: Bus,
    topic: str = "#",
    *,
    body_contains: Mapping[str, Any] | None = None,
    type: str | None = None,  # noqa: A002 - the envelope field is called type
    count: int | None = None,
) -> list[Event]:
    """The events published on ``bus`` whose topic matches ``topic``, whose body contains
    ``body_contains`` (see :func:`~tidings.testing.matching.body_difference`) and whose type is
    ``type`` (when given); there must be ``count`` of them (default: at least one).

    Raises AssertionError listing what was published instead, each with why it did not match.
    """
    if count is not None and count < 0:
        raise ValueError(f"assert_published: count must be 0 or more, not {count}")
    validate_pattern(topic)
    everything = list(bus.outbox.history())
    matched = [event for event in everything if _why_not(event, topic, body_contains, type) is None]
    if (len(matched) >= 1) if count is None else (len(matched) == count):
        return matched
    wanted = _wanted(topic, body_contains, type, count)
    if not everything:
        raise AssertionError(f"expected {wanted}; nothing was published")
    lines = [f"expected {wanted}; {len(matched)} matched. Published ({len(everything)}):"]
    for n, event in enumerate(everything, 1):
        why = _why_not(event, topic, body_contains, type)
        lines.append(f"  {n}. {describe(event)}" + (f"\n       not it: {why}" if why else ""))
    raise AssertionError("\n".join(lines))


def _why_not(event: Event, topic: str, body: Mapping[str, Any] | None, type_: str | None) -> str | None:
    if not topic_matches(topic, event.topic):
        return f"topic {event.topic!r} does not match {topic!r}"
    if type_ is not None and event.type != type_:
        return f"type {event.type!r}, not {type_!r}"
    return body_difference(body, event.body) if body is not None else None


def _wanted(topic: str, body: Mapping[str, Any] | None, type_: str | None, count: int | None) -> str:
    how_many = "at least 1 event" if count is None else f"{count} event(s)"
    said = [f"topic {topic!r}"]
    if type_ is not None:
        said.append(f"type {type_!r}")
    if body is not None:
        said.append(f"body containing {dict(body)!r}")
    return f"{how_many} with {', '.join(said)}"


def on_the_wire(bus: Bus, event: Event, connector: str | None = None) -> WireMessage:
    """The message ``connector`` (default: the bus's only one) would send for ``event``: its
    format's encoding, e.g. fedora-messaging's routing key with its ``topic_prefix``.

    Raises AssertionError when the connector's ``topics`` do not let the event through.
    """
    connectors = bus.config.connectors
    if connector is None:
        if len(connectors) != 1:
            names = ", ".join(sorted(connectors)) or "none"
            raise ValueError(f"on_the_wire: the bus has several connectors ({names}): name one")
        connector = next(iter(connectors))
    config = connectors.get(connector)
    if config is None:
        names = ", ".join(sorted(connectors)) or "none"
        raise ValueError(f"on_the_wire: no connector named {connector!r} (configured: {names})")
    if not any(topic_matches(pattern, event.topic) for pattern in config.topics):
        raise AssertionError(
            f"connector {connector!r} does not carry {event.topic!r} (its topics: {config.topics})"
        )
    where = f"[connectors.{connector}] format_options"
    return bus.make_format(config.format, config.format_options, where).encode(event)
