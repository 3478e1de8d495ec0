"""fedora-messaging's wire format, checked with the real fedora-messaging and bodhi-messages packages.

Rules come from fedora-messaging's wire-format spec (docs/api/wire-format.rst) and its code
(fedora_messaging/message.py: Message._build_properties, Message._filter_headers, get_message,
dumps/loads, _get_distribution_from_module).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import orjson
import pika
import pytest
from fedora_messaging import message as fm
from hypothesis import given
from hypothesis import strategies as st

from tidings.errors import InvalidEvent
from tidings.formats.fedora import (
    BASE_SCHEMA,
    FedoraMessagingFormat,
    dump_lines,
    fedora_event,
    filter_headers,
    load_lines,
)
from tidings.testing import assert_published
from tidings.transport import WireMessage

OVERRIDE = {"override": {"nvr": "python-foo-1.0-1.fc43", "submitter": {"name": "alice"}}}
SCHEMA = "bodhi.buildroot_override.tag.v1"


def to_pika(message: WireMessage) -> pika.BasicProperties:
    return pika.BasicProperties(
        content_type=message.content_type,
        content_encoding=message.content_encoding,
        delivery_mode=message.properties.get("delivery_mode"),
        headers=message.headers,
        message_id=message.message_id,
        priority=message.priority,
    )


def test_headers_match_what_real_fedora_messaging_builds() -> None:
    ours = FedoraMessagingFormat().encode(
        fedora_event(
            "bodhi.buildroot_override.tag", OVERRIDE, schema=SCHEMA, user=["alice"], rpm=["python-foo"]
        )
    )
    real = fm.get_class(SCHEMA)(body=OVERRIDE)._properties
    assert {k: v for k, v in ours.headers.items() if k != "sent-at"} == {
        k: v for k, v in real.headers.items() if k != "sent-at"
    }
    assert (ours.content_type, ours.content_encoding) == (real.content_type, real.content_encoding)
    assert ours.properties["delivery_mode"] == real.delivery_mode == 2


def test_sent_at_is_utc_whole_seconds() -> None:
    moment = datetime(2026, 11, 22, 9, 7, 41, 987654, tzinfo=UTC)
    event = fedora_event("t.x", {}, severity=30)
    event.time = moment
    headers = FedoraMessagingFormat().encode(event).headers
    assert headers["sent-at"] == "2026-11-22T09:07:41+00:00"
    assert headers["fedora_messaging_severity"] == 30
    assert headers["fedora_messaging_schema"] == BASE_SCHEMA


def test_topic_prefix_goes_on_the_routing_key_only() -> None:
    fmt = FedoraMessagingFormat(topic_prefix="org.fedoraproject.prod")
    message = fmt.encode(fedora_event("bodhi.update.comment", {}))
    assert message.routing_key == "org.fedoraproject.prod.bodhi.update.comment"
    assert fmt.decode(message).topic == "bodhi.update.comment"


def test_real_get_message_resolves_the_bodhi_class_from_our_message() -> None:
    # the path fedora-messaging's consumer takes for every delivery (Consumer._on_message -> get_message)
    ours = FedoraMessagingFormat().encode(
        fedora_event("bodhi.buildroot_override.tag", OVERRIDE, schema=SCHEMA, user=["alice"])
    )
    received = fm.get_message(ours.routing_key, to_pika(ours), ours.body)
    assert type(received).__name__ == "BuildrootOverrideTagV1"
    assert received.id == ours.message_id
    assert received.body == OVERRIDE
    assert received.usernames == ["alice"]
    assert received.packages == ["python-foo"]


def test_a_message_made_by_real_fedora_messaging_decodes_intact() -> None:
    real = fm.get_class(SCHEMA)(body=OVERRIDE, topic="bodhi.buildroot_override.tag", severity=fm.WARNING)
    props = real._properties
    wire = WireMessage(
        real._encoded_routing_key,
        real._encoded_body,
        headers=dict(props.headers),
        message_id=props.message_id,
        content_type=props.content_type,
        content_encoding=props.content_encoding,
    )
    event = FedoraMessagingFormat().decode(wire)
    assert event.id == real.id
    assert event.topic == real.topic
    assert event.body == real.body
    assert event.type == SCHEMA
    assert event.headers["fedora_messaging_severity"] == fm.WARNING
    assert event.headers["fedora_messaging_user_alice"] is True
    assert event.time == datetime.fromisoformat(props.headers["sent-at"])
    back = FedoraMessagingFormat().encode(event)  # and it goes out again the same
    assert back.headers == props.headers


def test_dump_lines_are_read_by_real_fedora_messaging_and_back() -> None:
    events = [
        fedora_event("bodhi.buildroot_override.tag", OVERRIDE, schema=SCHEMA, user=["alice"]),
        fedora_event("base.thing", {"n": 1}),
    ]
    text = dump_lines(events)
    real = fm.loads(text)
    assert [m.id for m in real] == [e.id for e in events]
    assert [type(m).__name__ for m in real] == ["BuildrootOverrideTagV1", "Message"]
    again = load_lines(fm.dumps(real))
    assert [(e.id, e.topic, e.body, e.type) for e in again] == [
        (e.id, e.topic, e.body, e.type) for e in events
    ]


def test_filter_headers_refuse_unknown_kinds() -> None:
    assert filter_headers(group=["qa"], flatpak=["firefox"]) == {
        "fedora_messaging_group_qa": True,
        "fedora_messaging_flatpak_firefox": True,
    }
    with pytest.raises(InvalidEvent, match="not 'bug'"):
        filter_headers(bug=["1"])


@given(
    st.dictionaries(st.text(max_size=6), st.integers(-(2**63), 2**63 - 1) | st.text(max_size=6), max_size=4),
    st.sampled_from([10, 20, 30, 40]),
)
def test_round_trip(body: dict, severity: int) -> None:
    fmt = FedoraMessagingFormat(topic_prefix="org.fedoraproject.stg")
    event = fedora_event("app.thing.v2", body, severity=severity)
    back = fmt.decode(fmt.encode(event))
    assert (back.id, back.topic, back.body, back.type) == (event.id, event.topic, event.body, event.type)
    assert back.headers["fedora_messaging_severity"] == severity


@pytest.mark.parametrize(
    ("body", "headers", "encoding"),
    [
        (b"\xff\xfe", {}, "utf-8"),
        (b"[1]", {}, "utf-8"),
        (b"{", {}, "utf-8"),
        (b"{}", {}, "no-such-codec"),
        (b"{}", {"fedora_messaging_schema": 5}, "utf-8"),
        (b"{}", {"sent-at": "yesterday"}, "utf-8"),
        (b'{"a":' * 2000 + b"1" + b"}" * 2000, {}, "utf-8"),
    ],
)
def test_garbage_gives_our_error(body: bytes, headers: dict, encoding: str) -> None:
    with pytest.raises(InvalidEvent):
        FedoraMessagingFormat().decode(WireMessage("a.b", body, headers=headers, content_encoding=encoding))


def test_integers_wider_than_64_bits_go_out_and_come_back_exactly() -> None:
    fmt = FedoraMessagingFormat()
    wire = fmt.encode(fedora_event("a.b", {"n": 2**70, "m": -(10**40)}))
    assert b'"n":1180591620717411303424' in wire.body
    assert fmt.decode(wire).body == {"n": 2**70, "m": -(10**40)}


def test_dump_garbage_gives_our_error() -> None:
    for text in ("{}\n", "[]\n", '{"topic": 1, "headers": {}, "id": "x", "body": {}}\n', "nope\n"):
        with pytest.raises(InvalidEvent):
            load_lines(text)


@pytest.mark.rabbitmq
async def test_through_rabbitmq_both_ways(rabbitmq: str) -> None:
    """tidings → RabbitMQ → fedora-messaging decoding; fedora-messaging message → RabbitMQ → tidings."""
    from tests.conftest import delete_amqp_topology
    from tidings.transport import Binding, ExchangeSpec, QueueSpec, Topology
    from tidings.transports.amqp import AmqpTransport

    exchange, queue = f"fedora.{uuid.uuid4().hex[:6]}", f"fedora.q.{uuid.uuid4().hex[:6]}"
    transport = AmqpTransport(url=rabbitmq)
    await transport.connect()
    fmt = FedoraMessagingFormat(topic_prefix="org.fedoraproject.test")
    spec = QueueSpec(queue, [Binding(exchange, "org.fedoraproject.test.bodhi.#")])
    try:
        await transport.declare(Topology([ExchangeSpec(exchange)], [spec]))
        ours = fedora_event("bodhi.buildroot_override.tag", OVERRIDE, schema=SCHEMA, user=["alice"])
        real = fm.get_class(SCHEMA)(body=OVERRIDE, topic="bodhi.buildroot_override.tag")
        real_wire = WireMessage(
            "org.fedoraproject.test." + real.topic,
            real._encoded_body,
            headers=dict(real._properties.headers),
            message_id=real.id,
            content_type="application/json",
            content_encoding="utf-8",
        )
        results = await transport.send(exchange, [fmt.encode(ours), real_wire])
        assert [r.outcome.value for r in results] == ["delivered", "delivered"]
        stream = transport.consume(spec, prefetch=10)
        first, second = await anext(stream), await anext(stream)  # type: ignore[arg-type]
        for delivery in (first, second):
            await delivery.ack()
        await stream.aclose()  # type: ignore[attr-defined]
        got = fm.get_message(first.message.routing_key, to_pika(first.message), first.message.body)
        assert type(got).__name__ == "BuildrootOverrideTagV1"
        assert got.id == ours.id
        decoded = fmt.decode(second.message)
        assert (decoded.id, decoded.topic, decoded.body, decoded.type) == (
            real.id,
            real.topic,
            real.body,
            SCHEMA,
        )
        assert orjson.loads(first.message.body) == OVERRIDE
    finally:
        await transport.close()
        await delete_amqp_topology(rabbitmq, [queue], [exchange])


# -- the schemas of installed message packages ----------------------------------------------

COMMENT_SCHEMA = "bodhi.update.comment.v1"


def comment_body(**comment: object) -> dict:
    user = {"name": "alice"}
    update = {
        "alias": "FEDORA-2026-0123456789",
        "builds": [{"nvr": "python-foo-1.0-1.fc43"}],
        "release": {"name": "F43"},
        "request": None,
        "status": "testing",
        "user": user,
    }
    return {
        "comment": {
            "karma": 1,
            "text": "works for me",
            "timestamp": "2026-11-30 12:00:00",
            "update": update,
            "user": user,
            **comment,
        }
    }


def fedora_docs_bus(tmp_path) -> object:  # type: ignore[no-untyped-def]
    """A bus configured as docs/systems/fedora.md says (publishing needs no broker)."""
    from tidings import Bus

    (tmp_path / "tidings.toml").write_text(
        '[transports.fedora]\nkind = "amqp"\nurl = "amqp://guest:guest@127.0.0.1:5672/"\n'
        '[connectors.fedora]\ntransport = "fedora"\nformat = "fedora-messaging"\nexchange = "amq.topic"\n'
        'passive_exchange = true\nformat_options = {topic_prefix = "org.fedoraproject.prod"}\n'
    )
    return Bus.load(tmp_path / "tidings.toml")


def test_a_bodhi_schema_is_usable_without_copying_it(tmp_path) -> None:  # type: ignore[no-untyped-def]
    bus = fedora_docs_bus(tmp_path)
    assert COMMENT_SCHEMA in bus.schemas
    assert bus.schemas.origin(COMMENT_SCHEMA) == "fedora.messages: bodhi_messages"
    bus.publish(fedora_event("bodhi.update.comment", comment_body(), schema=COMMENT_SCHEMA))
    body = comment_body()
    del body["comment"]["karma"]
    without_karma = fedora_event("bodhi.update.comment", body, schema=COMMENT_SCHEMA)
    with pytest.raises(InvalidEvent, match=r"bodhi\.update\.comment\.v1: comment: \"karma\" is a required"):
        bus.publish(without_karma)
    assert_published(bus, "bodhi.update.comment", type=COMMENT_SCHEMA, count=1)  # the valid one only
    bus.close()


def test_an_untyped_fedora_event_is_a_base_message(tmp_path) -> None:  # type: ignore[no-untyped-def]
    bus = fedora_docs_bus(tmp_path)
    event = bus.publish(fedora_event("koji.build.tag", {"anything": [1, 2]}))
    assert event.type == BASE_SCHEMA
    bus.close()


def test_base_message_is_known_without_fedora_messaging() -> None:
    from tidings.schemas import SchemaRegistry

    registry = SchemaRegistry()
    registry.add_directory(__import__("tidings.schemas", fromlist=["PACKS"]).PACKS, origin="built-in")
    registry.validate(BASE_SCHEMA, {"x": 1})


def _fedora_messaging_accepts(schema: str, body: dict) -> bool:
    import jsonschema

    try:
        fm.get_class(schema)(body=body, topic="bodhi.update.x").validate()
    except jsonschema.ValidationError:
        return False
    return True


BODIES = {
    "valid": comment_body(),
    "karma missing": {"comment": {k: v for k, v in comment_body()["comment"].items() if k != "karma"}},
    "karma a string": comment_body(karma="+1"),
    "build without nvr": comment_body(update={**comment_body()["comment"]["update"], "builds": [{}]}),
    "request not in the enum": comment_body(update={**comment_body()["comment"]["update"], "request": "x"}),
    "timestamp not a date (no format in this schema)": comment_body(timestamp="yesterday"),
    "extra fields": comment_body(extra={"deep": [1]}),
    "no comment at all": {},
}


@pytest.mark.parametrize("case", list(BODIES))
def test_validation_agrees_with_real_fedora_messaging(tmp_path, case: str) -> None:  # type: ignore[no-untyped-def]
    bus = fedora_docs_bus(tmp_path)
    body = BODIES[case]
    try:
        bus.schemas.validate(COMMENT_SCHEMA, body)
        ours = True
    except InvalidEvent:
        ours = False
    assert ours == _fedora_messaging_accepts(COMMENT_SCHEMA, body)
    bus.close()


def test_formats_are_not_asserted_for_fedora_schemas_as_fedora_messaging_does(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # bodhi.update.status.testing.v1 declares artifact.repository as format "uri"; jsonschema.validate
    # (what Message.validate calls) has no format checker, so "not a uri" passes there and here
    schema = "bodhi.update.status.testing.v1"
    bus = fedora_docs_bus(tmp_path)
    cls = fm.get_class(schema)
    assert "uri" in str(cls.body_schema)
    assert bus.schemas.asserts_formats(schema) is False
    assert bus.schemas.asserts_formats("tidings.demo.v1") is True
    bus.close()


def test_publish_type_from_the_command_line(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tests.clirun import tidings

    fedora_docs_bus(tmp_path).close()  # writes the config
    (tmp_path / "comment.json").write_bytes(orjson.dumps(comment_body()))
    done = tidings(
        tmp_path, "publish", "bodhi.update.comment", "--type", COMMENT_SCHEMA, "--body", "@comment.json"
    )
    assert done.returncode == 0, done.stderr
    bad = tidings(tmp_path, "publish", "bodhi.update.comment", "--type", COMMENT_SCHEMA, "--body", "{}")
    assert bad.returncode == 4
    assert (
        "'comment' is a required property" in bad.stderr or '"comment" is a required property' in bad.stderr
    )


# -- where a decoded message comes from ------------------------------------------------------


def test_source_is_the_app_name_of_the_message_class() -> None:
    real = fm.get_class(COMMENT_SCHEMA)(
        body=comment_body(), topic="org.fedoraproject.prod.bodhi.update.comment"
    )
    wire = WireMessage(
        real.topic,
        real._encoded_body,
        headers=dict(real._properties.headers),
        message_id=real.id,
        content_encoding="utf-8",
    )
    assert real.app_name == "bodhi"
    assert FedoraMessagingFormat().decode(wire).source == "bodhi"  # no prefix configured
    prefixed = FedoraMessagingFormat(topic_prefix="org.fedoraproject.prod").decode(wire)
    assert (prefixed.source, prefixed.topic) == ("bodhi", "bodhi.update.comment")


@pytest.mark.parametrize(
    ("routing_key", "prefix", "source"),
    [
        ("org.fedoraproject.prod.koji.build.tag", "", "koji"),
        ("org.fedoraproject.stg.pagure.pull-request.new", "org.fedoraproject.stg", "pagure"),
        ("org.centos.prod.ci.pipeline.complete", "", "ci"),
        ("anitya.project.version.update", "", "anitya"),
    ],
)
def test_base_message_source_is_the_topic_app_word(routing_key: str, prefix: str, source: str) -> None:
    wire = WireMessage(routing_key, b"{}", headers={"fedora_messaging_schema": BASE_SCHEMA})
    assert FedoraMessagingFormat(topic_prefix=prefix).decode(wire).source == source


async def test_a_consumer_takes_format_options(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import asyncio

    from tidings import App, Bus

    (tmp_path / "tidings.toml").write_text(
        '[connectors.local]\ntransport = "local"\nformat = "fedora-messaging"\nexchange = "amq.topic"\n'
        'format_options = {topic_prefix = "org.fedoraproject.prod"}\n'
        '[transports.local]\nkind = "embedded"\npath = "broker.db"\n'
        '[consumers.watcher]\ntransport = "local"\nformat = "fedora-messaging"\nexchange = "amq.topic"\n'
        'bindings = ["bodhi.#"]\n'
        'format_options = {topic_prefix = "org.fedoraproject.prod"}\n'
    )
    bus = Bus.load(tmp_path / "tidings.toml")
    assert bus.config.consumers["watcher"].format_options == {"topic_prefix": "org.fedoraproject.prod"}
    got: list = []
    app = App(
        "watcher",
        exchange="amq.topic",
        format="fedora-messaging",
        format_options={"topic_prefix": "org.fedoraproject.prod"},
    )
    app.subscribe("bodhi.#")(got.append)  # the topic as published; the format adds the prefix on the wire
    assert [b.pattern for b in app.queue_spec().bindings] == ["org.fedoraproject.prod.bodhi.#"]
    await app.declare(bus)
    bus.publish(fedora_event("bodhi.update.comment", comment_body(), schema=COMMENT_SCHEMA))
    await bus.dispatcher().drain()
    stop = asyncio.Event()
    running = asyncio.create_task(app.run(bus, stop))
    from tests.waiting import until

    await until(lambda: got, timeout=10)
    stop.set()
    await running
    assert (got[0].topic, got[0].source) == ("bodhi.update.comment", "bodhi")
    bus.close()
