"""Which offset a Kafka consumer may commit: never past a message not finished (hypothesis model);
what a member says about itself (no broker needed)."""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.transports.kafka.offsets import Offsets

steps = st.lists(
    st.tuples(st.sampled_from(["read", "skip", "settle", "release", "again", "commit"]), st.integers(0, 30))
)


@given(start=st.integers(0, 5), script=steps)
def test_the_committed_position_never_passes_an_unfinished_message(
    start: int, script: list[tuple[str, int]]
) -> None:
    offsets = Offsets()
    offsets.assigned("t", 0, start)
    handed_out: set[int] = set()  # the model: what a handler has or had and did not finish
    released: set[int] = set()  # handed back, unfinished, until taken again
    finished: set[int] = set()
    next_read = start
    committed = start
    for action, pick in script:
        if action in ("read", "skip"):
            offset = next_read
            next_read += 1
            if action == "read":
                offsets.delivered("t", 0, offset)
                handed_out.add(offset)
            else:
                offsets.skipped("t", 0, offset)
                finished.add(offset)
        elif action in ("settle", "release") and handed_out:
            offset = sorted(handed_out)[pick % len(handed_out)]
            if action == "settle":
                offsets.settled("t", 0, offset)
                handed_out.discard(offset)
                finished.add(offset)
            else:  # stays unfinished; this delivery is settled once: only a new one settles it
                offsets.release("t", 0, offset)
                handed_out.discard(offset)
                released.add(offset)
        elif action == "again" and released:
            offset = sorted(released)[pick % len(released)]
            assert offsets.taken_again("t", 0, offset, offsets.partitions[("t", 0)].epoch)
            released.discard(offset)
            handed_out.add(offset)
        elif action == "commit":
            moved = offsets.to_commit()
            if moved:
                position = moved[("t", 0)]
                assert position > committed  # only ever forward
                offsets.committed(moved)
                committed = position
        # the invariant: everything before the position is finished, and it moves as far as it may
        position = offsets.partitions[("t", 0)].position()
        assert all(o in finished for o in range(start, position))
        unfinished = [o for o in range(start, next_read) if o not in finished]
        assert position == (min(unfinished) if unfinished else next_read)


def test_a_revoked_partition_is_not_committed_by_late_settles() -> None:
    offsets = Offsets()
    offsets.assigned("t", 1, 10)
    offsets.delivered("t", 1, 10)
    offsets.revoked("t", 1)
    offsets.settled("t", 1, 10)  # a handler finished after the partition went to another member
    assert offsets.to_commit() == {}


def test_a_settle_from_an_earlier_assignment_does_not_touch_the_partition_assigned_again() -> None:
    """The partition came back to the same member while a handler ran past the revoke: the message
    is read again and handled again; the old handler's ack must not let the commit pass the new."""
    offsets = Offsets()
    offsets.assigned("t", 0, 10)
    before = offsets.delivered("t", 0, 10)
    offsets.revoked("t", 0)
    offsets.assigned("t", 0, 10)
    now = offsets.delivered("t", 0, 10)
    offsets.settled("t", 0, 10, before)
    offsets.release("t", 0, 10, before)
    assert offsets.to_commit() == {} and offsets.unsettled("t", 0) == 1  # the new one still runs
    offsets.settled("t", 0, 10, now)
    assert offsets.to_commit() == {("t", 0): 11}
    assert offsets.delivered("t", 9, 0) is None  # not assigned: nothing to hand out


async def test_a_record_read_before_its_partition_was_revoked_in_the_same_poll_is_not_handed_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """librdkafka may serve a revoke inside consume(), after poll() returned a record of that
    partition: handed out, it would be handled by this member and the next one."""
    from confluent_kafka import TopicPartition

    from tidings.transport import Binding, QueueSpec, WireMessage
    from tidings.transports.kafka import consume
    from tidings.transports.kafka.records import to_record
    from tidings.transports.kafka.transport import KafkaTransport

    monkeypatch.setattr(consume, "end_offsets", lambda *args: {})  # no broker to ask
    partition = TopicPartition("ex", 0)
    record = to_record(WireMessage(routing_key="a.b", body=b"{}", message_id="m10"), "ex", None)

    class Read:  # a record as librdkafka hands it over
        def topic(self) -> str:
            return "ex"

        def partition(self) -> int:
            return 0

        def offset(self) -> int:
            return 10

        def error(self) -> None:
            return None

        def headers(self) -> list[tuple[str, bytes]]:
            return record.headers

        def value(self) -> bytes:
            return record.value

        def timestamp(self) -> tuple[int, int]:
            return (1, 0)

    class Librdkafka:  # the calls the member makes, scripted
        def committed(self, partitions: list[TopicPartition], timeout: float) -> list[TopicPartition]:
            return [TopicPartition(p.topic, p.partition, 10) for p in partitions]

        def poll(self, timeout: float) -> Read:
            return Read()

        def consume(self, count: int, timeout: float) -> list[Read]:
            member._on_revoke(self, [partition])  # type: ignore[arg-type]
            member._on_assign(self, [partition])  # type: ignore[arg-type]
            return []

        def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> None:
            pass

        def resume(self, partitions: list[TopicPartition]) -> None:
            pass

        def seek(self, partition: TopicPartition) -> None:
            seeks.append((partition.topic, partition.partition, partition.offset))

    seeks: list[tuple[str, int, int]] = []
    member = consume.GroupConsumer(KafkaTransport(), QueueSpec("q", [Binding("ex", "#")]), 10)
    librdkafka = Librdkafka()
    member._consumer = librdkafka  # type: ignore[assignment]
    member._on_assign(librdkafka, [partition])  # type: ignore[arg-type]
    assert member.poll(10) == []
    assert member.offsets_to_commit() == {}  # and its position stays before it: it is read again
    # given back to this member in the same poll: read from the new assignment's start
    assert seeks == [("ex", 0, 10)]


def test_released_messages_hold_the_position_but_nobody_waits_for_them() -> None:
    offsets = Offsets()
    offsets.assigned("t", 0, 0)
    for offset in range(3):
        offsets.delivered("t", 0, offset)
    offsets.release("t", 0, 0)
    offsets.settled("t", 0, 1)
    offsets.settled("t", 0, 2)
    assert offsets.unsettled("t", 0) == 0  # a rebalance need not wait for it
    assert offsets.to_commit() == {}  # but the position stays before it


def test_a_released_message_is_taken_again_only_under_its_own_assignment() -> None:
    offsets = Offsets()
    offsets.assigned("t", 0, 0)
    epoch = offsets.delivered("t", 0, 0)
    assert epoch is not None
    offsets.release("t", 0, 0, epoch)
    assert not offsets.taken_again("t", 0, 1, epoch)  # never handed out, never released
    offsets.revoked("t", 0)
    offsets.assigned("t", 0, 0)  # back to this member: its new reads will meet offset 0 again
    assert not offsets.taken_again("t", 0, 0, epoch)
    offsets.release("t", 0, 0, offsets.delivered("t", 0, 0))
    assert offsets.taken_again("t", 0, 0, offsets.partitions[("t", 0)].epoch)
    assert offsets.unsettled("t", 0) == 1 and offsets.to_commit() == {}


async def test_a_member_with_no_partition_for_long_says_so_once(caplog: pytest.LogCaptureFixture) -> None:
    """Waiting looks the same as a group the broker no longer balances: after a while, a line."""
    from tidings.transport import Binding, QueueSpec
    from tidings.transports.kafka.consume import GroupConsumer
    from tidings.transports.kafka.transport import KafkaTransport

    member = GroupConsumer(KafkaTransport(session_timeout=2.0), QueueSpec("q", [Binding("x", "#")]), 10)
    member._tell_if_idle_long()
    assert "no partition" not in caplog.text  # just started: joining takes a while
    member._idle_since = time.monotonic() - 61
    for _ in range(3):
        member._tell_if_idle_long()
    assert caplog.text.count("has had no partition for 61s") == 1
    assert "more members than its topics have partitions, or the broker does not balance it" in caplog.text
