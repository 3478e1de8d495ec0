"""RabbitMQ's dead letters, for an operator (``tidings dead``): the queue ``<queue>.dead``.

A RabbitMQ queue is read from its head only, and reading it must lose nothing. Dead letters are
taken with ``basic.get`` and not acked; each is then either acked — dropped, or requeued once
its copy is on the queue, confirmed by RabbitMQ (publisher confirms, ``mandatory``) — or handed
back with ``basic.nack(requeue)``. Should the connection drop meanwhile, RabbitMQ hands back
whatever was not acked by itself. There is no random access: looking for one dead letter
(``show``, ``--id``) reads the queue from its head, at most :data:`SCAN_LIMIT` messages, and
hands back every other.

Caveats: a message handed back returns to its place in a classic queue, but other queue types
may put it at the back, so a look can change the order. While a look lasts, another consumer of
``<queue>.dead`` does not get the messages it holds. Handing back is a ``basic.nack``, which
RabbitMQ 4.3 and later do not count as a delivery of a quorum queue's message; before 4.3 every
look counts one towards the queue's ``x-delivery-limit`` (20 by default from 4.0).

A dead letter's id is its message id (the event id), or ``sha256:`` and the start of its body's
digest for a message without one. Copies of one message share its id: ``--id`` acts on each.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import TYPE_CHECKING

import aiormq
from aiormq.abc import DeliveredMessage
from pamqp import commands as spec

from tidings.errors import ConnectionLost, NotFound, TransportError
from tidings.redact import mask_url
from tidings.textheaders import to_text
from tidings.transport import DeadLetter, Outcome, WireMessage
from tidings.transports.amqp.consume import moved_from, to_wire

if TYPE_CHECKING:
    from tidings.transports.amqp.transport import AmqpTransport

#: the most messages a look for given ids reads (and holds) before it gives up
SCAN_LIMIT = 10_000
#: dead letters requeued or dropped per round of ``--all`` (one confirm wait per round)
BATCH = 200
#: a dead letter taken and not yet settled: what it is, and its delivery tag
Held = tuple[DeadLetter, int]
#: what requeue and drop do to the dead letters they took
Settle = Callable[["_Look", list[Held]], Awaitable[None]]
_BROKEN = (aiormq.exceptions.AMQPError, OSError, RuntimeError)


class AmqpDeadLetters:
    """:class:`~tidings.transport.DeadLetters` on RabbitMQ, over the transport's connection."""

    def __init__(self, transport: AmqpTransport) -> None:
        self.transport = transport

    async def count(self, queue: str, limit: int) -> int:
        """The queue's own count (a passive declare): no message is taken, so none is counted as
        delivered again."""
        async with self._look(queue) as look:
            return min(look.count, limit)

    async def list(self, queue: str, limit: int) -> list[DeadLetter]:
        async with self._look(queue) as look:
            return [letter for letter, _ in await look.take(limit)]

    async def get(self, queue: str, id: str) -> DeadLetter | None:  # noqa: A002
        async with self._look(queue) as look:
            while batch := await look.take(BATCH, SCAN_LIMIT):
                for letter, _ in batch:
                    if letter.matches(id):
                        return letter
            return None

    async def requeue(self, queue: str, ids: Sequence[str] | None) -> int:
        return await self._settle(queue, ids, lambda look, held: self._requeue(look, queue, held))

    async def drop(self, queue: str, ids: Sequence[str] | None) -> int:
        return await self._settle(queue, ids, lambda look, held: look.ack(held))

    async def _settle(self, queue: str, ids: Sequence[str] | None, settle: Settle) -> int:
        """``settle(look, held)`` the dead letters ``ids`` name, or all there were when it began."""
        done = 0
        async with self._look(queue) as look:
            if ids is not None:
                chosen = await look.find(ids)
                await settle(look, chosen)
                return len(chosen)
            while batch := await look.take(BATCH):  # round by round: never all in memory at once
                await settle(look, batch)
                done += len(batch)
        return done

    async def _requeue(self, look: _Look, queue: str, held: list[Held]) -> None:
        """Copies on ``queue``, confirmed; only then the dead letters of those confirmed are acked."""
        results = await self.transport.send("", [_requeued(letter, queue) for letter, _ in held])
        taken = [h for h, result in zip(held, results, strict=True) if result.outcome is Outcome.DELIVERED]
        await look.ack(taken)
        refused = [result.reason for result in results if result.outcome is not Outcome.DELIVERED]
        if refused:
            raise TransportError(
                f"RabbitMQ did not take {len(refused)} requeued message(s) for queue {queue!r} "
                f"({refused[0]}); they stay in {queue}.dead"
            )

    @asynccontextmanager
    async def _look(self, queue: str) -> AsyncIterator[_Look]:
        """A channel holding what it took from ``<queue>.dead``; whatever is not acked goes back."""
        dead = f"{queue}.dead"
        channel = await self.transport.channel()
        try:
            declared = await channel.queue_declare(dead, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            raise NotFound(f"RabbitMQ at {mask_url(self.transport.url)} has no queue {dead!r}") from None
        except _BROKEN as exc:
            raise ConnectionLost(f"cannot look at {dead!r}: {exc}") from None
        look = _Look(channel, dead, declared.message_count or 0)
        try:
            yield look
        finally:
            await look.hand_back()


class _Look:
    """The dead letters one channel took with ``basic.get``, unacked until settled."""

    def __init__(self, channel: aiormq.abc.AbstractChannel, dead: str, count: int) -> None:
        self.channel, self.dead = channel, dead
        #: only what was there when the look began: a requeue that dies again at once comes later
        self.count = count
        self.taken = 0
        self.unsettled = 0

    async def take(self, n: int, bound: int | None = None) -> list[Held]:
        """Up to ``n`` more from the head of the queue (none past ``bound`` taken in all)."""
        wanted = min(n, self.count - self.taken, (bound if bound is not None else self.count) - self.taken)
        found: list[Held] = []
        for _ in range(max(wanted, 0)):
            message = await self._get()
            if message is None:
                break
            found.append((_letter(message), message.delivery.delivery_tag))
        self.taken += len(found)
        self.unsettled += len(found)
        return found

    async def find(self, ids: Sequence[str]) -> list[Held]:
        """Every dead letter ``ids`` name, within SCAN_LIMIT; NotFound, before any change, if one is not."""
        chosen: list[Held] = []
        while batch := await self.take(BATCH, SCAN_LIMIT):
            chosen += [h for h in batch if any(h[0].matches(wanted) for wanted in ids)]
        missing = [wanted for wanted in ids if not any(letter.matches(wanted) for letter, _ in chosen)]
        if missing:
            looked = f"the first {self.taken}" if self.taken < self.count else f"all {self.taken}"
            raise NotFound(f"no dead letter {', '.join(map(repr, missing))} among {looked} in {self.dead!r}")
        return chosen

    async def ack(self, held: list[Held]) -> None:
        try:
            for _, tag in held:
                await self.channel.basic_ack(tag)
        except _BROKEN as exc:
            raise ConnectionLost(
                f"acking in {self.dead!r} failed ({exc}): RabbitMQ hands back what was not acked "
                "(a requeued message may then be in both queues)"
            ) from None
        self.unsettled -= len(held)

    async def hand_back(self) -> None:
        """Every message taken and not acked back to the queue, then the channel closed."""
        try:
            if self.unsettled:
                # delivery tag 0 with multiple: every unacked message of this channel
                await self.channel.basic_nack(0, multiple=True, requeue=True)
            await self.channel.close()
        except _BROKEN:
            pass  # the channel is gone: RabbitMQ has handed back what it held already

    async def _get(self) -> DeliveredMessage | None:
        try:
            message = await self.channel.basic_get(self.dead, no_ack=False)
        except _BROKEN as exc:
            raise ConnectionLost(f"reading {self.dead!r} failed ({exc}): nothing was taken") from None
        return None if isinstance(message.delivery, spec.Basic.GetEmpty) else message


def _letter(message: DeliveredMessage) -> DeadLetter:
    wire = to_wire(message)
    handle = wire.message_id or "sha256:" + hashlib.sha256(wire.body).hexdigest()[:16]
    return DeadLetter.read(handle, wire)


def _requeued(letter: DeadLetter, queue: str) -> WireMessage:
    """The message without its death, into ``queue`` alone (the default exchange), its topic kept."""
    fresh = letter.fresh()
    # as text, as a retry writes it: a STOMP consumer of the same queue must see every header
    headers = to_text({**fresh.headers, **moved_from(fresh)})
    return replace(fresh, headers=headers, routing_key=queue, exchange="", cc=[])
