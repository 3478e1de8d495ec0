"""CKI DataWarehouse: the messages it announces KCIDB object changes with (docs/systems/cki.md).

On the wire: exchange ``cki.exchange.datawarehouse``, routing key
``datawarehouse.{object_type}.{status}``, a JSON body
``{"timestamp", "status", "object_type", "object"}`` whose object is a KCIDB
object (schema v5.3, validated with the ``kcidb-io`` package), services
consuming from ``cki.queue.webhooks.{service}`` and acking only when done.

The event type is ``cki.datawarehouse.v1``; its schema (:mod:`.schema`) is built from
kcidb-io's own v5.3 schema when kcidb-io is installed (``tidings[cki]``), so a
checkout, build or test that KCIDB would refuse is refused before it is queued.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

from tidings.errors import DecodeError, InvalidEvent
from tidings.event import Event, loads
from tidings.format import json_message, stable_id
from tidings.transport import WireMessage

EXCHANGE = "cki.exchange.datawarehouse"
TYPE = "cki.datawarehouse.v1"
SOURCE = "datawarehouse"
#: every status of seed 000, in the order it lists them
STATUSES = (
    "new",
    "needs_triage",
    "ready_to_report",
    "updated",
    "build_setups_finished",
    "tests_finished",
    "checkout_issueoccurrences_changed",
)
#: statuses that "always relate to a checkout" (docs/systems/cki.md)
CHECKOUT_ONLY = ("build_setups_finished", "tests_finished", "checkout_issueoccurrences_changed")
#: KCIDB object kinds with a schema in v5.3 (checkouts, builds, tests, issues, incidents)
OBJECT_TYPES = ("checkout", "build", "test", "issue", "incident")
#: a fixed namespace, so a message without message_id gets the same event id every time it comes
_ID_NAMESPACE = uuid.UUID("6f1d5a3e-1c2b-4f4e-9a57-3c3b2d1e0c11")


def routing_key(object_type: str, status: str) -> str:
    if object_type not in OBJECT_TYPES:
        raise InvalidEvent(f"CKI object_type must be one of {', '.join(OBJECT_TYPES)}, not {object_type!r}")
    if status not in STATUSES:
        raise InvalidEvent(f"CKI status must be one of {', '.join(STATUSES)}, not {status!r}")
    if status in CHECKOUT_ONLY and object_type != "checkout":
        raise InvalidEvent(f"CKI status {status!r} is always about a checkout, not a {object_type}")
    return f"datawarehouse.{object_type}.{status}"


def queue_name(service: str) -> str:
    """The queue a DataWarehouse-consuming service owns."""
    return f"cki.queue.webhooks.{service}"


def binding(object_type: str = "*", status: str = "*") -> str:
    """A binding pattern: ``binding("checkout")`` → ``datawarehouse.checkout.*``."""
    return f"datawarehouse.{object_type}.{status}"


def cki_event(
    object_type: str,
    status: str,
    obj: dict[str, Any],
    *,
    timestamp: datetime | None = None,
    source: str = SOURCE,
) -> Event:
    """The event the DataWarehouse announces when ``obj`` (a KCIDB object) changes."""
    moment = (timestamp or datetime.now(UTC)).astimezone(UTC)
    body = {"timestamp": moment.isoformat(), "status": status, "object_type": object_type, "object": obj}
    return Event.create(routing_key(object_type, status), body, source=source, type=TYPE, time=moment)


class CKIFormat:
    """Format ``cki``: the DataWarehouse's own messages, no envelope headers added."""

    name = "cki"

    def encode(self, event: Event) -> WireMessage:
        body = event.body
        expected = routing_key(str(body.get("object_type")), str(body.get("status")))
        if event.topic != expected:
            raise InvalidEvent(
                f"topic {event.topic!r} does not match the body's object_type and status ({expected!r})"
            )
        return json_message(event, body)

    def decode(self, message: WireMessage) -> Event:
        body = loads(message.body)
        if not isinstance(body, dict) or not {"status", "object_type", "object"} <= body.keys():
            raise DecodeError("not a DataWarehouse message: the body needs status, object_type and object")
        if not isinstance(body["object"], dict):
            raise DecodeError("DataWarehouse message: 'object' must be a JSON object")
        try:
            topic = routing_key(str(body["object_type"]), str(body["status"]))
        except InvalidEvent as exc:
            raise DecodeError(f"DataWarehouse message: {exc}") from None
        return Event.create(
            topic,
            body,
            source=SOURCE,
            type=TYPE,
            id=message.message_id or stable_id(message, _ID_NAMESPACE),
            time=_time_of(body, message),
        )


def _time_of(body: dict[str, Any], message: WireMessage) -> datetime | None:
    stamp = body.get("timestamp")
    if isinstance(stamp, str):
        try:
            moment = datetime.fromisoformat(stamp)
        except ValueError:
            raise DecodeError(f"DataWarehouse message: timestamp {stamp!r} is not ISO 8601") from None
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    if stamp is not None:
        raise DecodeError(f"DataWarehouse message: timestamp must be an ISO 8601 string, not {stamp!r}")
    return message.timestamp


def needs_triage(events: Iterable[Event]) -> Iterator[Event]:
    """One ``needs_triage`` per object seen (its latest state): the re-triage replay of seed 000."""
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for event in events:
        body = event.body
        obj = body.get("object") if event.type == TYPE else None
        if (
            isinstance(obj, dict)
            and isinstance(obj.get("id"), str)
            and body.get("object_type") in OBJECT_TYPES
        ):
            latest[(body["object_type"], obj["id"])] = obj
    for (object_type, _), obj in latest.items():
        yield cki_event(object_type, "needs_triage", obj)
