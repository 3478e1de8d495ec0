"""The conformance suite every transport runs.

A transport's test module subclasses :class:`TransportConformance` and provides
two fixtures: ``make_transport`` (an async factory returning a *connected* new
transport on the same broker, so tests can simulate a second process or a
crash) and ``exchange`` (a fresh exchange name). Every test builds its own
uniquely named queues, so the suite runs against a shared broker.

Transports without acknowledgements (ZeroMQ) set ``acknowledged = False``; the
tests that need a broker to keep or return a message then assert that the
transport says so instead of silently passing.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime

import orjson
import pytest

from tidings.bus import Bus
from tidings.errors import TransportError
from tidings.retry import HAND_BACK_BASE
from tidings.transport import (
    ATTEMPTS_HEADER,
    QUEUE_HEADER,
    REASON_HEADER,
    Binding,
    Delivery,
    ExchangeSpec,
    Outcome,
    QueueSpec,
    Topology,
    Transport,
    WireMessage,
)

MakeTransport = Callable[[], Awaitable[Transport]]
TIMEOUT = 10.0


def message(key: str, body: bytes = b'{"n": 1}', **kw: object) -> WireMessage:
    return WireMessage(routing_key=key, body=body, message_id=str(uuid.uuid4()), **kw)  # type: ignore[arg-type]


async def take(transport: Transport, queue: QueueSpec, count: int, *, prefetch: int = 50) -> list[Delivery]:
    """Consume and ack ``count`` deliveries, failing after TIMEOUT."""
    stream = transport.consume(queue, prefetch=prefetch)
    got: list[Delivery] = []
    try:
        while len(got) < count:
            delivery = await asyncio.wait_for(anext(stream), TIMEOUT)  # type: ignore[arg-type]
            await delivery.ack()
            got.append(delivery)
    finally:
        await stream.aclose()  # type: ignore[attr-defined]
    return got


async def take_from(bus: Bus, transport: str, queue: str, count: int) -> list[Delivery]:
    """Consume and ack ``count`` deliveries of ``queue`` on the bus's transport ``transport``."""
    connected = bus.make_transport(transport)
    await connected.connect()
    try:
        return await take(connected, QueueSpec(queue), count)
    finally:
        await connected.close()


async def hold(stream: AsyncIterator[Delivery], count: int) -> list[Delivery]:
    """The next ``count`` deliveries of an open stream, unsettled."""
    return [await asyncio.wait_for(anext(stream), TIMEOUT) for _ in range(count)]


async def refused_retry_comes_back(
    delivery: Delivery, stream: AsyncIterator[Delivery], refused_at: list[float], match: str | None = None
) -> Delivery:
    """Retry ``delivery`` whose copy will be refused (``refused_at`` notes when) and take it
    again from ``stream``: the retry fails, the message comes back redelivered, and not at once
    after the refusal (handed back straight away, its handler would run in a loop)."""
    retrying = asyncio.create_task(delivery.retry(1, "try 1"))
    (again,) = await hold(stream, 1)
    came_back_at = time.monotonic()
    with pytest.raises(TransportError, match=match):
        await retrying
    assert (again.message.message_id, again.redelivered) == (delivery.message.message_id, True)
    assert came_back_at - refused_at[0] >= HAND_BACK_BASE / 2
    return again


async def nothing_arrives(transport: Transport, queue: QueueSpec, within: float = 0.5) -> bool:
    """True when no delivery comes from ``queue`` within ``within`` seconds."""
    stream = transport.consume(queue, prefetch=1)
    try:
        delivery = await asyncio.wait_for(anext(stream), within)  # type: ignore[arg-type]
    except TimeoutError:
        return True
    finally:
        await stream.aclose()  # type: ignore[attr-defined]
    await delivery.release()
    return False


class TransportConformance:
    #: False for transports with no broker-side acknowledgement (ZeroMQ)
    acknowledged = True
    #: False where the broker cannot route one message by extra (CC) keys (ZeroMQ filters on one topic)
    routes_cc = True
    #: False where nothing routes: every message goes to every reader (a file)
    routes = True
    #: False for a write-only transport (a file): what it holds is read back, never consumed
    consumes = True
    #: False where a JSON body is kept as JSON, not as the same bytes (a file's JSON lines)
    keeps_body_bytes = True
    #: False where the broker keeps a message whether or not a queue wants it (a Kafka topic)
    knows_unroutable = True
    #: False where "redelivered" may also be said of a first delivery (Kafka cannot tell; it says
    #: "maybe" for what was published before the consumer joined), never the other way round
    exact_redelivery = True

    def needs_a_broker_that_keeps_messages(self, why_not: str) -> None:
        """Mark the test an expected failure (never a pass) where nothing keeps or hands back messages."""
        if not self.acknowledged:
            pytest.xfail(why_not)
        if not self.consumes:
            pytest.xfail("write-only: nothing consumes from it")

    async def take(
        self, transport: Transport, queue: QueueSpec, count: int, *, prefetch: int = 50
    ) -> list[Delivery]:
        """Read back ``count`` messages of ``queue``: consume and ack (a write-only one reads its medium)."""
        return await take(transport, queue, count, prefetch=prefetch)

    @pytest.fixture
    async def transport(self, make_transport: MakeTransport) -> AsyncIterator[Transport]:
        t = await make_transport()
        yield t
        await t.close()

    @pytest.fixture
    def unique(self) -> str:
        return f"conf-{uuid.uuid4().hex[:10]}"

    async def declare(self, transport: Transport, exchange: str, name: str, *patterns: str) -> QueueSpec:
        queue = QueueSpec(name, [Binding(exchange, p) for p in patterns])
        await transport.declare(Topology([ExchangeSpec(exchange)], [queue]))
        return queue

    async def test_round_trip_keeps_every_field(
        self, transport: Transport, exchange: str, unique: str
    ) -> None:
        queue = await self.declare(transport, exchange, unique, "kcidb.#")
        sent = message(
            "kcidb.checkout.new",
            b'{"id": "x"}',
            headers={"a": "b", "n": 3, "t": True},
            content_type="application/json",
            timestamp=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        )
        assert (await transport.send(exchange, [sent]))[0].outcome is Outcome.DELIVERED
        (got,) = await self.take(transport, queue, 1)
        assert got.message.routing_key == sent.routing_key
        if self.keeps_body_bytes:
            assert got.message.body == sent.body
        else:
            assert orjson.loads(got.message.body) == orjson.loads(sent.body)
        assert got.message.message_id == sent.message_id
        assert got.message.content_type == "application/json"
        assert {k: got.message.headers[k] for k in sent.headers} == sent.headers
        assert got.message.timestamp is not None
        assert abs((got.message.timestamp - sent.timestamp).total_seconds()) < 1  # type: ignore[operator]
        assert got.attempt == 1

    async def test_routes_by_topic_pattern(self, transport: Transport, exchange: str, unique: str) -> None:
        if not self.routes:
            pytest.xfail("nothing routes: every message goes to every reader")
        one_word = await self.declare(transport, exchange, f"{unique}.star", "a.*")
        any_words = await self.declare(transport, exchange, f"{unique}.hash", "a.#")
        results = await transport.send(exchange, [message(k) for k in ("a", "a.b", "a.b.c", "b.a")])
        # "b.a" matches no binding: unroutable where the broker can tell, sent into the void where not
        last = Outcome.RETRY if self.acknowledged and self.knows_unroutable else Outcome.DELIVERED
        assert [r.outcome for r in results] == [Outcome.DELIVERED] * 3 + [last]
        assert sorted(d.message.routing_key for d in await self.take(transport, one_word, 1)) == ["a.b"]
        got = await self.take(transport, any_words, 3)
        assert sorted(d.message.routing_key for d in got) == ["a", "a.b", "a.b.c"]

    async def test_queue_matched_by_several_bindings_gets_one_copy(
        self, transport: Transport, exchange: str, unique: str
    ) -> None:
        if not self.routes:
            pytest.xfail("nothing routes: every message goes to every reader")
        queue = await self.declare(transport, exchange, unique, "x.#", "#.y", "x.y")
        await transport.send(exchange, [message("x.y"), message("x.z")])
        got = await self.take(transport, queue, 2)
        assert sorted(d.message.routing_key for d in got) == ["x.y", "x.z"]
        if self.acknowledged and self.consumes:
            assert await nothing_arrives(transport, queue)

    async def test_cc_keys_route_one_copy(self, transport: Transport, exchange: str, unique: str) -> None:
        if not self.routes_cc or not self.routes:
            pytest.xfail("this transport routes by one topic only; CC keys are not carried")
        queue = await self.declare(transport, exchange, unique, "route.a", "route.b")
        sent = message("primary.task", cc=["route.a", "route.b"])
        assert (await transport.send(exchange, [sent]))[0].outcome is Outcome.DELIVERED
        (got,) = await self.take(transport, queue, 1)
        assert got.message.message_id == sent.message_id
        if self.acknowledged and self.consumes:
            assert await nothing_arrives(transport, queue)

    async def test_unroutable_is_never_reported_delivered(
        self, transport: Transport, exchange: str, unique: str
    ) -> None:
        if not self.acknowledged or not self.routes:
            pytest.xfail("this transport cannot know whether anyone received a message")
        if not self.knows_unroutable:
            pytest.xfail("the broker keeps every message for whoever reads it later")
        await self.declare(transport, exchange, unique, "bound.key")
        results = await transport.send(exchange, [message("bound.key"), message("nobody.listens")])
        assert results[0].outcome is Outcome.DELIVERED
        assert results[1].outcome is Outcome.RETRY
        assert "unroutable" in results[1].reason

    async def test_order_within_a_queue(self, transport: Transport, exchange: str, unique: str) -> None:
        queue = await self.declare(transport, exchange, unique, "o.#")
        await transport.send(exchange, [message(f"o.{i}") for i in range(50)])
        got = await self.take(transport, queue, 50, prefetch=10)
        assert [d.message.routing_key for d in got] == [f"o.{i}" for i in range(50)]

    async def test_declare_is_idempotent(self, transport: Transport, exchange: str, unique: str) -> None:
        queue = await self.declare(transport, exchange, unique, "i.#")
        await self.declare(transport, exchange, unique, "i.#")
        await transport.send(exchange, [message("i.1")])
        assert len(await self.take(transport, queue, 1)) == 1

    async def test_unacked_message_comes_back_after_a_crash(
        self, make_transport: MakeTransport, exchange: str, unique: str
    ) -> None:
        self.needs_a_broker_that_keeps_messages("no acknowledgement: an unhandled message is gone")
        first = await make_transport()
        queue = await self.declare(first, exchange, unique, "c.#")
        await first.send(exchange, [message("c.1")])
        stream = first.consume(queue, prefetch=1)
        (delivery,) = await hold(stream, 1)
        assert delivery.attempt == 1
        if self.exact_redelivery:
            assert not delivery.redelivered
        await self.crash(first)
        second = await make_transport()
        try:
            (again,) = await self.take(second, queue, 1)
            assert again.message.message_id == delivery.message.message_id
            # it says it was handed out before; whether a handler died on it is the consumer
            # runtime's journal's to say (a prefetched message was never started), so no try is counted
            assert again.redelivered
            assert again.attempt == 1
        finally:
            await second.close()
            await stream.aclose()  # type: ignore[attr-defined]

    async def crash(self, transport: Transport) -> None:
        """Lose a consumer without settling (its stream is never closed); override to do it harder."""
        await transport.close()

    async def test_ack_removes_for_good(self, transport: Transport, exchange: str, unique: str) -> None:
        queue = await self.declare(transport, exchange, unique, "k.#")
        await transport.send(exchange, [message("k.1")])
        await self.take(transport, queue, 1)
        if self.acknowledged and self.consumes:
            assert await nothing_arrives(transport, queue)

    async def test_retry_comes_back_after_the_delay_with_the_count(
        self, transport: Transport, exchange: str, unique: str
    ) -> None:
        self.needs_a_broker_that_keeps_messages("no broker to keep a message for a later retry")
        queue = await self.declare(transport, exchange, unique, "r.#")
        await transport.send(exchange, [message("r.1")])
        stream = transport.consume(queue, prefetch=1)
        (first,) = await hold(stream, 1)
        await first.retry(1.0, "try later")
        await stream.aclose()  # type: ignore[attr-defined]
        start = asyncio.get_running_loop().time()
        (second,) = await self.take(transport, queue, 1)
        assert second.message.message_id == first.message.message_id
        assert second.attempt == 2
        assert asyncio.get_running_loop().time() - start >= 0.8

    async def test_retry_carries_the_attempts_it_is_given(
        self, transport: Transport, exchange: str, unique: str
    ) -> None:
        self.needs_a_broker_that_keeps_messages("no broker to keep a message for a later retry")
        queue = await self.declare(transport, exchange, unique, "rr.#")
        await transport.send(exchange, [message("rr.1")])
        stream = transport.consume(queue, prefetch=1)
        (first,) = await hold(stream, 1)
        await first.retry(0.0, "the runtime counted deaths too", attempts=4)
        await stream.aclose()  # type: ignore[attr-defined]
        (second,) = await self.take(transport, queue, 1)
        assert second.attempt == 5
        if self.exact_redelivery:
            assert not second.redelivered

    async def test_reject_moves_to_the_dead_letter_queue(
        self, transport: Transport, exchange: str, unique: str
    ) -> None:
        self.needs_a_broker_that_keeps_messages("no broker to keep dead letters")
        queue = await self.declare(transport, exchange, unique, "p.#")
        await transport.send(exchange, [message("p.poison"), message("p.fine")])
        stream = transport.consume(queue, prefetch=2)
        poison, fine = await hold(stream, 2)
        await poison.reject("handler raised ValueError", attempts=3)
        await fine.ack()
        await stream.aclose()  # type: ignore[attr-defined]
        dead = QueueSpec(queue.dead_letter_queue)
        (letter,) = await self.take(transport, dead, 1)
        assert letter.message.message_id == poison.message.message_id
        assert letter.message.headers[REASON_HEADER] == "handler raised ValueError"
        assert letter.message.headers[ATTEMPTS_HEADER] == 3
        assert letter.message.headers[QUEUE_HEADER] == queue.name
        assert letter.message.body == poison.message.body
        assert await nothing_arrives(transport, queue)

    async def test_release_puts_back_without_counting(
        self, transport: Transport, exchange: str, unique: str
    ) -> None:
        self.needs_a_broker_that_keeps_messages("no broker to take a message back")
        queue = await self.declare(transport, exchange, unique, "l.#")
        await transport.send(exchange, [message("l.1")])
        stream = transport.consume(queue, prefetch=1)
        (first,) = await hold(stream, 1)
        await first.release()
        await stream.aclose()  # type: ignore[attr-defined]
        (again,) = await self.take(transport, queue, 1)
        assert again.message.message_id == first.message.message_id
        assert again.attempt == 1

    async def test_prefetch_bounds_unsettled_deliveries(
        self, transport: Transport, exchange: str, unique: str
    ) -> None:
        self.needs_a_broker_that_keeps_messages("no flow control without acknowledgements")
        queue = await self.declare(transport, exchange, unique, "f.#")
        await transport.send(exchange, [message(f"f.{i}") for i in range(10)])
        stream = transport.consume(queue, prefetch=3)
        held = await hold(stream, 3)
        more = asyncio.ensure_future(anext(stream))  # type: ignore[arg-type]
        done, _ = await asyncio.wait({more}, timeout=0.5)
        assert not done, "a fourth delivery arrived while three were unsettled"
        await held[0].ack()
        fourth = await asyncio.wait_for(more, TIMEOUT)
        assert fourth.message.routing_key == "f.3"
        for delivery in [*held[1:], fourth]:
            await delivery.ack()
        await stream.aclose()  # type: ignore[attr-defined]
