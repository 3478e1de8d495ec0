"""Search fields per format, and which format reads an outbox event's."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from tidings.archive import SearchFields
from tidings.archive.fields import FieldsFinder
from tidings.event import Event
from tidings.format import load_format, search_fields
from tidings.formats.bugzilla import bugzilla_event
from tidings.formats.fedora import messaging
from tidings.formats.fedora.messaging import fedora_event
from tidings.formats.lava import lava_event
from tidings.formats.taskcluster import task_event

USER = {"id": 1, "login": "dave@example.com", "real_name": "Dave"}
BUG = {
    "id": 7,
    "product": "Fedora",
    "component": {"name": "kernel"},
    "assigned_to": {"login": "erin@example.com"},
    "reporter": "frank@example.com",
}


def test_fedora_from_the_filter_headers_without_fedora_messaging() -> None:
    event = fedora_event("bodhi.update.comment", {"agent": "alice"}, user=["alice", "bob"], rpm=["kernel"])
    assert search_fields(load_format("fedora-messaging"), event) == SearchFields(
        ("alice", "bob"), ("kernel",), (), "alice"
    )


def test_fedora_asks_the_installed_message_class(monkeypatch: pytest.MonkeyPatch) -> None:
    class BodhiComment:  # the properties fedora-messaging's Message subclasses have
        def __init__(self, body: dict[str, Any], topic: str, headers: dict[str, Any]) -> None:
            self.body = body

        usernames = property(lambda self: ["zed", "amy"])
        packages = property(lambda self: ["bash"])
        containers = property(lambda self: ["registry/img"])
        agent_name = property(lambda self: "amy")

    monkeypatch.setattr(messaging, "message_class", lambda schema: BodhiComment)
    event = fedora_event("bodhi.update.comment", {}, schema="bodhi.update.comment.v1")
    assert messaging.fedora_search_fields(event) == SearchFields(
        ("amy", "zed"), ("bash",), ("registry/img",), "amy"
    )


def test_bugzilla_product_and_component_as_packages() -> None:
    event = bugzilla_event("bug", "modify", BUG, user=USER, bug_id=7, changed={"status": ("NEW", "ASSIGNED")})
    assert search_fields(load_format("bugzilla"), event) == SearchFields(
        ("dave@example.com", "erin@example.com", "frank@example.com"),
        ("Fedora", "kernel"),
        (),
        "dave@example.com",
    )
    private = bugzilla_event("bug", "modify", BUG, user=USER, bug_id=7, private=True)
    assert search_fields(load_format("bugzilla"), private) == SearchFields(
        ("dave@example.com",), (), (), "dave@example.com"
    )


def test_taskcluster_task_group_as_container() -> None:
    fields = {
        "taskId": "fN1-8EVNQ9SJ52mSU0MsnQ",
        "runId": 0,
        "workerGroup": "g",
        "workerId": "w1",
        "provisionerId": "p",
        "workerType": "t",
        "schedulerId": "s",
        "taskGroupId": "Xs9f-N3kQ2yJ1fG4x5aQ7w",
    }
    status = {"status": {"taskId": fields["taskId"], "taskGroupId": fields["taskGroupId"]}, "workerId": "w1"}
    event = task_event("task-completed", status, **fields)
    assert search_fields(load_format("taskcluster"), event) == SearchFields(
        (), (), ("Xs9f-N3kQ2yJ1fG4x5aQ7w",), "w1"
    )


def test_lava_device_type_as_package() -> None:
    event = lava_event("testjob", {"job": 12, "device_type": "qemu", "submitter": "kci", "device": "qemu-01"})
    assert search_fields(load_format("lava"), event) == SearchFields(("kci",), ("qemu",), (), "qemu-01")


def test_a_format_without_search_fields_gives_none() -> None:
    assert search_fields(load_format("tidings"), Event.create("a.b", {"user": "x"})) == SearchFields()


def test_an_outbox_event_is_read_by_the_format_its_type_or_headers_or_the_config_name() -> None:
    finder = FieldsFinder({"ci.lava.#": "lava"})
    bug = bugzilla_event("bug", "create", BUG, user=USER, bug_id=7)
    assert finder.format_name(bug) == "bugzilla"
    assert finder.format_name(fedora_event("copr.build.end", {}, user=["a"])) == "fedora-messaging"
    assert finder.format_name(Event.create("ci.lava.testjob", {"device_type": "x"})) == "lava"
    assert finder.format_name(Event.create("datawarehouse.checkout.new", {})) is None
    assert finder(Event.create("ci.lava.testjob", {"device_type": "x"})).fields.packages == ("x",)
    assert finder(bug).fields.packages == ("Fedora", "kernel")


def test_a_body_deeper_than_any_bus_allows_is_refused_with_its_depth() -> None:
    """A publisher elsewhere may nest deeper than the API could write back: a dead letter with
    the reason, not an event that breaks every page it is on."""
    from tidings.archive.storing import read_message
    from tidings.errors import DecodeError
    from tidings.event import DEEPEST
    from tidings.formats.native import NativeFormat

    fmt = NativeFormat()

    def message(depth: int) -> Any:
        sent = fmt.encode(Event.create("a.b", {"a": 1}))
        return dataclasses.replace(sent, body=b'{"a":' * depth + b"1" + b"}" * depth)

    assert read_message(fmt, FieldsFinder(), message(DEEPEST)).event.body["a"]
    refusal = f"nests {DEEPEST + 1} levels deep; the archive keeps at most {DEEPEST}"
    with pytest.raises(DecodeError, match=refusal):
        read_message(fmt, FieldsFinder(), message(DEEPEST + 1))
