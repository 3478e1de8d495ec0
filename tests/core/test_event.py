"""The envelope: ids, time, JSON and CloudEvents mappings, input checks."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tests.conftest import embedded_config
from tidings.bus import Bus
from tidings.errors import DecodeError, InvalidEvent, InvalidTopic
from tidings.event import Event, format_time, holds_non_finite, json_depth, new_id, parse_time
from tidings.formats.lava import parse_lava_time
from tidings.formats.native import NativeFormat, StructuredFormat

json_scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
words = st.text(alphabet="abcxyz0123-_", min_size=1, max_size=6)
topics = st.lists(words, min_size=1, max_size=5).map(".".join)
events = st.builds(
    Event.create,
    topics,
    st.dictionaries(st.text(max_size=8), json_values, max_size=5),
    source=words,
    type=st.none() | words,
    headers=st.dictionaries(
        st.text(alphabet="abcdefgh_-", min_size=1, max_size=8).filter(lambda k: not k.startswith("ce_")),
        json_scalars,
        max_size=4,
    ),
    visibility=st.sampled_from(["public", "private"]),
)


def test_ids_are_uuid7_and_sort_in_creation_order() -> None:
    ids = [new_id() for _ in range(5000)]
    assert len(set(ids)) == 5000
    assert ids == sorted(ids)
    assert {uuid.UUID(i).version for i in ids} == {7}


def test_a_forked_child_draws_other_random_bits_than_its_parent() -> None:
    """Ids take their random bits from a pool; a child must not reuse the parent's rest of it."""
    import os

    new_id()  # the pool is filled and partly used before the fork
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        os.write(write, "\n".join(new_id() for _ in range(50)).encode())
        os._exit(0)
    os.close(write)
    parent_ids = [new_id() for _ in range(50)]
    with os.fdopen(read) as pipe:
        child_ids = pipe.read().split("\n")
    os.waitpid(pid, 0)
    assert len(child_ids) == 50
    # the 62 random bits at the end (the last 15 hex digits) never repeat between the two
    tails = [i[-15:] for i in parent_ids + child_ids]
    assert len(set(tails)) == 100


def test_time_is_utc_with_microseconds() -> None:
    event = Event.create("a.b", {})
    assert event.time.tzinfo is not None
    assert event.to_dict()["time"].endswith("Z")
    assert len(event.to_dict()["time"].split(".")[1]) == 7  # six digits and the Z


@given(events)
def test_json_round_trip_is_lossless(event: Event) -> None:
    assert Event.from_json(event.to_json()) == event


@given(events)
def test_cloudevents_structured_round_trip_is_lossless(event: Event) -> None:
    assert Event.from_cloudevent(event.to_cloudevent()) == event
    fmt = StructuredFormat()
    assert fmt.decode(fmt.encode(event)) == event


@given(events)
def test_native_binary_mode_round_trip_is_lossless(event: Event) -> None:
    fmt = NativeFormat()
    message = fmt.encode(event)
    assert message.routing_key == event.topic
    assert message.message_id == event.id
    assert fmt.decode(message) == event


@pytest.mark.parametrize(
    ("header", "value", "problem"),
    [
        ("ce_id", "", "empty header ce_id"),
        ("ce_time", "yesterday", "not an ISO 8601 timestamp"),
        ("ce_source", 7, "header ce_source must be a string"),
        ("ce_subject", "a..b", "empty word"),
        ("ce_visibility", "secret", "visibility must be"),
        ("bad_header", [1], "must map a string to a JSON scalar"),
    ],
)
def test_native_decode_refuses_a_broken_envelope_naming_it(header: str, value: object, problem: str) -> None:
    fmt = NativeFormat()
    message = fmt.encode(Event.create("a.b", {"n": 1}))
    message.headers[header] = value
    with pytest.raises((DecodeError, InvalidEvent, InvalidTopic), match=problem):
        fmt.decode(message)


def test_cloudevent_has_the_required_attributes() -> None:
    ce = Event.create("kcidb.checkout.new", {"id": 1}, source="cki", type="kcidb.checkout.v1").to_cloudevent()
    assert {"specversion", "id", "source", "type", "time", "subject", "data"} <= ce.keys()
    assert ce["specversion"] == "1.0"
    assert ce["subject"] == "kcidb.checkout.new"
    assert ce["dataschema"] == "urn:tidings:schema:kcidb.checkout.v1"


@pytest.mark.parametrize(
    ("topic", "body", "kw", "message"),
    [
        ("a..b", {}, {}, "empty word"),
        ("a.b", [], {}, "must be a JSON object"),
        ("a.b", {}, {"visibility": "secret"}, "visibility"),
        ("a.b", {}, {"headers": {"k": [1]}}, "JSON scalar"),
        ("a.b", {}, {"headers": {"ce_id": "x"}}, "reserved"),
        ("a.b", {}, {"time": datetime(2026, 1, 1)}, "time zone"),
    ],
)
def test_bad_envelopes_are_refused_with_a_clear_message(
    topic: str, body: object, kw: dict, message: str
) -> None:
    with pytest.raises((InvalidEvent, InvalidTopic), match=message):
        Event.create(topic, body, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"{",
        b"[]",
        b'{"id": 1}',
        b'{"id":"x","topic":"a","time":"nope","body":{}}',
        b"\xff\xfe",
        b'{"id":"x","topic":"a","time":"2026-01-01T00:00:00Z","body":{},"z":1}',
    ],
)
def test_from_json_refuses_garbage_with_our_error(raw: bytes) -> None:
    with pytest.raises(InvalidEvent):
        Event.from_json(raw)


def test_json_depth_counts_nesting_without_recursion() -> None:
    assert json_depth(1) == 0
    assert json_depth({"a": [1, {"b": {}}]}) == 4
    deep: object = {}
    for _ in range(100_000):
        deep = [deep]
    assert json_depth(deep) == 100_001


def test_event_time_is_kept_exactly() -> None:
    moment = datetime(2026, 11, 22, 9, 7, 41, 123456, tzinfo=UTC)
    event = Event.create("a", {}, time=moment)
    assert Event.from_json(event.to_json()).time == moment


@pytest.mark.parametrize("text", ["0001-01-01T00:30:00+01:00", "9999-12-31T23:30:00-01:00"])
def test_a_time_whose_utc_is_out_of_range_is_an_invalid_event(text: str) -> None:
    """Valid times whose UTC falls outside years 1-9999: an OverflowError escaped every decoder."""
    with pytest.raises(InvalidEvent, match="out of range in UTC"):
        parse_time(text)
    with pytest.raises(InvalidEvent, match="out of range in UTC"):
        Event.create("a", {}, time=datetime.fromisoformat(text))
    with pytest.raises(InvalidEvent, match="out of range in UTC"):
        parse_lava_time(text)


def _depth_by_recursion(value: object) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth_by_recursion(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth_by_recursion(v) for v in value), default=0)
    return 0


@given(json_values)
def test_json_depth_agrees_with_counting_by_recursion(value: object) -> None:
    assert json_depth(value) == _depth_by_recursion(value)


@given(st.datetimes(timezones=st.just(UTC)) | st.datetimes(timezones=st.timezones()))
@example(datetime(2026, 11, 30, 12, 0, 0, 0, tzinfo=UTC))  # a whole second: still ".000000"
@example(datetime(2026, 11, 30, 12, 0, 0, 120, tzinfo=UTC))  # leading zeros of the fraction kept
@example(datetime(1, 1, 1, 0, 0, 0, 5, tzinfo=UTC))  # a four-digit year
def test_time_text_is_rfc3339_utc_with_microseconds(moment: datetime) -> None:
    text = format_time(moment)
    in_utc = moment.astimezone(UTC)
    m = in_utc
    day = f"{m.year:04}-{m.month:02}-{m.day:02}"
    assert text == f"{day}T{m.hour:02}:{m.minute:02}:{m.second:02}.{m.microsecond:06}Z"
    assert parse_time(text) == in_utc


# -- integers of any width: carried exactly, as JSON itself does, or refused with a clear error ---

WIDE = st.integers(min_value=-(10**4299) + 1, max_value=10**4299 - 1)


@settings(max_examples=200, deadline=None)
@given(st.lists(WIDE | st.integers(-(2**63), 2**64 - 1), min_size=1, max_size=5))
def test_integers_of_any_width_survive_the_outbox_and_the_wire(numbers: list[int]) -> None:
    from tidings.event import dumps, loads

    body = {"n": numbers, "first": numbers[0]}
    assert loads(dumps(body)) == body
    stored = Event.from_stored(Event.create("a.b", body).to_json())  # the outbox row, read back
    assert stored.body == body
    native = NativeFormat()
    assert native.decode(native.encode(Event.create("a.b", body))).body == body
    structured = StructuredFormat()
    assert structured.decode(structured.encode(Event.create("a.b", body))).body == body


def test_a_number_past_what_json_readers_take_is_refused_clearly() -> None:
    from tidings.event import loads

    with pytest.raises(InvalidEvent, match="integers may have up to 4,300 digits"):
        loads(b'{"n": ' + b"9" * 5000 + b"}")
    with pytest.raises(InvalidEvent, match="malformed JSON"):
        loads(b'{"n": 1e400}')


async def test_a_wide_integer_published_arrives_exactly(bus) -> None:  # type: ignore[no-untyped-def]
    import asyncio

    from tidings import App

    got: list[Event] = []
    app = App("wide")
    app.subscribe("wide.#")(got.append)
    await app.declare(bus)
    sent = bus.publish("wide.one", {"f": 123456789012345678901234567890, "g": 2**64, "h": -(2**100)})
    await bus.dispatcher().drain()
    stop = asyncio.Event()
    running = asyncio.create_task(app.run(bus, stop))
    from tests.waiting import until

    await until(lambda: got)
    stop.set()
    await running
    assert got[0].body == sent.body == {"f": 123456789012345678901234567890, "g": 2**64, "h": -(2**100)}


def test_a_header_name_longer_than_rabbitmq_keeps_is_refused() -> None:
    with pytest.raises(InvalidEvent, match="longer than 128 characters"):
        Event.create("a.b", {}, headers={"k" * 129: "v"})
    assert Event.create("a.b", {}, headers={"k" * 128: "v"}).headers == {"k" * 128: "v"}


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("x-tidings-attempts", "reserved for tidings' transports"),
        ("X-Tidings-Routing-Key", "reserved for tidings' transports"),
        ("x-death", "RabbitMQ's own"),
        ("x-first-death-queue", "RabbitMQ's own"),
        ("k\n", "holds a control character"),
    ],
)
def test_a_header_a_transport_would_take_for_its_own_is_refused_at_publish(
    name: str, problem: str, tmp_path: Path
) -> None:
    """``x-tidings-attempts: 99`` from a publisher would dead-letter the event at its first
    failure; an event read from the wire (a dead letter) may carry it."""
    bus = Bus(embedded_config(tmp_path / "home"))
    try:
        with pytest.raises(InvalidEvent, match=problem):
            bus.publish("a.b", {}, headers={name: "99"})
        with pytest.raises(InvalidEvent, match=problem):
            bus.event("a.b", {}, headers={name: "99"})
        for name_ok in ("x-tidings-relays", "x-tidings-replayed-at", "x-deathstar", "x-death-count"):
            assert bus.publish("a.b", {}, headers={name_ok: "1"}).headers == {name_ok: "1"}
    finally:
        bus.close()
    assert Event.create("a.b", {}, headers={name: "99"}).headers == {name: "99"}  # as decoded


@pytest.mark.parametrize(
    "body",
    [
        {"score": float("nan")},
        {"a": [1, {"b": float("inf")}]},
        {"n": None, "m": -float("inf")},
        {"t": (float("nan"),)},  # a tuple is written as an array too
    ],
)
def test_nan_or_infinity_is_refused_at_publish_not_written_as_null(body: dict, tmp_path: Path) -> None:
    """orjson writes them as null without a word: the stored event was not the one published
    (and the lava format wrote a NaN its own decoder refuses)."""
    bus = Bus(embedded_config(tmp_path / "home"))
    try:
        with pytest.raises(InvalidEvent, match="NaN or Infinity"):
            bus.publish("a.b", body)
        with pytest.raises(InvalidEvent, match="NaN or Infinity"):
            bus.publish("a.b", {}, headers={"ratio": float("nan")})
        assert bus.publish("a.b", {"n": None, "x": 1.5}).body == {"n": None, "x": 1.5}
    finally:
        bus.close()
    assert holds_non_finite(body) and not holds_non_finite({"n": None, "x": [1.5, {"y": 2}]})


def test_an_id_some_transport_cannot_carry_is_refused_where_the_event_is_made() -> None:
    """A 5,000-character id read from a LAVA frame was relayed into the outbox, and then every
    AMQP connector dead-lettered it ("AMQP short string over 255 bytes")."""
    Event.create("a.b", {}, id="x" * 255)
    for bad, said in (
        ("x" * 256, "longer than 255 bytes"),
        ("é" * 128, "longer than 255 bytes"),  # 256 bytes in UTF-8
        ("job\n42", "holds a control character"),
        ("job\x0042", "holds a control character"),
    ):
        with pytest.raises(InvalidEvent, match=said):
            Event.create("a.b", {}, id=bad)
        with pytest.raises(InvalidEvent, match=said):
            Event.from_dict({"id": bad, "topic": "a.b", "time": "2026-12-03T00:00:00Z", "body": {}})


def test_whole_seconds_round_down_exactly() -> None:
    """Through a float, .999997 s rounded up to the next second (fedmsg's and STOMP's integer
    timestamps then said a later second than the event's)."""
    from tidings.event import whole_seconds

    late = datetime(3059, 1, 1, 0, 0, 0, 999_997, tzinfo=UTC)
    assert whole_seconds(late) == int(datetime(3059, 1, 1, tzinfo=UTC).timestamp())
    assert whole_seconds(datetime(1969, 12, 31, 23, 59, 59, 500_000, tzinfo=UTC)) == -1


@pytest.mark.parametrize(
    ("event", "problem"),
    [
        (Event("a b", {}), "invalid topic"),
        (Event("a.*", {}), "invalid topic"),
        (Event("a.list", [1, 2]), "body must be a JSON object"),  # type: ignore[arg-type]
        (Event("a.vis", {}, visibility="secret"), "visibility"),  # type: ignore[arg-type]
        (Event("x.y", {}, headers={"x-tidings-attempts": 99}), "reserved for tidings' transports"),
        (Event.create("x.y", {}, headers={"x-tidings-attempts": 99}), "reserved for tidings' transports"),
        (Event("a.b", {}, id="x\ny"), "id"),
    ],
)
def test_an_event_object_is_checked_as_a_topic_and_body_are(
    event: Event, problem: str, tmp_path: Path
) -> None:
    """``bus.publish(Event(...))`` skipped what Event.create and publish(topic, body) check: the
    event was stored, and every consumer then dead-lettered it as invalid."""
    bus = Bus(embedded_config(tmp_path / "home"))
    try:
        for publish in (bus.publish, lambda e: bus.publish_many([e])):
            with pytest.raises(InvalidEvent, match=problem):
                publish(event)
        assert bus.outbox.last_seq() == 0
    finally:
        bus.close()


def test_publishing_calls_that_mean_nothing_or_something_else(tmp_path: Path) -> None:
    bus = Bus(embedded_config(tmp_path / "home", source="svc"))
    try:
        assert bus.publish_many([]) == []  # nothing to store: no error
        with pytest.raises(TypeError, match="publish_many takes Event objects"):
            bus.publish_many([("t.z", {})])  # type: ignore[list-item]
        assert bus.publish("a.b", {}, source="other").source == "other"  # not "multiple values"
        assert bus.publish("a.b", {}).source == "svc"
        deep: object = 1
        for _ in range(600):
            deep = (deep,)
        with pytest.raises(InvalidEvent, match="levels deep"):
            bus.publish("a.b", {"t": deep})
    finally:
        bus.close()
