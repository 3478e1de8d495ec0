"""The STOMP transport: persistent sends confirmed by receipts, on RabbitMQ's STOMP plugin.

Sending: each SEND is ``persistent`` and asks for a receipt; RabbitMQ answers a receipt once
the message is confirmed (the STOMP adapter turns publisher confirms on for the connection),
so a receipt is the confirm. A batch's frames are written together and their receipts awaited
together (many outstanding). An ``ERROR`` frame that names a receipt fails that message; one
that does not closes the connection and fails the batch (``TransportError``: nothing of it
counts as delivered, the dispatcher sends it again). Heart-beats notice a dead connection; the
next send reconnects.

RabbitMQ's STOMP adapter publishes without ``mandatory``: a message that no queue is bound for
is confirmed and dropped, so a send cannot be reported unroutable. Declare the consuming queues
before publishing (``tidings consume`` does), as with any topic exchange seen by a plain client.

Queues are RabbitMQ's own, declared over AMQP 0-9-1 exactly as the AMQP transport declares them
(the retry queues ``<queue>.retry.<n>s`` and ``<queue>.dead`` included), so STOMP and AMQP
consumers can share a service's queue.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import stomp
from stomp.exception import ConnectFailedException, NotConnectedException

from tidings.errors import ConfigError, ConnectionLost, TransportError
from tidings.redact import mask_url
from tidings.retry import HandBack
from tidings.textheaders import to_text
from tidings.transport import (
    DELIVERED,
    Delivery,
    ExchangeSpec,
    Findings,
    Outcome,
    QueueSpec,
    SendResult,
    Topology,
    WireMessage,
)
from tidings.transports.amqp import DEFAULT_MAX_MESSAGE_BYTES
from tidings.transports.stomp import DEFAULT_URL, Address
from tidings.transports.stomp.frames import reserved_headers, send_headers

if TYPE_CHECKING:
    from tidings.transports.amqp.transport import AmqpTransport
    from tidings.transports.stomp.dead import StompDeadLetters

log = logging.getLogger(__name__)

#: what a link hands its reader when the connection is gone
LOST = object()


class Link(stomp.ConnectionListener):
    """One STOMP connection. stomp.py reads frames on a thread of its own; they reach the event
    loop through ``call_soon_threadsafe``. Writes (sends, acks) go through one thread of ours:
    stomp.py writes with a blocking ``sendall``, which must not stall the loop."""

    def __init__(self, transport: StompTransport, on_frame: Callable[[Any], None] | None = None) -> None:
        self.transport = transport
        self.loop = asyncio.get_running_loop()
        self.on_frame = on_frame
        #: receipt id → the batch waiting for it and its place there (touched from both threads:
        #: single dict operations, which the interpreter keeps whole)
        self.receipts: dict[str, tuple[Batch, int]] = {}
        self.connection: stomp.Connection12 | None = None
        #: counts connections: an ack id from an earlier one must never be sent on a later one
        self.generation = 0
        #: an ack or a nack could not be written: the connection is gone, whatever stomp.py says
        self.failed_a_write = False
        self.refusal = ""
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="tidings-stomp")

    @property
    def connected(self) -> bool:
        return self.connection is not None and self.connection.is_connected()

    async def write(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await self.loop.run_in_executor(self._writer, lambda: fn(*args, **kwargs))

    async def open(self) -> None:
        t = self.transport
        address = t.address
        connection = stomp.Connection12(
            [(address.host, address.port)],
            heartbeats=(int(t.heartbeat * 1000), int(t.heartbeat * 1000)),
            vhost=address.vhost,
            auto_decode=False,
            reconnect_attempts_max=1,
            timeout=t.connect_timeout,
        )
        if address.tls:
            connection.set_ssl(
                for_hosts=[(address.host, address.port)],
                key_file=t.tls[2],
                cert_file=t.tls[1],
                ca_certs=t.tls[0],
            )
        connection.set_listener("tidings", self)
        self.refusal = ""
        try:
            await asyncio.wait_for(
                self.write(
                    _connect_and_wait, connection, address.username, address.password, t.connect_timeout
                ),
                t.connect_timeout + 1,
            )
        except (ConnectFailedException, NotConnectedException, OSError, TimeoutError) as exc:
            connection.remove_listener("tidings")
            # ends stomp.py's wait for CONNECTED on our writer thread (else it waits for ever,
            # and the process with it) and its socket
            connection.transport.disconnect_socket()
            raise self._not_connected(exc) from None
        self.connection = connection
        self.generation += 1

    def _not_connected(self, exc: BaseException) -> TransportError:
        url = self.transport.url
        if self.refusal:
            return TransportError(f"STOMP broker at {url} refused to connect: {self.refusal}")
        if isinstance(exc, TimeoutError) or self.transport.address.port == 5672:
            return TransportError(
                f"something answered at {url} but no STOMP CONNECTED frame came within "
                f"{self.transport.connect_timeout:g} s: is it STOMP's port "
                "(RabbitMQ's plugin listens on 61613)?"
            )
        return TransportError(
            f"no STOMP broker answered at {url} "
            "(on RabbitMQ the plugin must be on: rabbitmq-plugins enable rabbitmq_stomp)"
        )

    async def close(self) -> None:
        connection, self.connection = self.connection, None
        if connection is not None and connection.is_connected():
            try:
                await asyncio.wait_for(self.write(connection.disconnect), 5)
            except (TimeoutError, OSError, NotConnectedException):
                pass
        self._fail_receipts("the connection was closed")
        self._writer.shutdown(wait=False)

    # -- stomp.py's receiver thread ------------------------------------------------------

    def on_error(self, frame: Any) -> None:
        what = f"{frame.headers.get('message', 'ERROR')}: {_text(frame.body)}".strip(": ")
        waiting = self.receipts.pop(frame.headers.get("receipt-id", ""), None)
        if waiting is not None:
            batch, index = waiting
            batch.answer(index, what)
        else:  # the broker closes the connection after most such ERRORs; not after every one
            self.refusal = what
            log.warning("the STOMP broker at %s answered: %s", self.transport.url, what)

    def on_receipt(self, frame: Any) -> None:
        waiting = self.receipts.pop(frame.headers.get("receipt-id", ""), None)
        if waiting is not None:
            batch, index = waiting
            batch.answer(index, "")

    def on_message(self, frame: Any) -> None:
        if self.on_frame is not None:
            _call(self.loop, self.on_frame, (self.generation, frame.headers, frame.body))

    def on_disconnected(self) -> None:
        self._fail_receipts(self.refusal or "the connection was lost")
        if self.on_frame is not None:
            _call(self.loop, self.on_frame, LOST)

    def on_heartbeat_timeout(self) -> None:
        self.on_disconnected()

    def _fail_receipts(self, why: str) -> None:
        receipts, self.receipts = self.receipts, {}
        for batch in {batch for batch, _ in receipts.values()}:
            batch.fail(why)

    # -- the event loop's side ------------------------------------------------------------

    async def send_all(self, frames: list[tuple[str, bytes, dict[str, str]]]) -> Batch:
        """Write SEND frames, each asking for a receipt; the batch that collects the receipts."""
        connection = self.connection
        if connection is None:
            raise ConnectionLost("not connected")
        batch = Batch(self.loop, len(frames))
        for index, (_, _, headers) in enumerate(frames):
            receipt = uuid.uuid4().hex
            headers["receipt"] = receipt
            self.receipts[receipt] = (batch, index)

        def write() -> None:
            for destination, body, headers in frames:
                connection.send(destination, body, headers=headers)

        try:
            await self.write(write)
        except (NotConnectedException, OSError) as exc:
            self._fail_receipts(f"the connection was lost ({exc})")
        return batch


class Batch:
    """The receipts of one batch of SEND frames: answered on stomp.py's thread, handed to the event
    loop once, when the last is in (not one wake-up per frame)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, count: int) -> None:
        self.loop = loop
        #: per frame: None (no answer yet), "" (a receipt) or what an ERROR frame said
        self.answers: list[str | None] = [None] * count
        self.lost = ""
        self.done: asyncio.Future[None] = loop.create_future()
        self._left = count
        self._lock = threading.Lock()
        if count == 0:
            self.done.set_result(None)

    def answer(self, index: int, error: str) -> None:
        with self._lock:
            if self.answers[index] is not None:
                return
            self.answers[index] = error
            self._left -= 1
            finished = self._left == 0
        if finished:
            _call(self.loop, _finish, self.done)

    def fail(self, why: str) -> None:
        with self._lock:
            if self._left == 0:
                return
            self.lost = why
        _call(self.loop, _finish, self.done)


def _call(loop: asyncio.AbstractEventLoop, fn: Callable[..., Any], *args: Any) -> None:
    """From stomp.py's thread into the loop; a loop already closed (the process ends) hears nothing."""
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:
        pass


def _finish(done: asyncio.Future[None]) -> None:
    if not done.done():
        done.set_result(None)


class StompTransport:
    """Transport ``stomp``; its options are :class:`~tidings.transports.stomp.StompSettings`."""

    kind = "stomp"
    acknowledged = True

    def __init__(
        self,
        url: str = DEFAULT_URL,
        destination: str = "exchange",
        heartbeat: float = 10.0,
        receipt_timeout: float = 30.0,
        connect_timeout: float = 10.0,
        retry_delays: Sequence[int] = (1, 5, 25, 125, 625),
        declare: bool = True,
        amqp_url: str | None = None,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self.address = Address.parse(url)
        self.max_message_bytes = int(max_message_bytes)
        self.url = mask_url(url)
        self.destination = destination
        self.heartbeat, self.receipt_timeout, self.connect_timeout = (
            heartbeat,
            receipt_timeout,
            connect_timeout,
        )
        self.retry_delays = sorted({int(d) for d in retry_delays}) or [1]
        self.declares = declare
        self._amqp_url = amqp_url or self.address.amqp_url()
        self.tls = (ca_file, cert_file, key_file)
        self._link: Link | None = None
        self._connecting: asyncio.Lock | None = None
        self.declared = Topology()
        #: the consumers' connections, closed with the transport
        self.consumer_links: set[Link] = set()
        self.closed = False
        #: the AMQP side's connection that puts retries and dead letters into their queues
        self._forwarder: AmqpTransport | None = None
        self.hand_back = HandBack()

    # -- connection -------------------------------------------------------------------

    async def connect(self) -> None:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            self.closed = False
            if self._link is not None and self._link.connected:
                return
            if self._link is not None:
                await self._link.close()
            link = Link(self)
            await link.open()
            self._link = link

    async def close(self) -> None:
        self.closed = True
        for consumer in list(self.consumer_links):
            await consumer.close()
        link, self._link = self._link, None
        if link is not None:
            await link.close()
        forwarder, self._forwarder = self._forwarder, None
        if forwarder is not None:
            await forwarder.close()

    # -- topology ----------------------------------------------------------------------

    def exchange_for(self, exchange: str) -> str:
        """The exchange sends really go to: ``/topic/`` destinations are RabbitMQ's amq.topic."""
        return "amq.topic" if self.destination == "topic" else exchange

    def retry_queue_for(self, queue: str, delay: float) -> tuple[str, int]:
        chosen = self.retry_wait(delay)
        return f"{queue}.retry.{chosen}s", chosen

    def retry_wait(self, delay: float) -> int:
        """How long a retry asked to wait ``delay`` s really waits: its retry queue's delay."""
        return next((d for d in self.retry_delays if d >= delay), self.retry_delays[-1])

    def amqp_side(self) -> AmqpTransport:
        """The same broker over AMQP 0-9-1 at ``amqp_url``: what STOMP cannot do (declare, check,
        put a copy into a queue that must exist, read dead letters) is done there."""
        from tidings.transports.amqp.transport import AmqpTransport

        return AmqpTransport(
            self._amqp_url, retry_delays=self.retry_delays, connect_timeout=self.connect_timeout
        )

    def _as_amqp(self, topology: Topology) -> Topology:
        """The topology as the AMQP side sees it: exchanges named as STOMP destinations map them."""
        return Topology(
            [
                ExchangeSpec(
                    self.exchange_for(e.name), e.type, e.durable, e.passive or e.name.startswith("amq.")
                )
                for e in topology.exchanges
            ],
            [
                QueueSpec(
                    q.name,
                    [type(b)(self.exchange_for(b.exchange), b.pattern) for b in q.bindings],
                    q.durable,
                    q.kind,
                    q.arguments,
                )
                for q in topology.queues
            ],
        )

    async def declare(self, topology: Topology) -> None:
        """Declare over AMQP 0-9-1 what the AMQP transport would: the same queues, shareable."""
        for queue in topology.queues:
            check_queue_name(queue.name)
        if not self.declares:
            return
        amqp = self.amqp_side()
        try:
            await amqp.connect()
            await amqp.declare(self._as_amqp(topology))
        except TransportError as exc:
            raise TransportError(f"declaring for STOMP over AMQP: {exc}") from None
        finally:
            await amqp.close()
        self.declared = Topology(
            [*self.declared.exchanges, *topology.exchanges], [*self.declared.queues, *topology.queues]
        )

    # -- sending ----------------------------------------------------------------------

    def destination_of(self, exchange: str, message: WireMessage) -> str:
        key = in_destination(message.routing_key)
        if self.destination == "topic":
            return f"/topic/{key}"
        return f"/exchange/{in_destination(message.exchange or exchange)}/{key}"

    async def send(self, exchange: str, messages: Sequence[WireMessage]) -> list[SendResult]:
        frames, results = [], []
        for message in messages:
            headers = send_headers(message)
            refused = _refusal(message, exchange, headers, self.max_message_bytes)
            results.append(refused)
            if refused is None:
                frames.append((self.destination_of(exchange, message), message.body, headers))
        answers = await self.send_frames(frames)
        answered = iter(answers)
        return [result if result is not None else next(answered) for result in results]

    async def send_frames(self, frames: list[tuple[str, bytes, dict[str, str]]]) -> list[SendResult]:
        """Frames written together, their receipts awaited together."""
        if not frames:
            return []
        await self.connect()
        assert self._link is not None
        batch = await self._link.send_all(frames)
        try:
            await asyncio.wait_for(asyncio.shield(batch.done), self.receipt_timeout)
        except TimeoutError:
            pass
        if batch.lost:
            raise TransportError(f"STOMP connection to {self.url} was lost while sending: {batch.lost}")
        return [_result(answer, self.receipt_timeout) for answer in batch.answers]

    async def forward(self, queue: str, message: WireMessage, extra: dict[str, Any]) -> None:
        """Put a confirmed copy into one of RabbitMQ's queues (a retry queue, the dead letters).

        Over the AMQP side, published ``mandatory``: RabbitMQ's STOMP adapter confirms a SEND to a
        queue that does not exist and drops it — and the original, acked after it, would be lost.
        A copy no queue takes fails here, and the original stays on its queue.
        """
        if self._forwarder is None:
            self._forwarder = self.amqp_side()
        copy = replace(
            message, headers=to_text({**message.headers, **extra}), routing_key=queue, exchange="", cc=[]
        )
        (result,) = await self._forwarder.send("", [copy])
        if result.outcome is not Outcome.DELIVERED:
            raise TransportError(f"moving message {message.message_id} to {queue} failed: {result.reason}")

    def dead_letters(self) -> StompDeadLetters:
        """Consumers' dead letters (``tidings dead``): RabbitMQ's, over AMQP (:mod:`.dead`)."""
        from tidings.transports.stomp.dead import StompDeadLetters

        return StompDeadLetters(self._amqp_url, self.retry_delays, self.connect_timeout)

    # -- consuming and the doctor --------------------------------------------------------

    def consume(self, queue: QueueSpec, *, prefetch: int) -> AsyncIterator[Delivery]:
        from tidings.transports.stomp.consume import consume

        return consume(self, queue, prefetch)

    async def verify(self, topology: Topology) -> Findings:
        """Connecting over STOMP, and the AMQP side's checks of queues and bindings."""
        found = Findings()
        try:
            await self.connect()
        except TransportError as exc:
            found.problems.append(str(exc))
            return found
        amqp = self.amqp_side()
        try:
            await amqp.connect()
            return await amqp.verify(self._as_amqp(topology))
        except TransportError as exc:
            found.problems.append(f"declaring for STOMP over AMQP: {exc}")
            return found
        finally:
            await amqp.close()


def _connect_and_wait(connection: stomp.Connection12, username: str, password: str, timeout: float) -> None:
    """Connect and wait for CONNECTED. stomp.py's own ``wait=True`` waits without end; its
    ``wait_for_connection(timeout)`` looks every tenth of it whether it should stop waiting."""
    connection.connect(username, password, wait=False)
    connection.transport.wait_for_connection(timeout)


def _result(answer: str | None, timeout: float) -> SendResult:
    if answer == "":
        return DELIVERED
    if answer is None:
        return SendResult(Outcome.RETRY, f"no receipt within {timeout:g}s")
    return SendResult(Outcome.RETRY, f"the broker refused it: {answer}")


def _refusal(message: WireMessage, exchange: str, headers: dict[str, str], limit: int) -> SendResult | None:
    """Why a message can never travel as a STOMP frame, or None. (RabbitMQ answers some of
    these with an ERROR that names no receipt, or by closing the connection: the whole batch
    would fail, again and again, for one message that can never go.)"""
    if len(message.body) > limit:
        return SendResult(
            Outcome.REFUSED,
            f"{len(message.body)} bytes is over the broker's limit of {limit}",
        )
    reserved = reserved_headers(message)
    if reserved:
        shown = ", ".join(repr(name) for name in reserved)
        return SendResult(Outcome.REFUSED, f"header(s) {shown} cannot travel in a STOMP frame")
    for what, name in (("routing key", message.routing_key), ("exchange", message.exchange or exchange)):
        problem = destination_problem(name)
        if problem:
            return SendResult(Outcome.REFUSED, f"{what} {name!r}: {problem}")
    cut = sorted(name for name, value in headers.items() if "\0" in value)
    if cut:  # a frame ends at a NUL: the rest of the headers, and the body, would be lost
        shown = ", ".join(cut)
        return SendResult(Outcome.REFUSED, f"header(s) {shown}: a NUL character cannot be in them")
    if message.cc:
        return SendResult(
            Outcome.REFUSED, "CC routing keys cannot travel over STOMP (use the amqp transport)"
        )
    return None


def in_destination(name: str) -> str:
    """A name as one part of a destination: RabbitMQ reads "%2F" there as a '/' (and nothing else)."""
    return name.replace("/", "%2F")


def destination_problem(name: str) -> str | None:
    """Why ``name`` cannot be one part of a STOMP destination (None: it can)."""
    if "%2F" in name:  # RabbitMQ would read it as '/', and '%' has no escape of its own
        return "'%2F' cannot be in a STOMP destination (RabbitMQ reads it as '/')"
    if "\0" in name:
        return "a NUL character cannot be in a STOMP destination"
    return None


def _text(body: Any) -> str:
    raw = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body)
    return " ".join(raw.split())


def check_queue_name(name: str) -> None:
    """A queue is subscribed as ``/amq/queue/<name>`` (a '/' in it written as "%2F")."""
    problem = destination_problem(name)
    if problem:
        raise ConfigError(f"queue name {name!r} cannot be used over STOMP: {problem}")
    for form in ("/amq/queue/", "/queue/", "/topic/", "/exchange/"):
        if name.startswith(form):  # it would make a queue of that very name, which no peer reads
            bare = name.removeprefix(form).split("/")[0] or "NAME"
            raise ConfigError(
                f"queue name {name!r} is a STOMP destination: name the queue alone ({bare!r}); "
                "tidings subscribes to /amq/queue/<name> itself"
            )
