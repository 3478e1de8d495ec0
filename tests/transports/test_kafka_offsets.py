"""Which offset a Kafka consumer may commit: never past a message not finished (hypothesis model)."""

from __future__ import annotations

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
