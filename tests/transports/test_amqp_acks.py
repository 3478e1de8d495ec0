"""AckWindow: coalesced acks never cover a running delivery and never name an unknown tag.

The model is RabbitMQ's own rule set for a channel's unacked deliveries (rabbit_channel's
collect_acks): ``basic.ack(tag, multiple)`` settles ``tag`` and, with ``multiple``, every
outstanding tag below it; a tag that is not outstanding closes the channel
(PRECONDITION_FAILED - unknown delivery tag), multiple or not.
"""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.transports.amqp.acks import AckWindow
from tidings.transports.amqp.consume import ChannelAcks


class Broker:
    """The broker's side of one channel: outstanding delivery tags, and what each became."""

    def __init__(self) -> None:
        self.outstanding: list[int] = []
        self.acked: set[int] = set()
        self.nacked: set[int] = set()

    def deliver(self, tag: int) -> None:
        self.outstanding.append(tag)

    def ack(self, tag: int, multiple: bool) -> None:
        if tag not in self.outstanding:
            raise AssertionError(f"PRECONDITION_FAILED - unknown delivery tag {tag}")
        covered = [t for t in self.outstanding if t <= tag] if multiple else [tag]
        self.acked.update(covered)
        self.outstanding = [t for t in self.outstanding if t not in covered]

    def nack(self, tag: int) -> None:
        if tag not in self.outstanding:
            raise AssertionError(f"PRECONDITION_FAILED - unknown delivery tag {tag}")
        self.nacked.add(tag)
        self.outstanding.remove(tag)


def test_in_order_acks_become_one_multiple_ack() -> None:
    window = AckWindow()
    for tag in range(1, 6):
        window.delivered(tag)
    for tag in range(1, 6):
        window.ack(tag)
    assert window.take() == [(5, True)]
    assert len(window) == 0


def test_a_running_delivery_splits_the_frames() -> None:
    window = AckWindow()
    for tag in range(1, 6):
        window.delivered(tag)
    for tag in (1, 2, 4, 5):
        window.ack(tag)
    assert window.take() == [(2, True), (4, False), (5, False)]
    window.ack(3)
    assert window.take() == [(3, True)]  # 4 and 5 are settled already: not named again
    assert len(window) == 0


def test_multiple_ack_never_names_a_tag_settled_by_a_nack() -> None:
    window = AckWindow()
    for tag in (1, 2, 3):
        window.delivered(tag)
    window.ack(1)
    window.ack(2)
    window.settled(3)  # nacked
    assert window.take() == [(2, True)]


def test_misuse_is_refused() -> None:
    window = AckWindow()
    window.delivered(4)
    with pytest.raises(ValueError, match="must increase"):
        window.delivered(3)
    window.ack(4)
    with pytest.raises(ValueError, match="not outstanding"):
        window.ack(4)
    with pytest.raises(ValueError, match="not outstanding"):
        window.settled(9)


# one step: ("deliver",), ("ack", k), ("nack", k) with k picking a running delivery, or ("flush",)
steps = st.lists(
    st.one_of(
        st.just(("deliver", 0)),
        st.tuples(st.sampled_from(["ack", "nack"]), st.integers(0, 50)),
        st.just(("flush", 0)),
    ),
    max_size=120,
)


@given(steps)
def test_random_interleavings_against_the_broker_model(script: list[tuple[str, int]]) -> None:
    window, broker = AckWindow(), Broker()
    running: list[int] = []
    wanted_ack: set[int] = set()
    next_tag = 1

    def flush() -> None:
        for tag, multiple in window.take():
            broker.ack(tag, multiple)

    for action, pick in script:
        if action == "deliver":
            window.delivered(next_tag)
            broker.deliver(next_tag)
            running.append(next_tag)
            next_tag += 1
        elif action == "flush":
            flush()
        elif running:
            tag = running.pop(pick % len(running))
            if action == "ack":
                window.ack(tag)
                wanted_ack.add(tag)
            else:
                broker.nack(tag)  # the frame is written first, then the window is told
                window.settled(tag)
        # never acked by the broker: a delivery still running or one only nacked
        assert broker.acked <= wanted_ack
    flush()
    assert broker.acked == wanted_ack
    assert sorted(broker.outstanding) == sorted(running)


class SlowChannel:
    """A channel whose first ack waits until released (a full write queue, say); records frames."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.gate = asyncio.Event()
        self.is_closed = False
        self.refused: list[str] = []  # what the broker would close the channel for

    async def basic_ack(self, tag: int, *, multiple: bool = False, wait: bool = True) -> None:
        await self.gate.wait()
        await asyncio.sleep(0)  # other tasks run between two frames, as on a real connection
        try:
            self.broker.ack(tag, multiple)
        except AssertionError as exc:
            self.refused.append(str(exc))


async def test_acks_of_later_flushes_never_overtake_earlier_ones() -> None:
    broker = Broker()
    channel = SlowChannel(broker)
    acks = ChannelAcks(channel)  # type: ignore[arg-type]
    for tag in range(1, 6):
        acks.window.delivered(tag)
        broker.deliver(tag)
    for tag in (1, 2, 4):
        acks.ack(tag)
    await asyncio.sleep(0)  # flush: (2, multiple), (4, single); the first is stuck in the channel
    for tag in (3, 5):
        acks.ack(tag)
    await asyncio.sleep(0)  # flush: (5, multiple) would cover 4 if it went out before (4, single)
    channel.gate.set()
    await acks.drain()
    await asyncio.sleep(0.01)
    assert channel.refused == []
    assert broker.acked == {1, 2, 3, 4, 5} and broker.outstanding == []
