"""STOMP's dead letters, for an operator (``tidings dead``): RabbitMQ's, read over AMQP 0-9-1.

A STOMP consumer's queues are RabbitMQ queues declared over AMQP exactly as the AMQP transport
declares them (``<queue>.dead`` included), and STOMP has no way to look at a message without
consuming it: each operation opens an AMQP connection at ``amqp_url`` and does what
:mod:`tidings.transports.amqp.dead` does, with the same guarantees and caveats.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from tidings.transport import DeadLetter
from tidings.transports.amqp.dead import AmqpDeadLetters
from tidings.transports.amqp.transport import AmqpTransport


class StompDeadLetters:
    """:class:`~tidings.transport.DeadLetters` of a STOMP transport (RabbitMQ's, over AMQP)."""

    def __init__(self, amqp_url: str, retry_delays: Sequence[int], connect_timeout: float) -> None:
        self.amqp_url, self.retry_delays, self.connect_timeout = amqp_url, retry_delays, connect_timeout

    async def count(self, queue: str, limit: int) -> int:
        async with self._amqp() as dead:
            return await dead.count(queue, limit)

    async def list(self, queue: str, limit: int) -> list[DeadLetter]:
        async with self._amqp() as dead:
            return await dead.list(queue, limit)

    async def get(self, queue: str, id: str) -> DeadLetter | None:  # noqa: A002
        async with self._amqp() as dead:
            return await dead.get(queue, id)

    async def requeue(self, queue: str, ids: Sequence[str] | None) -> int:
        async with self._amqp() as dead:
            return await dead.requeue(queue, ids)

    async def drop(self, queue: str, ids: Sequence[str] | None) -> int:
        async with self._amqp() as dead:
            return await dead.drop(queue, ids)

    @asynccontextmanager
    async def _amqp(self) -> AsyncIterator[AmqpDeadLetters]:
        amqp = AmqpTransport(
            self.amqp_url, retry_delays=self.retry_delays, connect_timeout=self.connect_timeout
        )
        try:
            await amqp.connect()
            yield AmqpDeadLetters(amqp)
        finally:
            await amqp.close()
