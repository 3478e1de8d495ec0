"""Bugzilla Push payloads (seed 002; mozilla-bteam/bmo extensions/Push/Extension.pm, lib/Backoff.pm)."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings import Bus
from tidings.config import load_config
from tidings.errors import InvalidEvent
from tidings.formats.bugzilla import (
    BACKOFF_SCHEDULE,
    BugzillaFormat,
    bugzilla_event,
    change_set_id,
    push_routing_key,
    webhook_payload,
)
from tidings.schemas import SchemaRegistry
from tidings.transport import WireMessage

# seed 002, "Example for a comment creation event"
USER = {"real_name": "Jeff Fearn", "login": "jfearn@redhat.com", "id": 193645}
COMMENT = {
    "id": 1386104,
    "body": "testing a public comment",
    "creation_time": "2016-12-04T18:50:38",
    "number": 2,
    "is_private": False,
    "bug": {"id": 1386104, "is_private": False},
}
WHEN = datetime(2016, 12, 4, 19, 0, 38, tzinfo=UTC)


def test_public_comment_payload_matches_the_seed_example() -> None:
    event = bugzilla_event(
        "comment", "create", COMMENT, user=USER, bug_id=1386104, change_set="3624.1480914009.90748", when=WHEN
    )
    payload = orjson.loads(BugzillaFormat().encode(event).body)
    assert payload == {
        "event": {
            "routing_key": "comment.create",
            "target": "comment",
            "bug_id": 1386104,
            "change_set": "3624.1480914009.90748",
            "time": "2016-12-04T19:00:38",
            "action": "create",
            "user": USER,
        },
        "comment": COMMENT,
    }
    SchemaRegistry.default().validate("bugzilla.push.v1", payload)


def test_private_objects_send_the_event_only() -> None:
    event = bugzilla_event("comment", "create", COMMENT, user=USER, bug_id=1, private=True, when=WHEN)
    payload = orjson.loads(BugzillaFormat().encode(event).body)
    assert set(payload) == {"event"}
    assert BugzillaFormat().decode(BugzillaFormat().encode(event)).visibility == "private"


def test_routing_key_lists_changed_fields_sorted() -> None:
    # _object_modified: fields in sorted order, isprivate renamed; _push_object appends ':' + join(',')
    event = bugzilla_event(
        "bug",
        "modify",
        {"id": 5},
        user=USER,
        bug_id=5,
        changed={"status": ("NEW", "ASSIGNED"), "assigned_to": ("a", "b")},
    )
    assert event.topic == "bug.modify:assigned_to,status"
    assert push_routing_key("attachment", "create") == "attachment.create"
    renamed = bugzilla_event("comment", "update", {}, user=USER, bug_id=5, changed={"isprivate": (0, 1)})
    assert renamed.topic == "comment.update:is_private"


def test_change_set_and_time_formats() -> None:
    pid, seconds, fraction = change_set_id().split(".")
    assert pid == str(os.getpid()) and seconds.isdigit() and fraction.isdigit()
    event = bugzilla_event("bug", "create", {"id": 1}, user=USER, bug_id=1, when=WHEN)
    assert event.body["event"]["time"] == "2016-12-04T19:00:38"


def test_webhooks_reduce_a_private_bug() -> None:
    payload = {"event": {"target": "bug"}, "bug": {"id": 7, "is_private": True, "summary": "secret"}}
    assert webhook_payload(payload)["bug"] == {"id": 7, "is_private": True}
    public = {"event": {}, "bug": {"id": 8, "is_private": False, "summary": "open"}}
    assert webhook_payload(public) == public


def test_backoff_is_bugzillas() -> None:
    # lib/Backoff.pm inc: 5 ** attempts for attempts <= 4, else 15 * 60
    assert [5**n for n in range(1, 5)] + [15 * 60] == BACKOFF_SCHEDULE


@given(
    st.sampled_from(["bug", "comment", "attachment"]),
    st.sampled_from(["create", "modify", "update"]),
    st.dictionaries(
        st.from_regex(r"[a-z_]{1,8}", fullmatch=True),
        st.tuples(st.text(max_size=4), st.text(max_size=4)),
        max_size=3,
    ),
    st.booleans(),
)
def test_round_trip(target: str, action: str, changed: dict, private: bool) -> None:
    fmt = BugzillaFormat()
    event = bugzilla_event(
        target, action, {"id": 1}, user=USER, bug_id=1, changed=changed, private=private, when=WHEN
    )
    back = fmt.decode(fmt.encode(event))
    assert (back.id, back.topic, back.body, back.visibility, back.time) == (
        event.id,
        event.topic,
        event.body,
        event.visibility,
        event.time,
    )


@pytest.mark.parametrize(
    "body",
    [
        b"{}",
        b'{"event": []}',
        b'{"event": {"target": "user"}}',
        b"\xff",
        b'{"event": {"target": "bug", "routing_key": "bug.create"}, "user": {}}',
        b'{"event": {"target": "bug", "routing_key": "b.c", "time": "today"}}',
    ],
)
def test_garbage_gives_our_error(body: bytes) -> None:
    with pytest.raises(InvalidEvent):
        BugzillaFormat().decode(WireMessage("bug.create", body))


async def test_several_connectors_each_with_its_own_backlog(tmp_path: Path) -> None:
    """A file connector and an embedded-broker connector; one refusing never holds up the other."""
    (tmp_path / "tidings.toml").write_text(
        '[transports.local]\nkind = "embedded"\npath = "broker.db"\n'
        '[transports.log]\nkind = "file"\npath = "push.log"\nstyle = "raw"\n'
        '[connectors.amqp-like]\ntransport = "local"\nformat = "bugzilla"\n'
        "retry_schedule = [5, 25, 125, 625, 900]\n"
        '[connectors.file]\ntransport = "log"\nformat = "bugzilla"\nformat_options = {file_block = true}\n'
    )
    bus = Bus(load_config(tmp_path / "tidings.toml"))
    for n in range(3):
        bus.publish(bugzilla_event("bug", "create", {"id": n}, user=USER, bug_id=n))
    await bus.dispatcher().drain()
    log = (tmp_path / ".tidings" / "push.log").read_text()
    assert log.count('"target": "bug"') == 3  # the file connector delivered all three
    amqp_like, file = bus.outbox.status(["amqp-like", "file"])
    assert (file.backlog, file.dead, file.pending) == (0, 0, 0)
    assert amqp_like.backlog == 3  # no queue bound yet: waiting, in order, with Bugzilla's backoff
    (first, *_) = bus.outbox.entries("amqp-like", "backlog")
    assert 4 <= float(first["when"]) - datetime.now(UTC).timestamp() <= 6  # type: ignore[arg-type]
    bus.close()
