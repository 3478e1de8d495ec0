"""The fast basic.publish framing is byte for byte what pamqp (aiormq's framing) produces."""

from __future__ import annotations

from datetime import UTC, datetime

import pamqp.frame
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pamqp import commands as spec
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

from tidings.transport import WireMessage
from tidings.transports.amqp import AmqpTransport, properties, wire_properties
from tidings.transports.amqp.frames import FRAMING_ERRORS, can_publish_fast, field_table, publish_frames

short_text = st.text(max_size=40)
header_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**63 - 1),
        st.floats(allow_nan=False),
        st.text(max_size=60),
        st.datetimes(timezones=st.just(UTC)).map(lambda d: d.replace(microsecond=0)),
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(short_text, inner, max_size=3)),
    max_leaves=8,
)
messages = st.builds(
    WireMessage,
    routing_key=st.text(max_size=60),
    body=st.binary(max_size=3000),
    headers=st.dictionaries(st.text(max_size=30), header_values, max_size=6),
    message_id=st.one_of(st.none(), short_text),
    content_type=st.one_of(st.none(), st.just("application/json")),
    content_encoding=st.one_of(st.none(), st.just("utf-8")),
    timestamp=st.one_of(st.none(), st.datetimes(timezones=st.just(UTC))),
    priority=st.one_of(st.none(), st.integers(0, 9)),
    cc=st.lists(st.text(max_size=20), max_size=3),
    properties=st.fixed_dictionaries(
        {},
        optional={
            "app_id": short_text,
            "user_id": short_text,
            "correlation_id": short_text,
            "type": short_text,
            "delivery_mode": st.sampled_from([1, 2]),
            "expiration": st.just("60000"),
            "reply_to": short_text,
        },
    ),
)


def pamqp_frames(channel: int, exchange: str, message: WireMessage, max_body_frame: int) -> bytes:
    frames: list[object] = [
        spec.Basic.Publish(exchange=exchange, routing_key=message.routing_key, mandatory=True),
        ContentHeader(0, len(message.body), properties(message)),
    ]
    body = message.body
    frames += [ContentBody(body[i : i + max_body_frame]) for i in range(0, len(body), max_body_frame)]
    return b"".join(pamqp.frame.marshal(frame, channel) for frame in frames)  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(messages, st.integers(1, 65535), st.sampled_from([1000, 4096, 131064]))
def test_same_bytes_as_pamqp(message: WireMessage, channel: int, max_body_frame: int) -> None:
    try:
        expected = pamqp_frames(channel, "tidings", message, max_body_frame)
    except FRAMING_ERRORS:  # pamqp cannot frame it (a time before 1970, a float over 32 bits ...)
        expected = None
    try:
        ours = publish_frames(
            channel,
            "tidings",
            message.routing_key,
            wire_properties(message),
            message.body,
            mandatory=True,
            max_body_frame=max_body_frame,
        )
    except FRAMING_ERRORS:
        ours = None
    assert ours == expected


def test_frames_decode_back_to_the_message() -> None:
    stamp = datetime(2026, 11, 22, 10, 0, 0, tzinfo=UTC)
    message = WireMessage(
        routing_key="datawarehouse.build.new",
        body=b'{"status": "new"}' * 100,
        headers={"ce_id": "x", "attempt": 3, "ok": True, "none": None},
        message_id="m-1",
        content_type="application/json",
        timestamp=stamp,
        cc=["route.a"],
    )
    data = publish_frames(
        7,
        "ex",
        message.routing_key,
        wire_properties(message),
        message.body,
        mandatory=True,
        max_body_frame=1000,
    )
    decoded = []
    while data:
        consumed, channel, frame = pamqp.frame.unmarshal(data)
        assert channel == 7
        decoded.append(frame)
        data = data[consumed:]
    publish, header, *bodies = decoded
    assert (publish.exchange, publish.routing_key, publish.mandatory) == ("ex", message.routing_key, True)
    assert header.body_size == len(message.body) and len(bodies) == 2
    assert b"".join(b.value for b in bodies) == message.body
    props = header.properties
    assert props.headers == {"ce_id": "x", "attempt": 3, "ok": True, "none": None, "CC": ["route.a"]}
    assert (props.message_id, props.timestamp, props.delivery_mode) == ("m-1", stamp, 2)


def test_values_amqp_cannot_carry_are_refused() -> None:
    with pytest.raises(ValueError, match="255"):
        publish_frames(1, "ex", "k" * 256, {}, b"", mandatory=True, max_body_frame=1000)
    with pytest.raises(TypeError):
        field_table({"object": object()})


@pytest.mark.rabbitmq
async def test_the_installed_aiormq_takes_the_fast_path(rabbitmq: str) -> None:
    """If an aiormq upgrade removed what the fast path needs, sends would quietly slow down."""
    transport = AmqpTransport(rabbitmq)
    await transport.connect()
    try:
        assert can_publish_fast(await transport._publish_channel())
    finally:
        await transport.close()
