"""Kafka records, topics, keys and URLs: pure logic, no broker (tidings.transports.kafka.records)."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.errors import InvalidEvent
from tidings.topics import topic_matches
from tidings.transport import WireMessage
from tidings.transports.kafka import KafkaSettings
from tidings.transports.kafka.records import (
    Servers,
    TopicTemplate,
    from_record,
    is_queue_topic,
    key_of,
    key_problem,
    to_record,
    topic_problem,
)

words = st.sampled_from(["a", "b", "bug", "x-1", "c_2"])
keys = st.lists(words, min_size=1, max_size=4).map(".".join)
patterns = st.lists(st.sampled_from(["a", "b", "bug", "*", "#"]), min_size=1, max_size=4).map(".".join)
templates = st.sampled_from(["{exchange}", "bugzilla.{0}", "{exchange}.{1}", "t.{0}.{1}", "fixed"])


@given(template=templates, pattern=patterns, key=keys)
def test_a_binding_reads_every_topic_its_messages_can_be_in(template: str, pattern: str, key: str) -> None:
    """Whatever topic a matching message goes to, the binding's subscription covers it."""
    if not topic_matches(pattern, key):
        return
    chosen = TopicTemplate(template)
    try:
        topic = chosen.topic("ex", key)
    except InvalidEvent:
        return  # the key has too few words for this template: refused at send
    where = chosen.subscription("ex", pattern)
    assert topic == where if not where.startswith("^") else re.match(where, topic), (topic, where)


def test_topics_from_templates() -> None:
    assert TopicTemplate("{exchange}").topic("tidings", "a.b.c") == "tidings"
    assert TopicTemplate("bugzilla.{0}").topic("x", "bug.modify") == "bugzilla.bug"
    assert TopicTemplate("bugzilla.{0}").subscription("x", "comment.*") == "bugzilla.comment"
    assert TopicTemplate("bugzilla.{0}").subscription("x", "#") == "^bugzilla\\.[a-zA-Z0-9_-]+$"
    with pytest.raises(InvalidEvent, match="no word 1"):
        TopicTemplate("t.{1}").topic("x", "single")
    with pytest.raises(InvalidEvent, match="not a Kafka topic name"):
        TopicTemplate("{exchange}").topic("exchange/taskcluster-queue/v1/task-defined", "k")


@pytest.mark.parametrize(
    ("template", "problem"),
    [("a/b", "not a Kafka topic name"), ("{foo}", "only {exchange}"), ("x" * 250, "not a Kafka topic name")],
)
def test_a_template_that_can_never_work_is_a_config_error(template: str, problem: str) -> None:
    assert problem in TopicTemplate(template).problem()
    with pytest.raises(ValueError, match=re.escape(problem)):
        KafkaSettings(topic=template)


def test_a_routing_key_cannot_make_a_topic_kept_for_a_queues_retries_or_dead_letters() -> None:
    """With ``bugzilla.{0}``, the key ``dead.x`` would write into the queue ``bugzilla``'s dead
    letters; and a pattern reading ``bugzilla.*`` must not take those for events."""
    for template, key in (("bugzilla.{0}", "dead.x"), ("{0}.{1}", "svc.dead"), ("t.{0}.{1}", "retry.5s")):
        with pytest.raises(InvalidEvent, match="kept for queues"):
            TopicTemplate(template).topic("x", key)
    assert TopicTemplate("bugzilla.{0}").topic("x", "deadline.x") == "bugzilla.deadline"
    assert [is_queue_topic(t) for t in ("q.dead", "q.dead.handled", "q.retry.25s", "q.retry.x", "dead")] == [
        True,
        True,
        True,
        False,
        False,
    ]


def test_topic_names_follow_kafka() -> None:
    assert topic_problem("a.b-c_D9") == ""
    for bad in (".", "..", "", "a b", "ü", "x" * 250):
        assert topic_problem(bad)


header_values = st.none() | st.booleans() | st.integers(-(2**80), 2**80) | st.text(max_size=10)


@given(
    headers=st.dictionaries(st.from_regex(r"[a-z][a-z_-]{0,8}", fullmatch=True), header_values, max_size=5),
    body=st.binary(max_size=50),
    cc=st.lists(keys, max_size=3),
    stamp=st.none() | st.datetimes(min_value=datetime(2001, 1, 1), timezones=st.just(UTC)),
)
def test_a_message_survives_a_record(
    headers: dict[str, object], body: bytes, cc: list[str], stamp: datetime | None
) -> None:
    sent = WireMessage(
        routing_key="a.b",
        body=body,
        headers=headers,
        message_id="m-1",
        timestamp=stamp,
        cc=cc,
        content_type="application/json",
        exchange="ex",
        properties={"app_id": "t"},
    )
    record = to_record(sent, "topic", b"k")
    back, _ = from_record(record.headers, record.value, record.timestamp)
    assert back.headers == headers
    assert (back.routing_key, back.body, back.message_id, back.cc) == ("a.b", body, "m-1", cc)
    assert (back.content_type, back.exchange, back.properties) == ("application/json", "ex", {"app_id": "t"})
    if stamp is not None:
        assert back.timestamp is not None and abs((back.timestamp - stamp).total_seconds()) < 0.001


def test_keys() -> None:
    message = WireMessage(
        routing_key="bug.modify", body=b'{"event": {"bug_id": 42}}', headers={"h": "v"}, message_id="id-1"
    )
    assert key_of(message, "subject") == b"bug.modify"
    assert key_of(message, "id") == b"id-1"
    assert key_of(message, "none") is None
    assert key_of(message, "header:h") == b"v"
    assert key_of(message, "body:event.bug_id") == b"42"
    assert key_of(message, "body:event.missing") is None
    assert key_problem("body:") and key_problem("bug_id") and not key_problem("header:x")


def test_urls() -> None:
    plain = Servers.parse("kafka://h1:9092,h2:9093")
    assert (plain.hosts, plain.username, plain.tls) == (("h1:9092", "h2:9093"), None, False)
    assert plain.client_config("PLAIN") == {"bootstrap.servers": "h1:9092,h2:9093"}
    sasl = Servers.parse("kafkas://app:s%40cret@h:9094")
    assert sasl.client_config("SCRAM-SHA-512") == {
        "bootstrap.servers": "h:9094",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "app",
        "sasl.password": "s@cret",
    }
    assert Servers.parse("kafka://h:9092/").hosts == ("h:9092",)
    assert Servers.parse("kafka://[::1]:9092,h-2.example:9093").hosts == ("[::1]:9092", "h-2.example:9093")
    for bad in (
        "amqp://h:1",
        "kafka://",
        "kafka://nohostport",
        "kafka://user:secret@",
        "kafka://user:secret@h:0",
        "kafka://user:secret@h:9092,h2:99999",
        "kafka://user:secret@h:9092/?security.protocol=SSL",
        "kafka://user:secret@h:9092/topic",
        "kafka://user:secret@[::1",
        "kafka://user:secret@[::1:9092",
    ):
        with pytest.raises(ValueError) as refused:
            Servers.parse(bad)
        assert "secret" not in str(refused.value)
