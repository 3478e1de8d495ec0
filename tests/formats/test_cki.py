"""CKI DataWarehouse messages (seed 000), checked against kcidb-io itself and the real RabbitMQ.

Vectors: the routing keys, statuses and body shape are those of the DataWarehouse messaging page
(../shared/seeds/000: "Routing keys", the status list, "The body of the message"); object shapes
follow KCIDB schema v5.3 as shipped by kcidb-io (kcidb_io/schema/v05_03.py).
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from kcidb_io.schema import V5_3

from tidings.errors import DecodeError, InvalidEvent, SchemaError
from tidings.formats.cki import (
    EXCHANGE,
    STATUSES,
    TYPE,
    CKIFormat,
    binding,
    cki_event,
    needs_triage,
    queue_name,
)
from tidings.schemas import SchemaRegistry
from tidings.testing import published
from tidings.transport import WireMessage

CHECKOUT = {
    "id": "redhat:1234567",
    "origin": "redhat",
    "tree_name": "mainline",
    "valid": True,
    "git_commit_hash": "a" * 40,
}
BUILD = {
    "id": "redhat:b-1",
    "checkout_id": "redhat:1234567",
    "origin": "redhat",
    "architecture": "x86_64",
    "status": "PASS",
}
TEST = {
    "id": "redhat:t-1",
    "build_id": "redhat:b-1",
    "origin": "redhat",
    "path": "ltp.syscalls",
    "status": "FAIL",
}
REGISTRY = SchemaRegistry.default()


def kcidb_accepts(object_type: str, obj: dict) -> bool:
    return V5_3.is_valid_exactly({"version": {"major": 5, "minor": 3}, f"{object_type}s": [obj]})


def ours_accepts(object_type: str, obj: dict) -> bool:
    try:
        REGISTRY.validate(TYPE, cki_event(object_type, "new", obj).body)
    except SchemaError:
        return False
    return True


@pytest.mark.parametrize("status", STATUSES)
def test_routing_key_for_every_status(status: str) -> None:
    # seed 000: "Messages are sent with a routing key of datawarehouse.{object_type}.{status}"
    event = cki_event("checkout", status, CHECKOUT)
    assert event.topic == f"datawarehouse.checkout.{status}"
    message = CKIFormat().encode(event)
    assert message.routing_key == event.topic
    assert orjson.loads(message.body) == event.body


def test_body_is_exactly_the_datawarehouse_payload() -> None:
    # seed 000: message = {'timestamp': ISO, 'status': ..., 'object_type': ..., 'object': {...}}
    moment = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)
    message = CKIFormat().encode(cki_event("build", "updated", BUILD, timestamp=moment))
    assert orjson.loads(message.body) == {
        "timestamp": "2026-11-22T09:00:00+00:00",
        "status": "updated",
        "object_type": "build",
        "object": BUILD,
    }
    assert message.headers == {}
    assert message.properties["delivery_mode"] == 2


@pytest.mark.parametrize(
    "status", ["build_setups_finished", "tests_finished", "checkout_issueoccurrences_changed"]
)
def test_checkout_only_statuses(status: str) -> None:
    # seed 000: "Note: This event always relates to a checkout."
    with pytest.raises(InvalidEvent, match="always about a checkout"):
        cki_event("build", status, BUILD)


def test_names() -> None:
    assert EXCHANGE == "cki.exchange.datawarehouse"
    assert queue_name("triager") == "cki.queue.webhooks.triager"
    assert binding("checkout") == "datawarehouse.checkout.*"


@pytest.mark.parametrize(("object_type", "obj"), [("checkout", CHECKOUT), ("build", BUILD), ("test", TEST)])
def test_valid_objects_agree_with_kcidb_io(object_type: str, obj: dict) -> None:
    assert kcidb_accepts(object_type, obj)
    assert ours_accepts(object_type, obj)


@pytest.mark.parametrize(
    ("object_type", "obj"),
    [
        ("checkout", {**CHECKOUT, "valid": "yes"}),
        ("checkout", {**CHECKOUT, "id": "no-origin-prefix"}),
        ("build", {**BUILD, "valid": True}),  # v5 builds have a status, not 'valid'
        ("test", {**TEST, "status": "PASSED"}),
        ("test", {k: v for k, v in TEST.items() if k != "build_id"}),
        ("checkout", {**CHECKOUT, "comment": "nul\x00byte"}),
    ],
)
def test_invalid_objects_agree_with_kcidb_io(object_type: str, obj: dict) -> None:
    assert not kcidb_accepts(object_type, obj)
    assert not ours_accepts(object_type, obj)


# Objects KCIDB refuses only for a `format` (date-time, uri, email), as kcidb-io checks them with
# jsonschema's Draft 7 format checker; each was confirmed against kcidb-io with and without it.
BY_FORMAT_INVALID = [
    ("checkout", {**CHECKOUT, "start_time": "yesterday"}),
    ("checkout", {**CHECKOUT, "start_time": "2024-04-14T10:11:12"}),  # no time zone
    ("checkout", {**CHECKOUT, "git_repository_url": "https://git.kernel.org/pub/scm/linux.git master"}),
    ("checkout", {**CHECKOUT, "message_id": "20240414.12345-1-user.example.org"}),  # no '@'
    ("build", {**BUILD, "output_files": [{"name": "kernel.tar.gz", "url": "artifacts/1234/kernel.tar.gz"}]}),
    ("build", {**BUILD, "config_url": "https://artifacts.example.org/1234/конфиг"}),  # an IRI, not a URI
    ("build", {**BUILD, "start_time": "0000-01-01T00:00:00Z"}),  # year 0 (jsonschema-rs alone allows it)
    ("test", {**TEST, "log_url": "not a url"}),
    ("test", {**TEST, "start_time": "2016-12-31T23:59:60Z"}),  # leap second (jsonschema-rs alone allows it)
]
# ... and objects whose values look wrong but KCIDB accepts (kcidb-io's checker is what decides)
BY_FORMAT_VALID = [
    (
        "checkout",
        {
            **CHECKOUT,
            "start_time": "2024-04-14t10:11:12.123456789z",
            "message_id": "<20240414.12345-1-user@kernel.org>",
            "git_repository_url": "https://git.kernel.org/pub/scm/linux/kernel/git/torvalds/linux.git",
            "log_url": "https://example.org/logs/a%20b.log?x=1&y=2#L10",
        },
    ),
    (
        "build",
        {
            **BUILD,
            "start_time": "2024-04-14T10:30:00-00:00",
            "config_url": "https://[2001:db8::1]:8443/cfg/.config",
            "output_files": [{"name": "vmlinuz", "url": "urn:uuid:6e8bc430-9c3a-11d9-9669-0800200c9a66"}],
        },
    ),
    (
        "test",
        {
            **TEST,
            "start_time": "2024-04-14T23:59:59.999+23:59",
            "log_url": "https://example.org/%E2%82%AC/log;v=1?q=a,b&c=$#x",
        },
    ),
    ("checkout", {**CHECKOUT, "message_id": "a@b@c", "log_url": "mailto:someone@example.org"}),
    ("test", {**TEST, "path": "ltp.syscalls\n"}),  # Python's `$` allows one trailing newline
]


@pytest.mark.parametrize(("object_type", "obj"), BY_FORMAT_INVALID)
def test_format_violations_are_refused_as_kcidb_io_refuses_them(object_type: str, obj: dict) -> None:
    assert not kcidb_accepts(object_type, obj)
    assert not ours_accepts(object_type, obj)


@pytest.mark.parametrize(("object_type", "obj"), BY_FORMAT_VALID)
def test_unusual_but_valid_values_are_accepted_as_kcidb_io_accepts_them(object_type: str, obj: dict) -> None:
    assert kcidb_accepts(object_type, obj)
    assert ours_accepts(object_type, obj)


def test_a_format_violation_is_refused_before_anything_is_queued(bus) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SchemaError, match=r"object/start_time: \"yesterday\" is not a \"date-time\""):
        bus.publish(cki_event("checkout", "new", {**CHECKOUT, "start_time": "yesterday"}))
    assert published(bus) == []


urls = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=30) | st.builds(
    lambda host, path: f"https://{host}/{path}",
    st.from_regex(r"[a-z0-9.:\[\]-]{0,12}", fullmatch=True),
    st.text(max_size=10),
)
times = (
    st.text(max_size=30)
    | st.datetimes().map(lambda d: d.isoformat())
    | st.from_regex(r"\d{4}-\d\d-\d\d[Tt ]\d\d:\d\d:\d\d(\.\d{1,9})?([Zz]|[+-]\d\d:\d\d)?\n?", fullmatch=True)
)


@given(times, urls, st.text(max_size=12))
def test_formats_agree_with_kcidb_io_on_generated_values(start: str, url: str, message_id: str) -> None:
    for obj in (
        {**CHECKOUT, "start_time": start},
        {**CHECKOUT, "log_url": url},
        {**CHECKOUT, "git_repository_url": url},
        {**CHECKOUT, "message_id": message_id},
    ):
        assert ours_accepts("checkout", obj) == kcidb_accepts("checkout", obj), obj


origins = st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True)
checkouts = st.fixed_dictionaries(
    {"id": st.builds(lambda o, s: f"{o}:{s}", origins, st.text(min_size=1, max_size=8)), "origin": origins},
    optional={
        "valid": st.booleans() | st.text(max_size=3),
        "tree_name": st.text(max_size=8),
        "patchset_hash": st.text(max_size=8),
        "git_commit_tags": st.lists(st.text(max_size=4), max_size=2),
        "log_excerpt": st.text(max_size=20),
        "bogus": st.integers(),
    },
)


@given(checkouts)
def test_our_checks_agree_with_kcidb_io_on_generated_checkouts(obj: dict) -> None:
    assert ours_accepts("checkout", obj) == kcidb_accepts("checkout", obj)


@given(st.sampled_from(STATUSES), st.text(min_size=1, max_size=10))
def test_encode_decode_round_trip(status: str, tree: str) -> None:
    fmt = CKIFormat()
    event = cki_event("checkout", status, {**CHECKOUT, "tree_name": tree})
    back = fmt.decode(fmt.encode(event))
    assert (back.id, back.topic, back.body, back.type, back.time) == (
        event.id,
        event.topic,
        event.body,
        event.type,
        event.time,
    )


def test_a_message_without_id_gets_a_stable_one() -> None:
    body = orjson.dumps(cki_event("test", "new", TEST).body)
    first = CKIFormat().decode(WireMessage("datawarehouse.test.new", body))
    again = CKIFormat().decode(WireMessage("datawarehouse.test.new", body))
    assert first.id == again.id  # a redelivery dedupes in an inbox


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\xff\xfe",
        b"[]",
        b"{}",
        b'{"status": "new", "object_type": "build"}',
        b'{"status": "nope", "object_type": "build", "object": {}}',
        b'{"status": "new", "object_type": "build", "object": []}',
        b'{"status": "new", "object_type": "build", "object": {}, "timestamp": 5}',
        b'{"status": "new", "object_type": "build", "object": {}, "timestamp": "x"}',
        b"[" * 100_000,
    ],
)
def test_garbage_gives_our_error(body: bytes) -> None:
    with pytest.raises(InvalidEvent):
        CKIFormat().decode(WireMessage("datawarehouse.build.new", body))


def test_needs_triage_replays_each_object_once_with_its_latest_state() -> None:
    old = cki_event("checkout", "new", CHECKOUT)
    newer = cki_event("checkout", "updated", {**CHECKOUT, "comment": "retested"})
    test = cki_event("test", "new", TEST)
    out = list(needs_triage([old, test, newer]))
    assert sorted(e.topic for e in out) == [
        "datawarehouse.checkout.needs_triage",
        "datawarehouse.test.needs_triage",
    ]
    (checkout,) = [e for e in out if e.body["object_type"] == "checkout"]
    assert checkout.body["object"]["comment"] == "retested"
    assert DecodeError  # the module's decode errors are InvalidEvent subclasses


@pytest.mark.rabbitmq
async def test_a_plain_cki_consumer_reads_what_tidings_sends(tmp_path, rabbitmq: str) -> None:  # type: ignore[no-untyped-def]
    """A consumer written for the DataWarehouse (plain AMQP + JSON, no tidings) gets the exact payload."""
    import aio_pika

    from tests.conftest import delete_amqp_topology
    from tidings import Bus
    from tidings.config import load_config

    exchange, service = f"{EXCHANGE}.{uuid.uuid4().hex[:6]}", f"svc{uuid.uuid4().hex[:6]}"
    (tmp_path / "tidings.toml").write_text(
        f'[bus]\nsource = "datawarehouse"\n[transports.rabbit]\nkind = "amqp"\nurl = "{rabbitmq}"\n'
        f'[connectors.rabbit]\ntransport = "rabbit"\nformat = "cki"\nexchange = "{exchange}"\n'
    )
    bus = Bus(load_config(tmp_path / "tidings.toml"))
    connection = await aio_pika.connect(rabbitmq)
    channel = await connection.channel()
    ex = await channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
    queue = await channel.declare_queue(queue_name(service), durable=True)
    await queue.bind(ex, routing_key=binding("checkout"))
    try:
        sent = [cki_event("checkout", s, CHECKOUT) for s in ("new", "tests_finished")]
        bus.publish_many([*sent, cki_event("test", "new", TEST)])
        await bus.dispatcher().drain()
        got = []
        async with queue.iterator() as messages:
            async for message in messages:
                async with message.process():  # ack after processing, as seed 000 asks
                    got.append((message.routing_key, orjson.loads(message.body), message.message_id))
                if len(got) == 2:
                    break
        assert got == [(e.topic, e.body, e.id) for e in sent]
        assert await asyncio.wait_for(queue.get(fail=False), 2) is None  # the test event was not bound
    finally:
        await connection.close()
        await delete_amqp_topology(rabbitmq, [queue_name(service)], [exchange])
        bus.close()
