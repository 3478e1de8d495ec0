"""LAVA's five-frame ZeroMQ stream (seed 003; Linaro/lava lava_scheduler_app/signals.py send_event)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import pytest
import zmq
import zmq.asyncio
from hypothesis import given
from hypothesis import strategies as st

from tests.transports.test_zeromq import free_port
from tidings.errors import InvalidEvent, SchemaError
from tidings.formats.lava import FieldFilter, LavaFormat, lava_event, parse_lava_time
from tidings.schemas import SchemaRegistry
from tidings.transport import Binding, QueueSpec, WireMessage
from tidings.transports.zeromq import ZeroMQTransport

# seed 003, the extract of the production stream
TESTJOB = {
    "status": "Submitted",
    "priority": 50,
    "job": 1318796,
    "health_check": True,
    "device": "aa9-01",
    "description": "lab-health-aa9",
    "submit_time": "2017-01-19T13:31:17.995716+00:00",
    "submitter": "lava-health",
    "pipeline": False,
    "visibility": "Publicly visible",
}
DEVICE = {
    "status": "Reserved",
    "pipeline": False,
    "job": "1318429.1",
    "health_status": "Pass",
    "device_type": "x15",
    "device": "x15-01",
}


def test_five_frames_in_lava_order() -> None:
    # signals.py send_event: [EVENT_TOPIC + topic, str(uuid.uuid1()), datetime, user, json.dumps(data)]
    event = lava_event("testjob", TESTJOB, username="lavaserver")
    topic, event_id, stamp, user, data = LavaFormat().encode(event).frames  # type: ignore[misc]
    assert topic == b"org.linaro.validation.testjob"
    assert event_id.decode() == event.id and event.id.count("-") == 4
    assert datetime.fromisoformat(stamp.decode()).tzinfo is not None
    assert user == b"lavaserver"
    assert json.loads(data) == TESTJOB
    assert data == json.dumps(TESTJOB).encode()  # LAVA's own json.dumps separators


def test_legacy_naive_datetime_is_written_and_read() -> None:
    event = lava_event("device", DEVICE)
    stamp = LavaFormat(legacy_time=True).encode(event).frames[2].decode()  # type: ignore[index]
    assert "+" not in stamp  # utcnow().isoformat(): no zone
    assert parse_lava_time(stamp) == event.time
    assert parse_lava_time("2017-01-19T13:31:17.995716+00:00") == datetime(
        2017, 1, 19, 13, 31, 17, 995716, tzinfo=UTC
    )


@given(
    st.sampled_from(["testjob", "device", "worker", "event"]),
    st.dictionaries(st.text(max_size=5), st.integers(-1000, 1000) | st.text(max_size=5), max_size=4),
    st.booleans(),
)
def test_round_trip(kind: str, data: dict, legacy: bool) -> None:
    fmt = LavaFormat(legacy_time=legacy)
    event = lava_event(kind, data, event_topic="org.example.lab")
    back = fmt.decode(fmt.encode(event))
    assert (back.id, back.topic, back.body, back.type, back.headers) == (
        event.id,
        event.topic,
        event.body,
        event.type,
        event.headers,
    )
    assert abs((back.time - event.time).total_seconds()) < 1e-3


def test_schemas_accept_the_seed_extract() -> None:
    registry = SchemaRegistry.default()
    registry.validate("lava.testjob.v1", TESTJOB)
    registry.validate("lava.device.v1", DEVICE)


# what LAVA servers since 2018.1 send: 'state' and 'health' in place of 'status'
# (lava_scheduler_app/signals.py, testjob_post_handler, device_post_handler and worker_post_handler)
MODERN = {
    "testjob": {
        "health": "Complete",
        "state": "Finished",
        "job": 1318796,
        "description": "lab-health-aa9",
        "priority": 50,
        "submit_time": "2024-01-19T13:31:17.995716+00:00",
        "submitter": "lava-health",
        "health_check": True,
        "device": "aa9-01",
        "worker": "worker-3",
        "device_type": "aa9",
        "start_time": "2024-01-19T13:32:00+00:00",
        "end_time": "2024-01-19T13:40:00+00:00",
    },
    "device": {"health": "Good", "state": "Idle", "device": "x15-01", "device_type": "x15", "worker": None},
    "worker": {"hostname": "worker-3", "health": "Active", "state": "Online"},
}


@pytest.mark.parametrize("kind", sorted(MODERN))
def test_schemas_accept_what_current_lava_servers_send(kind: str) -> None:
    SchemaRegistry.default().validate(f"lava.{kind}.v1", MODERN[kind])


@pytest.mark.parametrize(
    ("kind", "body", "missing"),
    [
        ("testjob", {"job": 1, "health": "Complete"}, "state"),
        ("testjob", {"state": "Finished"}, "job"),
        ("device", {"device": "x15-01", "health": "Good"}, "state"),
        ("device", {"state": "Idle"}, "device"),
    ],
)
def test_schemas_refuse_a_body_with_neither_state_nor_status(kind: str, body: dict, missing: str) -> None:
    with pytest.raises(SchemaError, match=missing):
        SchemaRegistry.default().validate(f"lava.{kind}.v1", body)


@pytest.mark.parametrize(
    "frames",
    [
        [b"a.testjob"],
        [b"a", b"b", b"c", b"d"],
        [b"\xff", b"id", b"2017-01-01T00:00:00", b"u", b"{}"],
        [b"a.testjob", b"id", b"not a date", b"u", b"{}"],
        [b"a.testjob", b"id", b"2017-01-01T00:00:00", b"u", b"[]"],
        [b"a.testjob", b"id", b"2017-01-01T00:00:00", b"u", b"{trunc"],
    ],
)
def test_garbage_gives_our_error(frames: list[bytes]) -> None:
    with pytest.raises(InvalidEvent):
        LavaFormat().decode(WireMessage("a.testjob", frames[-1], frames=frames))


def test_field_filters_match_like_reactobus() -> None:
    event = lava_event("device", DEVICE, username="lava-health")
    assert FieldFilter({"topic": r"org\.linaro\..*\.device", "data.device_type": "x15"})(event)
    assert FieldFilter({"username": "lava"})(event)  # re.match: anchored at the start only
    assert not FieldFilter({"username": "health"})(event)
    assert not FieldFilter({"data.no_such_key": ".*"})(event)
    with pytest.raises(InvalidEvent, match="bad regular expression"):
        FieldFilter({"topic": "("})
    with pytest.raises(InvalidEvent, match="topic, username or data"):
        FieldFilter({"body": "x"})


async def test_a_plain_pyzmq_subscriber_reads_our_stream_and_prefixes_filter() -> None:
    """The listener from seed 003 (a bare zmq SUB) and our own consumer, on one PUB."""
    port = free_port()
    publisher = ZeroMQTransport(f"tcp://127.0.0.1:{port}")
    consumer = ZeroMQTransport(f"tcp://127.0.0.1:{port}")
    await publisher.connect()
    await consumer.connect()
    await publisher.open_sender()  # bind
    ctx = zmq.asyncio.Context()
    raw = ctx.socket(zmq.SUB)
    raw.setsockopt(zmq.SUBSCRIBE, b"")
    raw.connect(f"tcp://127.0.0.1:{port}")
    stream = consumer.consume(
        QueueSpec("devices", [Binding("", "org.linaro.validation.device")]), prefetch=10
    )
    ours = asyncio.ensure_future(anext(stream))  # type: ignore[arg-type]
    fmt = LavaFormat()
    job, device = lava_event("testjob", TESTJOB), lava_event("device", DEVICE)
    try:
        for _ in range(50):  # ZeroMQ's slow joiner: repeat until both subscribers are attached
            await publisher.send("", [fmt.encode(job), fmt.encode(device)])
            done, _ = await asyncio.wait({ours}, timeout=0.1)
            if done:
                break
        got = fmt.decode(ours.result().message)
        assert (got.id, got.topic, got.body) == (device.id, device.topic, DEVICE)
        first = await asyncio.wait_for(raw.recv_multipart(), 5)
        assert len(first) == 5 and json.loads(first[4]) in (TESTJOB, DEVICE)
    finally:
        raw.close(linger=0)
        ctx.term()
        await stream.aclose()  # type: ignore[attr-defined]
        await publisher.close()
        await consumer.close()
