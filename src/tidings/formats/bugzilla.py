"""Bugzilla Push: the messages Bugzilla's Push extension queues for its connectors (docs/systems/bugzilla.md).

Facts (mozilla-bteam/bmo, extensions/Push/Extension.pm ``_push_object`` and ``_object_modified``):
the payload is ``{"event": {...}, "<target>": {...}}`` with target bug, comment or attachment;
``event.routing_key`` is ``<target>.<action>``, followed by ``:`` and the changed fields joined by
``,`` when the event carries changes (the fields in sorted order, ``isprivate`` renamed
``is_private``); ``change_set`` is ``<pid>.<epoch with fraction>``; ``time`` is UTC without zone;
a private object sends the event only (seed 002 "Private Messages"); webhooks reduce a private bug
to ``{id, is_private}``. Each connector retries on its own: 5**attempt seconds for attempts 1-4,
then 15 minutes (extensions/Push/lib/Backoff.pm ``inc``) — :data:`BACKOFF_SCHEDULE` for a
connector's ``retry_schedule``.
"""

from __future__ import annotations

import os
import time as _time
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from tidings.archive import SearchFields
from tidings.errors import DecodeError, InvalidEvent
from tidings.event import Event, loads, pretty
from tidings.format import json_message, stable_id
from tidings.plugins import Plugin, Settings
from tidings.transport import WireMessage

TARGETS = ("bug", "comment", "attachment")
ACTIONS = ("create", "modify", "update")
BACKOFF_SCHEDULE = [5.0, 25.0, 125.0, 625.0, 900.0]
TYPE = "bugzilla.push.v1"
#: a message that came without a message id gets the same event id on every redelivery
_ID_NAMESPACE = uuid.UUID("0b8f3c52-77a4-4f0e-8d0c-5d6f0a1e2b93")


def change_set_id() -> str:
    """``<pid>.<epoch seconds with fraction>``, like ``3624.1480914009.90748`` in seed 002."""
    return f"{os.getpid()}.{_time.time():.5f}"


def push_routing_key(target: str, action: str, changes: Iterable[Mapping[str, Any]] = ()) -> str:
    key = f"{target}.{action}"
    fields = [str(change["field"]) for change in changes]
    return f"{key}:{','.join(fields)}" if fields else key


def _changes(changed: Mapping[str, tuple[Any, Any]]) -> list[dict[str, Any]]:
    # sorted by the field's own name, then isprivate is renamed, as _object_modified does
    return [
        {"field": name.replace("isprivate", "is_private"), "removed": old, "added": new}
        for name, (old, new) in sorted(changed.items())
    ]


def bugzilla_event(
    target: str,
    action: str,
    obj: dict[str, Any],
    *,
    user: dict[str, Any],
    bug_id: int,
    changed: Mapping[str, tuple[Any, Any]] | None = None,
    private: bool = False,
    change_set: str | None = None,
    when: datetime | None = None,
) -> Event:
    """The message Bugzilla pushes when ``obj`` (a serialised bug, comment or attachment) changes."""
    if target not in TARGETS or action not in ACTIONS:
        raise InvalidEvent(f"Bugzilla push: target must be one of {TARGETS} and action one of {ACTIONS}")
    moment = (when or datetime.now(UTC)).astimezone(UTC)
    event: dict[str, Any] = {
        "target": target,
        "action": action,
        "bug_id": bug_id,
        "user": user,
        "change_set": change_set or change_set_id(),
        "time": moment.replace(microsecond=0, tzinfo=None).isoformat(),  # four-digit years, always
    }
    if changed:
        event["changes"] = _changes(changed)
    event["routing_key"] = push_routing_key(target, action, event.get("changes", ()))
    payload = {"event": event} if private else {"event": event, target: obj}
    return Event.create(
        event["routing_key"],
        payload,
        source="bugzilla",
        type=TYPE,
        time=moment,
        visibility="private" if private else "public",
    )


def webhook_payload(payload: dict[str, Any]) -> dict[str, Any]:
    """What a webhook receives: a private bug is reduced to ``{id, is_private}``."""
    bug = payload.get("bug")
    if isinstance(bug, dict) and bug.get("is_private"):
        return {**payload, "bug": {"id": bug.get("id"), "is_private": True}}
    return payload


class BugzillaFormat:
    """Format ``bugzilla``: the Push payload as the message body, its routing key on the wire.

    Option ``file_block``: also prepare the block Bugzilla's File connector writes — a
    ``[local time]`` line, the pretty-printed payload, a blank line (mozilla-bteam/bmo,
    extensions/Push/lib/Connector/File.pm, ``send``) — for a file transport with
    ``style = "raw"``.
    """

    name = "bugzilla"

    def __init__(self, file_block: bool = False) -> None:
        self.file_block = file_block

    def encode(self, event: Event) -> WireMessage:
        body = event.body
        if event.visibility == "private":  # never more than the event (docs/systems/bugzilla.md)
            body = {"event": body.get("event", {})}
        message = json_message(event, body)
        if self.file_block:
            block = f"[{_time.asctime()}]\n".encode() + pretty(body) + b"\n\n"
            message.frames = [block]
        return message

    def decode(self, message: WireMessage) -> Event:
        payload = loads(message.body)
        if not isinstance(payload, dict) or not isinstance(payload.get("event"), dict):
            raise DecodeError("not a Bugzilla push message: it needs an 'event' object")
        event = payload["event"]
        target, key = event.get("target"), event.get("routing_key") or message.routing_key
        if target not in TARGETS or not isinstance(key, str):
            raise DecodeError(f"Bugzilla push message: unknown target {target!r}")
        extra = set(payload) - {"event", target}
        if extra:
            raise DecodeError(
                f"Bugzilla push message: unexpected part(s) {', '.join(sorted(map(str, extra)))}"
            )
        return Event.create(
            key,
            payload,
            source="bugzilla",
            type=TYPE,
            id=message.message_id or stable_id(message, _ID_NAMESPACE),
            time=_time_of(event),
            visibility="public" if target in payload else "private",
        )

    def search_fields(self, event: Event) -> SearchFields:
        return bugzilla_search_fields(event)


def bugzilla_search_fields(event: Event) -> SearchFields:
    """The bug's product and component as packages; who acted, the assignee and the reporter as
    users (who acted is also the agent). A private event carries no bug: only who acted."""
    push = event.body.get("event") if isinstance(event.body.get("event"), dict) else {}
    target = push.get("target")
    obj = event.body.get(target) if isinstance(target, str) else None
    bug = obj if target == "bug" else (obj or {}).get("bug") if isinstance(obj, dict) else None
    bug = bug if isinstance(bug, dict) else {}
    who = _login(push.get("user"))
    users = [who, _login(bug.get("assigned_to")), _login(bug.get("reporter") or bug.get("creator"))]
    packages = [_login(bug.get("product")), _login(bug.get("component"))]
    return SearchFields(
        tuple(dict.fromkeys(u for u in users if u)), tuple(dict.fromkeys(p for p in packages if p)), (), who
    )


def _login(value: Any) -> str | None:
    """A user or product as Bugzilla serialises it: a string, or an object with login or name."""
    if isinstance(value, dict):
        value = value.get("login") or value.get("name")
    return value if isinstance(value, str) and value else None


def _time_of(event: dict[str, Any]) -> datetime | None:
    stamp = event.get("time")
    if stamp is None:
        return None
    try:
        return datetime.strptime(str(stamp), "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    except ValueError:
        raise DecodeError(f"Bugzilla push message: time {stamp!r} is not YYYY-MM-DDTHH:MM:SS") from None


class BugzillaOptions(Settings):
    #: prepare Bugzilla's File connector block for a file transport with ``style = "raw"``
    file_block: bool = False


PLUGIN = Plugin("bugzilla", "tidings.formats.bugzilla:BugzillaFormat", BugzillaOptions)
