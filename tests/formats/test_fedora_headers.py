"""fedora-messaging headers tidings writes and keeps, checked against the real library.

Facts: fedora_messaging/message.py — ``Message._build_properties`` (the class's ``severity``, then
``_filter_headers`` last), ``Message._filter_headers`` (one ``fedora_messaging_<kind>_<name>``
header for each of ``usernames``, ``groups``, ``packages``, ``containers``, ``modules`` and
``flatpaks``), and ``get_message``, which keeps every header a message came with in
``Message._headers``, structured ones (RabbitMQ's ``x-received-from``) included.
"""

from __future__ import annotations

import importlib.util
import re

import pika
import pytest
from fedora_messaging import message as fm

from tests.formats.test_fedora import COMMENT_SCHEMA, OVERRIDE, SCHEMA, comment_body, to_pika
from tidings.errors import InvalidEvent
from tidings.event import Event
from tidings.formats.fedora import FedoraMessagingFormat, fedora_event, messaging
from tidings.transport import WireMessage

FILTER_PREFIXES = tuple(f"fedora_messaging_{kind}_" for kind in messaging.FILTERS)
READY_SCHEMA = "bodhi.update.status.testing.v2"  # its class says severity DEBUG


def filters(headers: dict) -> dict:
    return {k: v for k, v in headers.items() if k.startswith(FILTER_PREFIXES)}


def real_headers(schema: str, topic: str, body: dict) -> dict:
    """The headers fedora-messaging's own publisher puts on this message (but the time)."""
    real = fm.get_class(schema)(body=body, topic=topic)
    return {k: v for k, v in real._properties.headers.items() if k != "sent-at"}


def comment() -> dict:
    body = comment_body()
    body["comment"]["update"]["user"] = {"name": "bob"}  # the update's submitter: a username too
    return body


@pytest.mark.parametrize(
    ("schema", "topic", "body"),
    [
        (COMMENT_SCHEMA, "bodhi.update.comment", comment()),
        (SCHEMA, "bodhi.buildroot_override.tag", OVERRIDE),
        (READY_SCHEMA, "bodhi.update.status.testing.koji-build-group.build.complete", {}),
    ],
)
def test_filter_headers_and_severity_come_from_the_message_class(schema: str, topic: str, body: dict) -> None:
    # published as docs/systems/fedora.md shows it: a type and a body, no user=/rpm= lists
    made = [Event.create(topic, body, type=schema), fedora_event(topic, body, schema=schema)]
    real = real_headers(schema, topic, body)
    for event in made:
        ours = FedoraMessagingFormat().encode(event).headers
        assert filters(ours) == filters(real)
        assert {k: v for k, v in ours.items() if k != "sent-at"} == real


def test_the_comment_filters_name_its_users_and_package() -> None:
    headers = FedoraMessagingFormat().encode(
        Event.create("bodhi.update.comment", comment(), type=COMMENT_SCHEMA)
    )
    assert filters(headers.headers) == {
        "fedora_messaging_user_alice": True,
        "fedora_messaging_user_bob": True,
        "fedora_messaging_rpm_python-foo": True,
    }


def test_a_consumer_selecting_by_user_gets_our_message_as_the_real_one() -> None:
    # a headers-exchange binding {"fedora_messaging_user_bob": true}: what fedora-messaging's
    # get_message gives back still has the header
    wire = FedoraMessagingFormat().encode(
        fedora_event("bodhi.update.comment", comment(), schema=COMMENT_SCHEMA)
    )
    received = fm.get_message(wire.routing_key, to_pika(wire), wire.body)
    assert received._headers["fedora_messaging_user_bob"] is True
    assert sorted(received.usernames) == ["alice", "bob"]


def test_what_the_event_names_is_kept_beside_what_the_class_says() -> None:
    event = fedora_event(
        "bodhi.update.comment", comment(), schema=COMMENT_SCHEMA, severity=fm.WARNING, user=["carol"]
    )
    headers = FedoraMessagingFormat().encode(event).headers
    assert headers["fedora_messaging_severity"] == fm.WARNING
    assert {"fedora_messaging_user_carol", "fedora_messaging_user_alice"} <= headers.keys()


def test_without_the_class_the_event_headers_are_all(monkeypatch: pytest.MonkeyPatch) -> None:
    unknown = FedoraMessagingFormat().encode(fedora_event("x.y", comment(), schema="nobody.knows.v1"))
    assert filters(unknown.headers) == {}
    assert unknown.headers["fedora_messaging_severity"] == fm.INFO
    # fedora-messaging not installed: the bodhi class cannot be used, the format still works
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *args: None if name == "fedora_messaging" else real_find_spec(name, *args),
    )
    messaging.message_class.cache_clear()
    try:
        event = fedora_event("bodhi.update.comment", comment(), schema=COMMENT_SCHEMA, rpm=["kernel"])
        headers = FedoraMessagingFormat().encode(event).headers
    finally:
        monkeypatch.undo()
        messaging.message_class.cache_clear()
    assert filters(headers) == {"fedora_messaging_rpm_kernel": True}
    assert headers["fedora_messaging_severity"] == fm.INFO


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"override": {"submitter": {"name": "alice"}}}, {"fedora_messaging_user_alice": True}),
        ({"override": {"nvr": "python-foo-1.0-1.fc43"}}, {"fedora_messaging_rpm_python-foo": True}),
    ],
)
def test_a_class_that_cannot_read_the_body_adds_what_it_can(body: dict, expected: dict) -> None:
    # packages (or usernames) raise on this body: fedora-messaging logs it and adds the others
    ours = FedoraMessagingFormat().encode(Event.create("bodhi.buildroot_override.tag", body, type=SCHEMA))
    assert filters(ours.headers) == filters(real_headers(SCHEMA, "bodhi.buildroot_override.tag", body))
    assert filters(ours.headers) == expected


# -- headers whose values are not scalars ---------------------------------------------------

#: what a federation link or a shovel adds on its way (RabbitMQ's rabbit_federation, "x-received-from")
RECEIVED_FROM = [
    {
        "uri": "amqps://rabbitmq.fedoraproject.org/%2Fpublic_pubsub",
        "exchange": "amq.topic",
        "redelivered": False,
        "cluster-name": "rabbit@rabbitmq01.iad2.fedoraproject.org",
    }
]


def federated_wire() -> WireMessage:
    real = fm.get_class(SCHEMA)(body=OVERRIDE, topic="bodhi.buildroot_override.tag")
    headers = {**real._properties.headers, "x-received-from": RECEIVED_FROM, "x-tags": ["a", 1]}
    return WireMessage(
        real._encoded_routing_key,
        real._encoded_body,
        headers=headers,
        message_id=real.id,
        content_type="application/json",
        content_encoding="utf-8",
    )


def test_structured_headers_are_kept_as_fedora_messaging_keeps_them() -> None:
    wire = federated_wire()
    props = pika.BasicProperties(headers=wire.headers, message_id=wire.message_id, content_encoding="utf-8")
    kept_by_fedora_messaging = fm.get_message(wire.routing_key, props, wire.body)._headers
    event = FedoraMessagingFormat().decode(wire)
    assert "x-received-from" in event.headers and "x-tags" in event.headers
    again = FedoraMessagingFormat().encode(event)  # a relay publishing it on
    assert again.headers["x-received-from"] == kept_by_fedora_messaging["x-received-from"] == RECEIVED_FROM
    assert again.headers == wire.headers  # nothing lost, nothing added
    assert messaging.JSON_HEADERS not in again.headers


def test_kept_structured_headers_travel_as_json_text() -> None:
    event = FedoraMessagingFormat().decode(federated_wire())
    # event headers are scalars on every transport: the structure is JSON text, its name listed
    assert event.headers["x-tags"] == '["a",1]'
    assert event.headers[messaging.JSON_HEADERS] == '["x-received-from","x-tags"]'
    back = Event.from_dict(event.to_dict())
    assert FedoraMessagingFormat().encode(back).headers["x-tags"] == ["a", 1]


def test_a_listed_header_that_is_no_json_goes_out_as_its_text() -> None:
    event = Event.create("a.b", {}, headers={"x-odd": "[not json", messaging.JSON_HEADERS: '["x-odd", 5]'})
    assert FedoraMessagingFormat().encode(event).headers["x-odd"] == "[not json"
    garbage = Event.create("a.b", {}, headers={messaging.JSON_HEADERS: "{"})
    assert messaging.JSON_HEADERS not in FedoraMessagingFormat().encode(garbage).headers


def test_a_severity_and_priority_given_as_text_go_out_as_numbers_fedora_messaging_takes() -> None:
    """``tidings publish -H fedora_messaging_severity=30 -H priority=3`` made text headers: the real
    library's get_message refused the message ("'30' is not of type 'number'"), and its consumer
    drops such a message; the AMQP priority was not set at all."""
    headers = {"fedora_messaging_severity": "30", "priority": "3"}
    event = Event.create("bodhi.update.comment", comment(), type=COMMENT_SCHEMA, headers=headers)
    wire = FedoraMessagingFormat().encode(event)
    assert (wire.headers["fedora_messaging_severity"], wire.headers["priority"], wire.priority) == (30, 3, 3)
    received = fm.get_message(wire.routing_key, to_pika(wire), wire.body)
    assert (received.severity, received.priority) == (fm.WARNING, 3)


@pytest.mark.parametrize(
    ("headers", "said"),
    [
        ({"fedora_messaging_severity": 50}, "fedora_messaging_severity must be one of (10, 20, 30, 40)"),
        ({"fedora_messaging_severity": "loud"}, "fedora_messaging_severity must be one of"),
        ({"priority": 300}, "priority must be a whole number from 0 to 255, not 300"),
        ({"priority": "-1"}, "priority must be a whole number from 0 to 255"),
    ],
)
def test_a_severity_or_priority_fedora_messaging_refuses_is_refused_here(headers: dict, said: str) -> None:
    event = Event.create("bodhi.update.comment", comment(), type=COMMENT_SCHEMA, headers=headers)
    with pytest.raises(InvalidEvent, match=re.escape(said)):
        FedoraMessagingFormat().encode(event)
