"""The AMQP 0-9-1 transport (RabbitMQ), on aiormq.

Sending: persistent messages, ``mandatory`` so an unroutable message comes
back (``RETRY``, never counted delivered), publisher confirms *pipelined* — the
whole batch is written, then the broker's (multiple) acks are awaited together.
A lost connection or a confirm that does not come in time fails the batch as a
whole (the dispatcher sends it again: duplicates carry the same id, nothing is
lost).

Consuming (see :mod:`tidings.transports.amqp.consume`): manual acks, bounded
prefetch, retries through per-delay TTL queues ``<queue>.retry.<n>s`` that
dead-letter back into the queue, dead letters in ``<queue>.dead``, the attempt
count in the ``x-tidings-attempts`` header, reconnecting with capped backoff and
the whole topology restored.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

import aiormq
from pamqp import commands as spec
from yarl import URL

from tidings.errors import ConfigError, ConnectionLost, TransportError
from tidings.redact import mask_url
from tidings.retry import HandBack
from tidings.transport import (
    DELIVERED,
    Delivery,
    Findings,
    Outcome,
    QueueSpec,
    SendResult,
    Topology,
    WireMessage,
)
from tidings.transports.amqp import DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_URL
from tidings.transports.amqp.consume import consume
from tidings.transports.amqp.doctor import verify
from tidings.transports.amqp.frames import FRAMING_ERRORS, can_publish_fast, publish_batch, publish_frames

if TYPE_CHECKING:
    from tidings.transports.amqp.dead import AmqpDeadLetters

log = logging.getLogger(__name__)


def mask(url: URL) -> str:
    """The URL as it may appear in logs and errors: never with its password."""
    return mask_url(url)


class AmqpTransport:
    """Transport ``amqp``.

    Options: ``url``; ``heartbeat`` (seconds within which a dead connection is
    noticed, default 15); ``confirm_timeout`` (s, default 30); ``connect_timeout``
    (s, default 10); ``retry_delays`` (s, the retry queues, default
    1, 5, 25, 125, 625); ``max_message_bytes``; TLS: ``ca_file``, ``cert_file``,
    ``key_file``, ``key_password`` (with a client certificate and no password in
    the URL, EXTERNAL authentication is used, as on Fedora's broker);
    ``management_url`` (RabbitMQ's management API, for ``tidings doctor``; default
    ``http://<host>:15672``).
    """

    kind = "amqp"
    acknowledged = True

    def __init__(
        self,
        url: str = DEFAULT_URL,
        heartbeat: float = 15.0,
        confirm_timeout: float = 30.0,
        connect_timeout: float = 10.0,
        retry_delays: Sequence[float] = (1, 5, 25, 125, 625),
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        key_password: str | None = None,
        management_url: str | None = None,
    ) -> None:
        self.url = _parse_url(url)
        self.management_url = management_url
        self.heartbeat = float(heartbeat)
        self.confirm_timeout = float(confirm_timeout)
        self.connect_timeout = float(connect_timeout)
        self.retry_delays = sorted({int(d) for d in retry_delays}) or [1]
        self.max_message_bytes = int(max_message_bytes)
        self._tls = (ca_file, cert_file, key_file, key_password)
        if self.url.scheme == "amqp" and any(self._tls):
            raise ConfigError("TLS options (ca_file, cert_file, ...) need an amqps:// URL")
        self._connection: aiormq.abc.AbstractConnection | None = None
        self._channel: aiormq.abc.AbstractChannel | None = None
        self._connect_lock: asyncio.Lock | None = None
        self.declared = Topology()
        self.hand_back = HandBack()

    # -- connection -------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return (
            self._channel is not None
            and not self._channel.is_closed
            and self._connection is not None
            and not self._connection.is_closed
        )

    async def connect(self) -> None:
        if self._connect_lock is None:
            self._connect_lock = asyncio.Lock()
        async with self._connect_lock:
            if self.connected:
                return
            await self._drop()
            self._connection = await self.open_connection()
            try:  # a broker shutting down closes the connection here (320 CONNECTION_FORCED)
                self._channel = await self._connection.channel(publisher_confirms=True, on_return_raises=True)
            except (aiormq.exceptions.AMQPError, OSError, RuntimeError) as exc:
                await self._drop()
                raise ConnectionLost(f"cannot open a channel on {mask(self.url)}: {_reason(exc)}") from None

    async def open_connection(self) -> aiormq.abc.AbstractConnection:
        """A new connection with a one-line error for every way it can fail."""
        where = mask(self.url)
        try:
            connection = aiormq.Connection(self._connect_url(), context=self._ssl_context())
            await asyncio.wait_for(connection.connect(), self.connect_timeout)
        except TimeoutError:
            raise TransportError(f"no answer from {where} within {self.connect_timeout:g}s") from None
        except aiormq.exceptions.ProbableAuthenticationError:
            raise TransportError(f"{where} refused the credentials (ACCESS_REFUSED, 403)") from None
        except aiormq.exceptions.AuthenticationError as exc:
            raise TransportError(f"{where} refused the login: {_reason(exc)}") from None
        except ssl.SSLError as exc:
            raise TransportError(f"TLS handshake with {where} failed: {exc.reason or exc}") from None
        except (OSError, aiormq.exceptions.AMQPError) as exc:
            raise TransportError(f"cannot connect to {where}: {_reason(exc)}") from None
        return connection

    def _connect_url(self) -> URL:
        # aiormq declares a connection dead after 3 x (heartbeat + 1) s of silence; ask for a
        # heartbeat short enough that this stays within the configured bound
        beat = max(1, int(self.heartbeat / 3) - 1)
        query = {**self.url.query, "heartbeat": str(beat), "name": "tidings"}
        if self._tls[1] and not self.url.password:
            query["auth"] = "external"
        return self.url.with_query(query)

    def _ssl_context(self) -> ssl.SSLContext | None:
        if self.url.scheme != "amqps":
            return None
        ca_file, cert_file, key_file, key_password = self._tls
        try:
            context = ssl.create_default_context(cafile=ca_file)  # verifies the chain and the host name
            if cert_file:
                context.load_cert_chain(cert_file, key_file, password=key_password)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"TLS files for {mask(self.url)} cannot be used: {_reason(exc)}") from None
        return context

    async def _drop(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None and not connection.is_closed:
            try:
                await asyncio.wait_for(connection.close(), 5)
            except (TimeoutError, OSError, aiormq.exceptions.AMQPError, RuntimeError):
                pass  # it is going away either way

    async def close(self) -> None:
        await self._drop()

    async def channel(self) -> aiormq.abc.AbstractChannel:
        """A new channel on the (re)opened connection, for a consumer of its own."""
        await self.connect()
        assert self._connection is not None
        try:
            return await self._connection.channel(publisher_confirms=True, on_return_raises=True)
        except (aiormq.exceptions.AMQPError, OSError, RuntimeError) as exc:
            raise ConnectionLost(f"cannot open a channel on {mask(self.url)}: {_reason(exc)}") from None

    async def _publish_channel(self) -> aiormq.abc.AbstractChannel:
        if not self.connected:
            await self.connect()
        assert self._channel is not None
        return self._channel

    # -- topology ---------------------------------------------------------------------

    async def declare(self, topology: Topology) -> None:
        """Declare (or passively check) exchanges, queues with their retry and dead-letter queues."""
        self.check_names(topology)
        channel = await self._publish_channel()
        try:
            for exchange in topology.exchanges:
                await channel.exchange_declare(
                    exchange.name,
                    exchange_type=exchange.type,
                    durable=exchange.durable,
                    passive=exchange.passive,
                )
            for queue in topology.queues:
                await self.declare_queue(channel, queue)
        except aiormq.exceptions.ChannelNotFoundEntity as exc:
            self._channel = None  # the broker closed it
            raise TransportError(f"{_entity(exc)} does not exist (404 NOT_FOUND)") from None
        except aiormq.exceptions.ChannelAccessRefused as exc:
            self._channel = None
            raise TransportError(f"not allowed to declare on {mask(self.url)}: {_reason(exc)}") from None
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            self._channel = None
            raise TransportError(f"declaration conflicts with what exists: {_reason(exc)}") from None
        except (aiormq.exceptions.AMQPError, OSError, RuntimeError) as exc:
            raise ConnectionLost(f"declaring on {mask(self.url)} failed: {_reason(exc)}") from None
        self.declared.exchanges.extend(e for e in topology.exchanges if e not in self.declared.exchanges)
        self.declared.queues.extend(
            q for q in topology.queues if q.name not in {d.name for d in self.declared.queues}
        )

    def check_names(self, topology: Topology) -> None:
        """Refuse, in one line, a name AMQP cannot carry — before the client library raises on it."""
        named = [("exchange", e.name) for e in topology.exchanges]
        for queue in topology.queues:
            named += [("exchange", b.exchange) for b in queue.bindings]
            owned = [queue.dead_letter_queue, *(retry_queue(queue.name, d) for d in self.retry_delays)]
            named += [("queue", queue.name), *(("queue", name) for name in owned)]
        for kind, name in named:
            problem = amqp_name_problem(name, kind)
            if problem:
                raise ConfigError(f"{kind} name {name!r} cannot be used on AMQP: {problem}")

    async def declare_queue(self, channel: aiormq.abc.AbstractChannel, queue: QueueSpec) -> None:
        arguments = dict(queue.arguments)
        if queue.kind == "quorum":
            arguments.setdefault("x-queue-type", "quorum")
        await channel.queue_declare(
            queue.name, durable=queue.durable, auto_delete=not queue.durable, arguments=arguments
        )
        for binding in queue.bindings:
            await channel.queue_bind(queue.name, binding.exchange, routing_key=binding.pattern)
        await channel.queue_declare(queue.dead_letter_queue, durable=True, arguments=_kind_args(queue))
        for delay in self.retry_delays:
            await channel.queue_declare(
                retry_queue(queue.name, delay),
                durable=True,
                arguments={
                    **_kind_args(queue),
                    "x-message-ttl": delay * 1000,
                    "x-dead-letter-exchange": "",
                    "x-dead-letter-routing-key": queue.name,
                },
            )

    def retry_queue_for(self, queue: str, delay: float) -> tuple[str, int]:
        """The retry queue whose delay is the smallest at least ``delay`` (else the longest)."""
        chosen = self.retry_wait(delay)
        return retry_queue(queue, chosen), chosen

    def retry_wait(self, delay: float) -> int:
        """How long a retry asked to wait ``delay`` s really waits: its retry queue's delay."""
        return next((d for d in self.retry_delays if d >= delay), self.retry_delays[-1])

    # -- sending ----------------------------------------------------------------------

    async def send(self, exchange: str, messages: Sequence[WireMessage]) -> list[SendResult]:
        channel = await self._publish_channel()
        results: list[SendResult | None] = [None] * len(messages)
        sendable: list[int] = []
        for index, message in enumerate(messages):
            if len(message.body) > self.max_message_bytes:
                results[index] = SendResult(
                    Outcome.REFUSED,
                    f"{len(message.body)} bytes is over the broker's limit of {self.max_message_bytes}",
                )
            else:
                sendable.append(index)
        if sendable:
            if can_publish_fast(channel):
                pending = await self._publish_fast(channel, exchange, messages, sendable, results)
            else:
                pending = [
                    (i, asyncio.ensure_future(self._publish(channel, exchange, messages[i])))
                    for i in sendable
                ]
            for _, future in pending:
                # a send cancelled midway never looks at its futures: their errors are expected, not news
                future.add_done_callback(_retrieve_error)
            if pending:
                await self._settle_confirms(pending, results)
        return [r if r is not None else SendResult(Outcome.RETRY, "no confirm") for r in results]

    async def _publish_fast(
        self,
        channel: aiormq.abc.AbstractChannel,
        exchange: str,
        messages: Sequence[WireMessage],
        sendable: list[int],
        results: list[SendResult | None],
    ) -> list[tuple[int, asyncio.Future[Any]]]:
        """Frame the messages here and write them at once (see :mod:`frames`)."""
        framed: list[tuple[str, bytes]] = []
        indexes: list[int] = []
        for index in sendable:
            message = messages[index]
            props = wire_properties(message)
            props["message_id"] = props["message_id"] or uuid.uuid4().hex  # returns are matched by it
            try:
                data = publish_frames(
                    channel.number,
                    message.exchange or exchange,
                    message.routing_key,
                    props,
                    message.body,
                    mandatory=True,
                    max_body_frame=channel.max_content_size,
                )
            except FRAMING_ERRORS as exc:  # a value AMQP cannot carry: it never will
                results[index] = SendResult(Outcome.REFUSED, f"cannot frame for AMQP: {exc}")
                continue
            framed.append((props["message_id"], data))
            indexes.append(index)
        if not framed:
            return []
        try:
            futures = await publish_batch(channel, framed)
        except (aiormq.exceptions.AMQPError, OSError, RuntimeError) as exc:
            self._channel = None
            raise ConnectionLost(f"publishing to {mask(self.url)} failed: {_reason(exc)}") from None
        return list(zip(indexes, futures, strict=True))

    def _publish(self, channel: aiormq.abc.AbstractChannel, exchange: str, message: WireMessage) -> Any:
        return channel.basic_publish(
            message.body,
            exchange=message.exchange or exchange,
            routing_key=message.routing_key,
            properties=properties(message),
            mandatory=True,
            wait=False,
        )

    async def _settle_confirms(
        self, pending: list[tuple[int, asyncio.Future[Any]]], results: list[SendResult | None]
    ) -> None:
        futures = [future for _, future in pending]
        _, waiting = await asyncio.wait(futures, timeout=self.confirm_timeout)
        if waiting:
            for future in waiting:
                future.cancel()
            await asyncio.gather(*waiting, return_exceptions=True)
            await self._drop()  # a confirm may still be on its way: start afresh, resend the lot
            raise ConnectionLost(
                f"{len(waiting)} publish confirm(s) from {mask(self.url)} did not come within "
                f"{self.confirm_timeout:g}s (broker blocked or unreachable)"
            )
        for index, future in pending:
            results[index] = self._outcome(future)

    def _outcome(self, future: asyncio.Future[Any]) -> SendResult:
        error = future.exception()
        if error is None:
            return DELIVERED
        if isinstance(error, aiormq.exceptions.PublishError):
            frame = error.frame
            return SendResult(
                Outcome.RETRY,
                f"unroutable: no queue bound for {frame.routing_key!r} on exchange "
                f"{frame.exchange!r} ({frame.reply_text})",
            )
        if isinstance(error, aiormq.exceptions.DeliveryError):
            return SendResult(Outcome.RETRY, "the broker nacked it")
        if isinstance(error, aiormq.exceptions.ChannelNotFoundEntity):
            self._channel = None
            return SendResult(Outcome.RETRY, f"{_entity(error)} does not exist (404 NOT_FOUND)")
        self._channel = None
        raise ConnectionLost(f"publishing to {mask(self.url)} failed: {_reason(error)}")

    # -- checking (tidings doctor) ----------------------------------------------------

    async def verify(self, topology: Topology) -> Findings:
        """Queues, bindings and permissions the topology needs, checked without creating anything."""
        return await verify(self, topology, self.management_url)

    async def enqueue(self, queue: str, messages: Sequence[WireMessage]) -> list[SendResult]:
        """``messages`` into ``queue`` alone (the default exchange), confirmed; their topics kept.

        An operator's replay to one consumer's queue (``tidings replay --to-queue``): the
        consumer reads the topic from the routing-key header, as after a retry.
        """
        from dataclasses import replace

        from tidings.textheaders import to_text
        from tidings.transports.amqp.consume import moved_from

        direct = [
            replace(
                m,
                headers=to_text({**m.headers, **moved_from(m)}),
                routing_key=queue,
                exchange="",
                cc=[],
            )
            for m in messages
        ]
        return await self.send("", direct)

    def dead_letters(self) -> AmqpDeadLetters:
        """Consumers' dead letters for an operator (``tidings dead``; :mod:`.dead`)."""
        from tidings.transports.amqp.dead import AmqpDeadLetters

        return AmqpDeadLetters(self)

    # -- consuming --------------------------------------------------------------------

    def consume(self, queue: QueueSpec, *, prefetch: int) -> AsyncIterator[Delivery]:
        return consume(self, queue, prefetch)


def retry_queue(queue: str, delay: int) -> str:
    return f"{queue}.retry.{delay}s"


def wire_properties(message: WireMessage) -> dict[str, Any]:
    """The AMQP basic properties of ``message`` (wire names: ``type``, not ``message_type``)."""
    extra = message.properties
    return {
        "content_type": message.content_type,
        "content_encoding": message.content_encoding,
        "headers": {**message.headers, "CC": message.cc} if message.cc else message.headers or None,
        "delivery_mode": extra.get("delivery_mode", 2),
        "priority": message.priority,
        "correlation_id": extra.get("correlation_id"),
        "reply_to": extra.get("reply_to"),
        "expiration": extra.get("expiration"),
        "message_id": message.message_id,
        "timestamp": message.timestamp,
        "type": extra.get("type"),
        "user_id": extra.get("user_id"),
        "app_id": extra.get("app_id"),
    }


def properties(message: WireMessage) -> spec.Basic.Properties:
    """:func:`wire_properties` as pamqp's object (aiormq's basic_publish path)."""
    props = wire_properties(message)
    props["message_type"] = props.pop("type")
    return spec.Basic.Properties(**props)


def _kind_args(queue: QueueSpec) -> dict[str, Any]:
    return {"x-queue-type": "quorum"} if queue.kind == "quorum" else {}


def _parse_url(url: str) -> URL:
    try:
        parsed = URL(url)
    except (TypeError, ValueError):
        raise ConfigError("amqp transport: the url is not a URL") from None
    if parsed.scheme not in ("amqp", "amqps") or not parsed.host:
        raise ConfigError(
            f"amqp transport: url must look like amqp://user:password@host:5672/vhost, not {mask(parsed)!r}"
        )
    return parsed


def _reason(exc: BaseException) -> str:
    args = [a for a in getattr(exc, "args", ()) if a]
    text = str(args[-1] if args else exc) or type(exc).__name__
    return text.splitlines()[0][:300]


def _entity(exc: BaseException) -> str:
    # RabbitMQ says "NOT_FOUND - no exchange 'x' in vhost '/'"
    text = _reason(exc)
    if "no exchange" in text:
        return "exchange " + text.split("no exchange", 1)[1].split(" in vhost")[0].strip()
    if "no queue" in text:
        return "queue " + text.split("no queue", 1)[1].split(" in vhost")[0].strip()
    return text


def _retrieve_error(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


#: what an exchange or a queue name may hold (the AMQP client library's rule) and how long it may be:
#: AMQP allows 255 bytes for both, the client library refuses exchange names over 127 characters
AMQP_NAME = re.compile(r"[a-zA-Z0-9-_.:@#,/+ ]*")
AMQP_NAME_BYTES = 255
AMQP_EXCHANGE_CHARS = 127


def amqp_name_problem(name: str, kind: str = "queue") -> str | None:
    """Why ``name`` cannot name a ``kind`` ("exchange" or "queue") over AMQP (None: it can)."""
    if len(name.encode()) > AMQP_NAME_BYTES:
        return f"{len(name.encode())} bytes, over AMQP's {AMQP_NAME_BYTES}"
    if kind == "exchange" and len(name) > AMQP_EXCHANGE_CHARS:
        return f"{len(name)} characters, over the {AMQP_EXCHANGE_CHARS} an exchange name may have"
    if not AMQP_NAME.fullmatch(name):
        return "only letters, digits, spaces and - _ . : @ # , / + can be in it"
    return None
