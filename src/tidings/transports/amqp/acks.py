"""Ack bookkeeping for one AMQP channel: many acks, few frames.

A consumer that acks every message with its own ``basic.ack`` spends as much
time framing acks as handling messages. AMQP lets one ``basic.ack`` with
``multiple=True`` settle every outstanding delivery up to a tag, but only the
consumer knows which deliveries are finished: handlers run concurrently and
finish out of order, and a delivery still being handled must never be covered.

:class:`AckWindow` keeps the channel's deliveries in tag order with their
state. :meth:`AckWindow.take` turns what was acked since the last call into
frames: one multiple ack for the longest finished prefix, then single acks for
finished deliveries beyond the first one still running.

RabbitMQ closes the channel on an ack naming a tag that is not outstanding
(``PRECONDITION_FAILED - unknown delivery tag``), even with ``multiple``, so a
multiple ack always names the highest tag of the prefix that is still waiting
for its ack, never one already settled some other way (nack, reject).
"""

from __future__ import annotations

from collections import deque
from enum import Enum


class _State(Enum):
    RUNNING = 1  # delivered, not decided: must not be covered by a multiple ack
    ACK = 2  # the consumer acked it; no frame sent yet
    SETTLED = 3  # a frame already settled it (nack, reject, or a single ack)


class AckWindow:
    """Outstanding deliveries of one channel, in tag order."""

    def __init__(self) -> None:
        self._order: deque[int] = deque()
        self._state: dict[int, _State] = {}

    def __len__(self) -> int:
        return len(self._state)

    def delivered(self, tag: int) -> None:
        """Register a delivery; tags must arrive in increasing order (as the broker sends them)."""
        if self._order and tag <= self._order[-1]:
            raise ValueError(f"delivery tag {tag} after {self._order[-1]}: tags must increase")
        self._order.append(tag)
        self._state[tag] = _State.RUNNING

    def ack(self, tag: int) -> None:
        """The consumer finished ``tag``: it will be acked by the next frames :meth:`take` returns."""
        self._decide(tag, _State.ACK)

    def settled(self, tag: int) -> None:
        """A frame other than an ack settled ``tag``; call only after that frame was written."""
        self._decide(tag, _State.SETTLED)

    def _decide(self, tag: int, state: _State) -> None:
        if self._state.get(tag) is not _State.RUNNING:
            raise ValueError(f"delivery tag {tag} is not outstanding")
        self._state[tag] = state

    def take(self) -> list[tuple[int, bool]]:
        """The ``(delivery_tag, multiple)`` ack frames that settle every acked delivery now."""
        frames: list[tuple[int, bool]] = []
        highest_acked = None
        while self._order and self._state[self._order[0]] is not _State.RUNNING:
            tag = self._order.popleft()
            if self._state.pop(tag) is _State.ACK:
                highest_acked = tag
        if highest_acked is not None:
            frames.append((highest_acked, True))
        for tag in self._order:  # beyond a running delivery: one frame each
            if self._state[tag] is _State.ACK:
                frames.append((tag, False))
                self._state[tag] = _State.SETTLED
        return frames
