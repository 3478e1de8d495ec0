"""LAVA's event stream: ZeroMQ PUB, five frames ``[topic, uuid1, datetime, username, JSON data]``.

Facts (docs/systems/lava.md; Linaro/lava ``lava_scheduler_app/signals.py``, ``send_event``): topics are
``<EVENT_TOPIC>.testjob``, ``.device``, ``.worker`` and ``.event``; the uuid is ``uuid.uuid1()``;
the datetime is ISO 8601 — older servers wrote naive UTC (``utcnow().isoformat()``), newer ones
add ``+00:00``; both are read. Subscribers filter by topic prefix; ReactOBus-style field
filters (``topic``, ``username``, ``data.<key>``) match with ``re.match``, anchored at the start.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from tidings.archive import SearchFields
from tidings.errors import DecodeError, InvalidEvent
from tidings.event import Event, in_utc, loads
from tidings.plugins import Plugin, Settings
from tidings.transport import WireMessage

KINDS = ("testjob", "device", "worker", "event")
DEFAULT_EVENT_TOPIC = "org.linaro.validation"


def lava_event(
    kind: str, data: dict[str, Any], *, event_topic: str = DEFAULT_EVENT_TOPIC, username: str = "lavaserver"
) -> Event:
    """An event as a LAVA server's ``send_event`` would announce it."""
    if kind not in KINDS:
        raise InvalidEvent(f"LAVA event kind must be one of {', '.join(KINDS)}, not {kind!r}")
    return Event.create(
        f"{event_topic}.{kind}",
        data,
        source="lava",
        type=f"lava.{kind}.v1",
        headers={"username": username},
        id=str(uuid.uuid1()),
    )


class LavaFormat:
    """Format ``lava``; option ``legacy_time`` writes the old naive-UTC datetime frame."""

    name = "lava"

    def __init__(self, legacy_time: bool = False) -> None:
        self.legacy_time = legacy_time

    def encode(self, event: Event) -> WireMessage:
        moment = event.time.astimezone(UTC)
        stamp = moment.replace(tzinfo=None).isoformat() if self.legacy_time else moment.isoformat()
        username = str(event.headers.get("username", event.source))
        data = json.dumps(event.body).encode()  # LAVA's own json.dumps, default separators
        frames = [event.topic.encode(), event.id.encode(), stamp.encode(), username.encode(), data]
        return WireMessage(
            routing_key=event.topic, body=data, message_id=event.id, timestamp=moment, frames=frames
        )

    def decode(self, message: WireMessage) -> Event:
        frames = message.frames
        if frames is None or len(frames) != 5:
            raise DecodeError(f"a LAVA event has 5 frames, not {len(frames) if frames else 0}")
        try:
            topic, event_id, stamp, username = (frame.decode() for frame in frames[:4])
        except UnicodeDecodeError:
            raise DecodeError("LAVA event frames 1-4 must be UTF-8") from None
        data = loads(frames[4])
        if not isinstance(data, dict):
            raise DecodeError("LAVA event data must be a JSON object")
        kind = topic.rsplit(".", 1)[-1]
        return Event.create(
            topic,
            data,
            source="lava",
            type=f"lava.{kind}.v1" if kind in KINDS else None,
            headers={"username": username},
            id=event_id,
            time=parse_lava_time(stamp),
        )

    def search_fields(self, event: Event) -> SearchFields:
        """The device type as a package (what a LAVA dashboard filters by), the job's submitter
        as a user, the device (hostname) as the agent."""
        device_type, submitter = event.body.get("device_type"), event.body.get("submitter")
        device = event.body.get("device") or event.body.get("hostname")
        return SearchFields(
            users=(submitter,) if isinstance(submitter, str) and submitter else (),
            packages=(device_type,) if isinstance(device_type, str) and device_type else (),
            agent=device if isinstance(device, str) and device else None,
        )


def parse_lava_time(stamp: str) -> datetime:
    try:
        moment = datetime.fromisoformat(stamp)
    except ValueError:
        raise DecodeError(f"LAVA event datetime {stamp!r} is not ISO 8601") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else in_utc(moment)


class FieldFilter:
    """ReactOBus-style filter: every field's regex must ``re.match`` (anchored at the start).

    Fields: ``topic``, ``username`` and ``data.<key>`` (a missing key never matches).
    """

    def __init__(self, fields: Mapping[str, str]) -> None:
        self.fields: dict[str, re.Pattern[str]] = {}
        for name, expression in fields.items():
            if name not in ("topic", "username") and not name.startswith("data."):
                raise InvalidEvent(f"filter field must be topic, username or data.<key>, not {name!r}")
            try:
                self.fields[name] = re.compile(expression)
            except re.error as exc:
                raise InvalidEvent(f"filter {name}: bad regular expression {expression!r}: {exc}") from None

    def __call__(self, event: Event) -> bool:
        return all(
            self._value(event, name) is not None and pattern.match(self._value(event, name) or "")
            for name, pattern in self.fields.items()
        )

    @staticmethod
    def _value(event: Event, name: str) -> str | None:
        if name == "topic":
            return event.topic
        if name == "username":
            value = event.headers.get("username")
            return None if value is None else str(value)
        value = event.body.get(name.removeprefix("data."))
        return None if value is None else str(value)


class LavaOptions(Settings):
    #: write the datetime frame as older LAVA servers did: naive UTC, no ``+00:00``
    legacy_time: bool = False


PLUGIN = Plugin("lava", "tidings.formats.lava:LavaFormat", LavaOptions)
