"""Which offset a Kafka consumer may commit: never past a message not finished (hypothesis model);
what a member says about itself (no broker needed)."""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.transports.kafka.offsets import Offsets

steps = st.lists(
    st.tuples(st.sampled_from(["read", "skip", "settle", "release", "commit"]), st.integers(0, 30))
)


@given(start=st.integers(0, 5), script=steps)
def test_the_committed_position_never_passes_an_unfinished_message(
    start: int, script: list[tuple[str, int]]
) -> None:
    offsets = Offsets()
    offsets.assigned("t", 0, start)
    handed_out: set[int] = set()  # the model: what a handler has or had and did not finish
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
            else:  # stays unfinished; a delivery is settled once, so it is never settled after this
                offsets.release("t", 0, offset)
                handed_out.discard(offset)
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
