"""Consuming from RabbitMQ: deliveries, their settling, and a consumer that survives reconnects.

The count of tries travels in the message (header ``x-tidings-attempts``, set
when a retry forwards it to a retry queue), so it survives restarts and every
consumer of the queue sees it. A message handed out before and not settled
comes back with RabbitMQ's ``redelivered`` flag (on quorum queues also a
``x-delivery-count``): the delivery says so, and the consumer runtime's journal
counts whether a handler died on it — AMQP 0-9-1 cannot tell a crash from a
release or from a message that was only prefetched.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC
from typing import Any, Protocol

import aiormq
from aiormq.abc import DeliveredMessage
from yarl import URL

from tidings.errors import ConnectionLost, TransportError
from tidings.redact import mask_url
from tidings.retry import HandBack, backoff
from tidings.textheaders import JSON_HEADERS, from_text, to_text
from tidings.transport import (
    ATTEMPTS_HEADER,
    LAST_ERROR_HEADER,
    REASON_HEADER,
    QueueSpec,
    SendResult,
    Topology,
    WireMessage,
    death_headers,
)
from tidings.transports.amqp.acks import AckWindow


class Broker(Protocol):
    """What consuming needs of the AMQP transport (:class:`~.transport.AmqpTransport`)."""

    url: URL
    declared: Topology
    hand_back: HandBack

    async def channel(self) -> aiormq.abc.AbstractChannel: ...

    async def declare(self, topology: Topology) -> None: ...

    async def send(self, exchange: str, messages: Sequence[WireMessage]) -> list[SendResult]: ...

    def retry_queue_for(self, queue: str, delay: float) -> tuple[str, int]: ...


log = logging.getLogger(__name__)

RECONNECT_BASE, RECONNECT_CAP = 0.5, 10.0
#: basic.qos carries the prefetch count in 16 bits
AMQP_MAX_PREFETCH = 65_535
#: what settling raises when the channel is gone (the broker then redelivers: at-least-once)
_CHANNEL_GONE = (
    aiormq.exceptions.AMQPError,
    aiormq.exceptions.ChannelInvalidStateError,
    OSError,
    RuntimeError,
)
_CANCELLED = object()  # the broker cancelled our consumer (queue deleted)
_CLOSED = object()  # the channel or connection closed under us


#: the routing key a message had before it went through a retry queue (which re-keys it)
ROUTING_KEY_HEADER = "x-tidings-routing-key"
#: the exchange it came through before that (a format may read it: Taskcluster's names the event)
EXCHANGE_HEADER = "x-tidings-exchange"
#: headers the broker or this transport adds for its own bookkeeping; formats never see them
_INTERNAL = (
    "x-death",
    "x-first-death-",
    "x-last-death-",
    "x-delivery-count",
    ATTEMPTS_HEADER,
    LAST_ERROR_HEADER,
    ROUTING_KEY_HEADER,
    EXCHANGE_HEADER,
)
_INTERNAL_OF_DEAD_LETTERS = tuple(h for h in _INTERNAL if h not in (ATTEMPTS_HEADER, LAST_ERROR_HEADER))
#: headers of a STOMP frame that RabbitMQ's STOMP adapter leaves in a message's headers table
_STOMP_FRAME = ("receipt", "content-length")
#: the header tidings 0.1 counted with (the number of the next attempt); still read
_OLD_ATTEMPT_HEADER = "x-tidings-attempt"


def moved_from(message: WireMessage) -> dict[str, str]:
    """The headers that keep where a message came from when it is put straight into a queue
    (a retry, a dead letter, a requeue, a replay), which re-keys it on the default exchange."""
    kept = {ROUTING_KEY_HEADER: message.routing_key}
    if message.exchange:
        kept[EXCHANGE_HEADER] = message.exchange
    return kept


def to_wire(message: DeliveredMessage) -> WireMessage:
    props = message.header.properties
    raw = dict(props.headers or {})
    routing_key = raw.get(ROUTING_KEY_HEADER) or message.routing_key or ""
    # a dead letter keeps its attempts and last error for whoever reads the dead letters
    internal = _INTERNAL if REASON_HEADER not in raw else _INTERNAL_OF_DEAD_LETTERS
    headers = {k: _plain(v) for k, v in raw.items() if not k.startswith(internal) and k not in _STOMP_FRAME}
    if JSON_HEADERS in headers:  # written as text (by a retry, or by a STOMP client): typed again
        headers = from_text(headers)
    cc = headers.pop("CC", None) or []
    stamp = props.timestamp
    return WireMessage(
        routing_key=str(routing_key),
        body=message.body,
        headers=headers,
        message_id=props.message_id,
        content_type=props.content_type,
        content_encoding=props.content_encoding,
        timestamp=stamp.replace(tzinfo=UTC) if stamp is not None and stamp.tzinfo is None else stamp,
        priority=props.priority,
        exchange=str(raw.get(EXCHANGE_HEADER) or message.exchange or ""),
        cc=list(cc),
        properties={
            k: v
            for k, v in (
                ("app_id", props.app_id),
                ("user_id", props.user_id),
                ("correlation_id", props.correlation_id),
                ("type", props.message_type),
                ("delivery_mode", props.delivery_mode),
            )
            if v is not None
        },
    )


def _plain(value: Any) -> Any:
    # AMQP long strings may arrive as bytes; formats expect text
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            return value
    return value


def attempt_of(message: DeliveredMessage) -> int:
    """1 + the tries the message says were made (a retry writes them into it)."""
    headers = message.header.properties.headers or {}
    tries = _plain(headers.get(ATTEMPTS_HEADER))
    if isinstance(tries, str) and tries.isdigit():  # written as text, so that STOMP readers see it
        tries = int(tries)
    if isinstance(tries, int) and not isinstance(tries, bool) and tries >= 0:
        return tries + 1
    older = headers.get(_OLD_ATTEMPT_HEADER)  # forwarded by tidings 0.1: already the next number
    return older if isinstance(older, int) and not isinstance(older, bool) and older > 0 else 1


def redelivered(message: DeliveredMessage) -> bool:
    """Handed out before and not settled (the flag; quorum queues also count it)."""
    count = (message.header.properties.headers or {}).get("x-delivery-count")
    return bool(message.delivery.redelivered) or (isinstance(count, int) and count > 0)


class ChannelAcks:
    """Sends one channel's acks: those of one turn of the event loop go out together.

    One sender at a time, in order: a multiple ack written before a single ack it covers would
    make the broker refuse the single one (unknown delivery tag) and close the channel. Acks are
    not awaited by handlers: an ack lost with its connection only means a redelivery.
    """

    def __init__(self, channel: aiormq.abc.AbstractChannel) -> None:
        self.channel = channel
        self.window = AckWindow()
        self._flush_scheduled = False
        self._outgoing: deque[tuple[int, bool]] = deque()
        self._sender: asyncio.Task[None] | None = None

    def ack(self, tag: int) -> None:
        self.window.ack(tag)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        self._outgoing.extend(self.window.take())
        if self._outgoing and (self._sender is None or self._sender.done()):
            self._sender = asyncio.create_task(self._send())

    async def _send(self) -> None:
        while self._outgoing:
            tag, multiple = self._outgoing.popleft()
            try:
                await self.channel.basic_ack(tag, multiple=multiple, wait=False)
            except _CHANNEL_GONE:
                log.warning("acks were lost with their channel; the broker redelivers those messages")
                self._outgoing.clear()

    async def drain(self, timeout: float = 5.0) -> None:
        """Send what was acked so far (before the channel is closed on purpose)."""
        self._flush()
        if self._sender is not None:
            await asyncio.wait({self._sender}, timeout=timeout)


@dataclass
class AmqpDelivery:
    message: WireMessage
    attempt: int
    redelivered: bool
    queue: str
    raw: DeliveredMessage = field(repr=False)
    transport: Broker = field(repr=False)
    acks: ChannelAcks = field(repr=False)
    settled: bool = False

    @property
    def lost(self) -> bool:
        """Its channel is gone: the broker hands it out again on another."""
        return bool(self.raw.channel.is_closed)

    async def ack(self) -> None:
        self._mark_settled()
        self.acks.ack(self.raw.delivery.delivery_tag)

    async def release(self) -> None:
        self._mark_settled()
        tag = self.raw.delivery.delivery_tag
        try:
            await self.raw.channel.basic_nack(tag, requeue=True)
        except _CHANNEL_GONE:
            log.warning(
                "releasing message %s was lost with its channel; the broker will redeliver it",
                self.message.message_id,
            )
            return
        self.acks.window.settled(tag)  # only now: a multiple ack sent earlier would have covered it

    async def retry(self, delay: float, reason: str = "", *, attempts: int | None = None) -> None:
        target, _ = self.transport.retry_queue_for(self.queue, delay)
        tries = self.attempt if attempts is None else attempts
        await self._forward(target, {ATTEMPTS_HEADER: tries, LAST_ERROR_HEADER: reason[:1000]})

    async def reject(self, reason: str, *, attempts: int | None = None) -> None:
        tries = self.attempt if attempts is None else attempts
        await self._forward(f"{self.queue}.dead", death_headers(reason, tries, self.queue))

    async def _forward(self, queue: str, headers: dict[str, Any]) -> None:
        """Publish a confirmed copy to ``queue`` (default exchange), then ack the original."""
        if self.settled:
            raise TransportError(f"message {self.message.message_id} was already settled")
        original = self.message
        # as text: RabbitMQ's STOMP adapter passes only strings and wide integers on to a STOMP
        # consumer of the same queue, and the attempts must reach it
        every = to_text({**original.headers, **moved_from(original), **headers})
        copy = replace(
            original,
            headers=every,
            routing_key=queue,
            exchange="",
            cc=[],
        )
        try:
            (result,) = await self.transport.send("", [copy])
            if result.outcome.value != "delivered":  # no such queue (deleted), a full disk
                raise TransportError(
                    f"moving message {original.message_id} to {queue} failed: {result.reason}"
                )
        except TransportError:
            await self.transport.hand_back.later(self.release)
            raise
        self.transport.hand_back.succeeded()
        await self.ack()

    def _mark_settled(self) -> None:
        if self.settled:
            raise TransportError(f"message {self.message.message_id} was already settled")
        self.settled = True


async def consume(transport: Broker, queue: QueueSpec, prefetch: int) -> AsyncIterator[AmqpDelivery]:
    """Deliveries from ``queue``; reconnects with capped backoff and jitter, restoring the topology."""
    failures = 0
    while True:
        inbox: asyncio.Queue[Any] = asyncio.Queue()
        try:
            channel = await _subscribe(transport, queue, prefetch, inbox)
        except TransportError as exc:  # the broker is away (restarting, unreachable): keep trying
            failures += 1
            await _back_off(exc, failures)
            continue
        failures = 0
        acks = ChannelAcks(channel)
        try:
            while True:
                item = await inbox.get()
                if item is _CANCELLED:
                    raise TransportError(
                        f"queue {queue.name!r} was deleted: the broker cancelled the consumer"
                    )
                if item is _CLOSED:
                    log.warning(
                        "consumer of queue %r lost its channel to %s; reconnecting "
                        "(its unacked messages come back to the queue)",
                        queue.name,
                        mask_url(transport.url),
                    )
                    break
                acks.window.delivered(item.delivery.delivery_tag)
                yield AmqpDelivery(
                    to_wire(item), attempt_of(item), redelivered(item), queue.name, item, transport, acks
                )
        finally:
            if not channel.is_closed:
                await acks.drain()  # a clean stop must not turn finished work into redeliveries
                try:
                    await asyncio.wait_for(channel.close(), 5)
                except (TimeoutError, aiormq.exceptions.AMQPError, OSError, RuntimeError):
                    pass  # closing a dying channel: the broker requeues what was unacked


async def _subscribe(
    transport: Broker, queue: QueueSpec, prefetch: int, inbox: asyncio.Queue[Any]
) -> aiormq.abc.AbstractChannel:
    channel = await transport.channel()
    try:
        await transport.declare(Topology(transport.declared.exchanges, [queue]))
        await channel.basic_qos(prefetch_count=min(prefetch, AMQP_MAX_PREFETCH))
        channel.on_consumer_cancel_callbacks.add(lambda frame: inbox.put_nowait(_CANCELLED))
        channel.closing.add_done_callback(lambda _: inbox.put_nowait(_CLOSED))
        await channel.basic_consume(queue.name, inbox.put, no_ack=False)
    except (aiormq.exceptions.AMQPError, OSError, RuntimeError) as exc:
        raise ConnectionLost(f"cannot consume from {queue.name!r}: {exc}") from None
    return channel


async def _back_off(exc: Exception, failures: int) -> None:
    delay = backoff(failures, RECONNECT_BASE, RECONNECT_CAP)
    log.warning("consumer cannot reach the broker (%s); retrying in %.1fs", exc, delay)
    await asyncio.sleep(delay)
