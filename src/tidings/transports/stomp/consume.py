"""Consuming over STOMP: a subscription to a RabbitMQ queue, acked after the handler.

The subscription is ``/amq/queue/<queue>`` with ``ack: client-individual`` and
``prefetch-count``. A retry sends a copy into the queue's retry queue (which dead-letters it
back after its delay) with the attempts and the last error, then acks the original; a reject
sends it to ``<queue>.dead`` with the reason — the same queues and headers as the AMQP
transport, so the two can share a queue. A release is a NACK (RabbitMQ requeues it); a copy
that cannot be made releases the original after a backoff (:class:`~tidings.retry.HandBack`).

A lost connection is reconnected with capped backoff and the subscription restored; what was
unacked comes back to the queue with ``redelivered:true``. An ack id belongs to one connection:
one that arrives for an earlier connection is dropped (RabbitMQ would apply it to whatever
message of the new connection has that number), and its message comes back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from stomp.exception import NotConnectedException

from tidings.errors import TransportError
from tidings.redact import mask_url
from tidings.retry import backoff
from tidings.transport import (
    ATTEMPTS_HEADER,
    LAST_ERROR_HEADER,
    QueueSpec,
    Topology,
    WireMessage,
    death_headers,
)
from tidings.transports.stomp.frames import EXCHANGE_HEADER, ROUTING_KEY_HEADER, received
from tidings.transports.stomp.transport import (
    LOST,
    Link,
    StompTransport,
    check_queue_name,
    in_destination,
)

log = logging.getLogger(__name__)
RECONNECT_BASE, RECONNECT_CAP = 0.5, 10.0


@dataclass
class StompDelivery:
    message: WireMessage
    attempt: int
    redelivered: bool
    queue: str
    ack_id: str
    generation: int
    link: Link = field(repr=False)
    transport: StompTransport = field(repr=False)
    settled: bool = False

    @property
    def lost(self) -> bool:
        """Its connection is gone: the broker hands it out again on the next one."""
        link = self.link
        return link.connection is None or link.failed_a_write or self.generation != link.generation

    async def ack(self) -> None:
        self._mark_settled()
        await self._frame("ack")

    async def release(self) -> None:
        self._mark_settled()
        # said, not left to the broker's stomp.default_nack_requeue (false would drop the message)
        await self._frame("nack", requeue="true")

    async def retry(self, delay: float, reason: str = "", *, attempts: int | None = None) -> None:
        target, _ = self.transport.retry_queue_for(self.queue, delay)
        tries = self.attempt if attempts is None else attempts
        await self._forward(target, {ATTEMPTS_HEADER: tries, LAST_ERROR_HEADER: reason[:1000]})

    async def reject(self, reason: str, *, attempts: int | None = None) -> None:
        tries = self.attempt if attempts is None else attempts
        await self._forward(f"{self.queue}.dead", death_headers(reason, tries, self.queue))

    async def _forward(self, queue: str, headers: dict[str, Any]) -> None:
        if self.settled:
            raise TransportError(f"message {self.message.message_id} was already settled")
        kept = {ROUTING_KEY_HEADER: self.message.routing_key}
        if self.message.exchange:
            kept[EXCHANGE_HEADER] = self.message.exchange
        try:
            await self.transport.forward(queue, self.message, {**kept, **headers})
        except TransportError:
            await self.transport.hand_back.later(self.release)
            raise
        self.transport.hand_back.succeeded()
        await self.ack()

    async def _frame(self, command: str, **headers: str) -> None:
        connection = self.link.connection
        if connection is None or self.generation != self.link.generation:
            return  # that connection is gone: the broker hands the message out again
        try:
            await self.link.write(getattr(connection, command), self.ack_id, **headers)
        except (NotConnectedException, OSError):
            # stomp.py may not have seen the connection go yet: what came on it is not handled now
            self.link.failed_a_write = True
            log.warning(
                "%s of message %s was lost with its connection; it comes back",
                command,
                self.message.message_id,
            )

    def _mark_settled(self) -> None:
        if self.settled:
            raise TransportError(f"message {self.message.message_id} was already settled")
        self.settled = True


async def consume(transport: StompTransport, queue: QueueSpec, prefetch: int) -> AsyncIterator[StompDelivery]:
    dead_letters = not queue.bindings and queue.name.endswith(".dead")
    failures = 0
    while not transport.closed:
        inbox: asyncio.Queue[Any] = asyncio.Queue()
        link = Link(transport, inbox.put_nowait)
        transport.consumer_links.add(link)
        try:
            await _subscribe(transport, link, queue, prefetch)
        except TransportError as exc:
            transport.consumer_links.discard(link)
            await link.close()
            failures += 1
            delay = backoff(failures, RECONNECT_BASE, RECONNECT_CAP)
            log.warning(
                "STOMP consumer of %r cannot subscribe (%s); retrying in %.1fs", queue.name, exc, delay
            )
            await asyncio.sleep(delay)
            continue
        failures = 0
        try:
            while True:
                item = await inbox.get()
                if item is LOST and transport.closed:
                    return
                if item is LOST:
                    log.warning(
                        "STOMP consumer of %r lost its connection to %s; reconnecting "
                        "(its unacked messages come back to the queue)",
                        queue.name,
                        mask_url(transport.url),
                    )
                    break
                generation, headers, body = item
                message, attempt, came_back = received(headers, body, dead_letters=dead_letters)
                yield StompDelivery(
                    message,
                    attempt,
                    came_back,
                    queue.name,
                    headers.get("ack", ""),
                    generation,
                    link,
                    transport,
                )
        finally:
            transport.consumer_links.discard(link)
            await link.close()


async def _subscribe(transport: StompTransport, link: Link, queue: QueueSpec, prefetch: int) -> None:
    check_queue_name(queue.name)
    if queue.bindings:  # a reconnect finds the queue again, as the AMQP transport would make it
        await transport.declare(Topology(transport.declared.exchanges, [queue]))
    await link.open()
    connection = link.connection
    assert connection is not None
    headers = {"prefetch-count": str(max(1, prefetch))}
    try:
        await link.write(
            connection.subscribe,
            f"/amq/queue/{in_destination(queue.name)}",
            id=queue.name,
            ack="client-individual",
            headers=headers,
        )
    except (NotConnectedException, OSError) as exc:
        raise TransportError(f"cannot subscribe to {queue.name!r}: {exc}") from None
