"""Model-based test of the embedded broker against a small model of a durable topic broker.

Hypothesis plays random sequences — publishing, consuming, ack, retry, reject, release, lease
expiry, crashes — on the real broker and on a plain-Python model; after every step the broker's
SQLite file (read directly) must equal the model. Also the regression the model found.

Run with ``pytest -s`` to see the ``[ledger]`` line the machine prints per example.
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import tempfile
from collections import Counter
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from unittest import mock

import orjson
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tidings.transport import (
    Binding,
    ExchangeSpec,
    Outcome,
    QueueSpec,
    Topology,
    WireMessage,
)
from tidings.transports.embedded import EmbeddedDelivery, EmbeddedTransport
from tidings.transports.embedded import consume as consuming
from tidings.transports.embedded import transport as embedded

T = TypeVar("T")

# ==========================================================================================
# Part 2: the embedded broker
# ==========================================================================================

LEASE = 600.0  # fake seconds; also sets the lease renewer's *real* period (lease/3), never reached
EXCHANGE = "ex"
BINDINGS = {"q1": ["a.*"], "q2": ["a.#", "b.x"]}
#: (routing key, CC keys) -> the queues a RabbitMQ topic exchange picks, worked out by hand
ROUTES: list[tuple[str, tuple[str, ...], frozenset[str]]] = [
    ("a.x", (), frozenset({"q1", "q2"})),
    ("a.x.y", (), frozenset({"q2"})),
    ("b.x", (), frozenset({"q2"})),
    ("c.z", (), frozenset()),
    ("b.x", ("a.y",), frozenset({"q1", "q2"})),  # q2 matched twice: still one copy
    ("c.z", ("a.x.y",), frozenset({"q2"})),
]
TAKE_TIMEOUT = 5.0


class FakeTime:
    """Stands in for the ``time`` module inside the embedded broker's modules (they only call time())."""

    def __init__(self, start: float) -> None:
        self.now = start

    def time(self) -> float:
        return self.now


@dataclass
class Copy:
    """One message in one queue: the unit the broker acks, retries, rejects and releases."""

    mid: str
    queue: str
    order: int  # position in the queue (the row id order)
    visible_at: float
    state: str = "live"  # live | dead | acked
    attempts: int = 0  # tries settled (retries): a retry sets them, nothing else changes them
    leased: int = 0  # leases since the last retry; a release takes one back
    lease: str | None = None  # the consumer process that leased it last
    generation: int = 0  # a retry moves it to a new row
    dead_attempts: int = 0
    floor: int = 0  # leases last seen in the file: they may only drop through a release or a retry


@dataclass
class Stream:
    iterator: AsyncIterator[EmbeddedDelivery]
    consumer: str


@dataclass
class Held:
    """A delivery a consumer holds, with what it referred to when it was leased."""

    delivery: EmbeddedDelivery
    key: tuple[str, str]
    generation: int
    holder: str
    stream: Stream


@dataclass
class StoredRow:
    queue: str
    visible_at: float
    attempts: int
    leased: int
    lease: str | None
    mid: str
    headers: dict[str, Any]


async def _take(iterator: AsyncIterator[EmbeddedDelivery], count: int) -> list[EmbeddedDelivery]:
    return [await asyncio.wait_for(anext(iterator), TAKE_TIMEOUT) for _ in range(count)]  # type: ignore[arg-type]


class EmbeddedBrokerMachine(RuleBasedStateMachine):
    """A publisher and two consumer processes on one broker file, under a fake clock."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="tidings-model-broker-"))
        self.path = self.dir / "broker.db"
        self.clock = FakeTime(1_000_000.0)
        # the broker's sends and its leases and settles read the clock: both see the fake one
        self._patches = [mock.patch.object(module, "time", self.clock) for module in (embedded, consuming)]
        for patch in self._patches:
            patch.start()
        self.loop = asyncio.new_event_loop()
        self.copies: dict[tuple[str, str], Copy] = {}
        self.held: list[Held] = []
        self.streams: list[Stream] = []
        self.graveyard: list[EmbeddedTransport] = []  # kept alive: a new one must not reuse a token
        self.published = self.unroutable = self.crashes = 0
        self.order = 0
        self.incarnation = 0
        self._start_processes()
        self.eyes = sqlite3.connect(self.path, isolation_level=None)
        self.eyes.execute("PRAGMA query_only=1")
        queues = [QueueSpec(q, [Binding(EXCHANGE, p) for p in patterns]) for q, patterns in BINDINGS.items()]
        self._run(self.publisher.declare(Topology([ExchangeSpec(EXCHANGE)], queues)))

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def _start_processes(self) -> None:
        def connected() -> EmbeddedTransport:
            transport = EmbeddedTransport(str(self.path), lease=LEASE, poll=0.001)
            self._run(transport.connect())
            return transport

        self.incarnation += 1
        self.publisher = connected()
        self.consumers = {f"c{i}#{self.incarnation}": connected() for i in range(2)}

    def _stop_processes(self) -> None:
        """Every process dies at once: nothing settled, nothing released."""
        for transport in (self.publisher, *self.consumers.values()):
            self._run(transport.close())
            self.graveyard.append(transport)
        for stream in self.streams:  # the connection is gone: a stream's finally cannot release
            self._run(stream.iterator.aclose())  # type: ignore[attr-defined]
        self.streams.clear()
        self.held.clear()

    def teardown(self) -> None:
        self._stop_processes()
        self._run(asyncio.sleep(0))  # let cancelled lease renewers finish
        self.loop.close()
        self.eyes.close()
        for patch in self._patches:
            patch.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
        states = Counter(c.state for c in self.copies.values())
        print(
            f"[ledger] model embedded broker: published {self.published} (unroutable {self.unroutable}), "
            f"copies {len(self.copies)}, acked {states['acked']}, dead {states['dead']}, "
            f"still queued {states['live']}, crashes {self.crashes}, lost 0"
        )

    def _rows(self) -> dict[int, StoredRow]:
        rows = {}
        for row_id, queue, visible_at, attempts, leased, lease, meta in self.eyes.execute(
            "SELECT m.id, m.queue, m.visible_at, m.attempts, m.leased, m.lease, p.meta "
            "FROM messages m JOIN payloads p ON p.id = m.payload"
        ):
            fields = orjson.loads(meta)
            rows[row_id] = StoredRow(
                queue, visible_at, attempts, leased, lease, fields["message_id"], fields.get("headers", {})
            )
        return rows

    def _next_order(self) -> int:
        self.order += 1
        return self.order

    # -- rules -------------------------------------------------------------------------------

    @rule(routes=st.lists(st.integers(0, len(ROUTES) - 1), min_size=1, max_size=3))
    def publish(self, routes: list[int]) -> None:
        messages = []
        for index in routes:
            key, cc, _ = ROUTES[index]
            self.published += 1
            messages.append(WireMessage(key, b"{}", message_id=f"m{self.published}", cc=list(cc)))
        results = self._run(self.publisher.send(EXCHANGE, messages))
        for message, index, result in zip(messages, routes, results, strict=True):
            queues = ROUTES[index][2]
            expected = Outcome.DELIVERED if queues else Outcome.RETRY
            assert result.outcome is expected, f"{message.routing_key} {message.cc}: {result}"
            self.unroutable += not queues
            for queue in sorted(queues):
                mid = str(message.message_id)
                self.copies[(mid, queue)] = Copy(mid, queue, self._next_order(), self.clock.now)

    @rule(consumer=st.integers(0, 1), queue=st.sampled_from(sorted(BINDINGS)), k=st.integers(1, 4))
    def lease(self, consumer: int, queue: str, k: int) -> None:
        self._lease(sorted(self.consumers)[consumer], queue, k)

    def _lease(self, holder: str, queue: str, k: int) -> list[Held]:
        now = self.clock.now
        ready = sorted(
            (
                c
                for c in self.copies.values()
                if c.queue == queue and c.state == "live" and c.visible_at <= now
            ),
            key=lambda c: c.order,
        )[:k]
        before = self._rows()
        if not ready:  # the stream would wait for a message: do not open one
            assert not [r for r in before.values() if r.queue == queue and r.visible_at <= now]
            return []
        stream = Stream(self.consumers[holder].consume(QueueSpec(queue), prefetch=k), holder)
        self.streams.append(stream)
        taken = []
        for delivery, copy in zip(self._run(_take(stream.iterator, len(ready))), ready, strict=True):
            assert delivery.message.message_id == copy.mid, f"expected {copy.mid}, got {delivery.message}"
            # not handed out while another consumer's lease on it is running
            assert before[delivery.row_id].visible_at <= now, f"{copy.mid} was still leased"
            assert delivery.attempt == copy.attempts + 1, "the broker miscounted the attempts"
            assert delivery.redelivered == (copy.leased > 0), "handed out before, or not?"
            copy.leased += 1
            copy.lease, copy.visible_at = holder, now + LEASE
            taken.append(Held(delivery, (copy.mid, queue), copy.generation, holder, stream))
        self.held.extend(taken)
        return taken

    @precondition(lambda self: self.held)
    @rule(
        index=st.integers(0, 10**6),
        action=st.sampled_from(["ack", "retry", "reject", "release"]),
        delay=st.sampled_from([0.0, 5.0, 50.0]),
    )
    def settle(self, index: int, action: str, delay: float) -> None:
        held = self.held[index % len(self.held)]
        if self._row_reused(held):
            return  # the known bug: see test_a_stale_settle_never_touches_another_message
        self.held.remove(held)
        delivery = held.delivery
        tries = delivery.attempt + index % 3  # the runtime may count deaths on top of the broker's tries
        actions = {
            "ack": delivery.ack,
            "retry": lambda: delivery.retry(delay, "model says later", attempts=tries),
            "reject": lambda: delivery.reject("model says no"),
            "release": delivery.release,
        }
        self._run(actions[action]())
        self._settle(held, action, delay, tries)

    def _row_reused(self, held: Held) -> bool:
        """The delivery's row id now holds another message (SQLite reuses the largest rowid)."""
        row = self._rows().get(held.delivery.row_id)
        return row is not None and (row.mid, row.queue) != held.key

    def _settle(self, held: Held, action: str, delay: float, tries: int = 0) -> None:
        copy = self.copies[held.key]
        if not (copy.state == "live" and copy.generation == held.generation and copy.lease == held.holder):
            return  # its lease ran out and someone else took (or settled) it: a no-op
        now = self.clock.now
        if action == "ack":
            copy.state = "acked"
        elif action == "retry":
            copy.order, copy.generation = self._next_order(), copy.generation + 1
            copy.visible_at, copy.lease = now + delay, None
            copy.attempts, copy.leased, copy.floor = tries, 0, 0
        elif action == "reject":
            copy.state, copy.dead_attempts = "dead", held.delivery.attempt
        else:
            copy.visible_at, copy.lease = now, None
            copy.leased = copy.floor = max(copy.leased - 1, 0)

    @precondition(lambda self: self.streams)
    @rule(index=st.integers(0, 10**6))
    def consumer_shuts_down_a_stream(self, index: int) -> None:
        stream = self.streams[index % len(self.streams)]
        mine = [h for h in self.held if h.stream is stream]
        if any(self._row_reused(h) for h in mine):
            return  # the known bug again: closing would release another message
        self.streams.remove(stream)
        self._run(stream.iterator.aclose())  # type: ignore[attr-defined]
        for held in mine:  # the stream hands back what it still held
            self.held.remove(held)
            self._settle(held, "release", 0.0)

    @rule(seconds=st.sampled_from([1.0, 50.0, LEASE - 1, LEASE + 1]))
    def advance_clock(self, seconds: float) -> None:
        self.clock.now += seconds

    @rule()
    def crash(self) -> None:
        self._stop_processes()
        self.crashes += 1
        self._start_processes()

    @rule(queue=st.sampled_from(sorted(BINDINGS)))
    def everything_unacked_comes_back(self, queue: str) -> None:
        # after the longest lease (and any retry delay) every unacked message is handed out again
        self.clock.now += LEASE + 1
        live = {key for key, c in self.copies.items() if c.queue == queue and c.state == "live"}
        if live:
            taken = self._lease(sorted(self.consumers)[0], queue, len(live))
            assert {h.key for h in taken} == live

    # -- invariants ---------------------------------------------------------------------------

    @invariant()
    def each_copy_is_ready_leased_dead_or_acked(self) -> None:
        stored: dict[tuple[str, str], StoredRow] = {}
        for row in self._rows().values():
            key = (row.mid, row.queue.removesuffix(".dead"))
            assert key in self.copies, f"{key} stored in {row.queue}, never routed there"
            assert key not in stored, f"{key} stored twice"
            stored[key] = row
        for key, copy in self.copies.items():
            row = stored.get(key)
            if copy.state == "acked":
                assert row is None, f"{key} acked, still stored in {row and row.queue}"
            elif copy.state == "dead":
                assert row is not None and row.queue == f"{copy.queue}.dead", f"{key} not dead-lettered"
                assert row.headers["x-tidings-attempts"] == copy.dead_attempts
            else:
                assert row is not None and row.queue == copy.queue, f"{key} lost from {copy.queue}"
                assert (row.attempts, row.leased, row.visible_at) == (
                    copy.attempts,
                    copy.leased,
                    copy.visible_at,
                ), key
                assert (row.lease is None) == (copy.lease is None), key

    @invariant()
    def each_payload_is_counted_by_the_rows_pointing_at_it(self) -> None:
        # a body stored once for several queues goes with the last of them, never before
        pointing = dict(self.eyes.execute("SELECT payload, count(*) FROM messages GROUP BY payload"))
        counted = dict(self.eyes.execute("SELECT id, refs FROM payloads"))
        assert counted == pointing

    @invariant()
    def leases_only_drop_through_a_release_or_a_retry(self) -> None:
        for row in self._rows().values():
            copy = self.copies[(row.mid, row.queue)] if not row.queue.endswith(".dead") else None
            if copy is not None:
                assert row.leased >= copy.floor, f"{copy.mid} leases fell to {row.leased}"
                copy.floor = row.leased


EmbeddedBrokerMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestEmbeddedBrokerModel = EmbeddedBrokerMachine.TestCase


# ==========================================================================================
# Found by the broker model
# ==========================================================================================

ROWID_REUSE = (
    "embedded broker: messages.id is INTEGER PRIMARY KEY without AUTOINCREMENT, so SQLite hands the "
    "largest deleted row id to the next message, and a settle matches only (id, lease token): a stale "
    "delivery of this consumer then acks, retries, rejects or releases a different message"
)


# fixed: messages.id is AUTOINCREMENT now (was: ROWID_REUSE)
def test_a_stale_settle_never_touches_another_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeTime(1_000_000.0)
    monkeypatch.setattr(embedded, "time", clock)
    monkeypatch.setattr(consuming, "time", clock)

    async def scenario() -> list[str]:
        path = str(tmp_path / "broker.db")
        slow, other, publisher = (EmbeddedTransport(path, lease=LEASE) for _ in range(3))
        for transport in (slow, other, publisher):
            await transport.connect()
        queue = QueueSpec("q", [Binding(EXCHANGE, "#")])
        await publisher.declare(Topology([ExchangeSpec(EXCHANGE)], [queue]))
        streams = [slow.consume(queue, prefetch=1), other.consume(queue, prefetch=1)]
        try:
            await publisher.send(EXCHANGE, [WireMessage("k", b"{}", message_id="X")])
            stale = await anext(streams[0])  # a handler that stalls past its lease
            clock.now += LEASE + 1
            await (await anext(streams[1])).ack()  # X handed to the other consumer, done there
            await publisher.send(EXCHANGE, [WireMessage("k", b"{}", message_id="Y")])  # X's row id again
            streams.append(slow.consume(queue, prefetch=1))
            fresh = await anext(streams[2])
            assert fresh.message.message_id == "Y"
            await stale.ack()  # must be a no-op: X is long done
            await fresh.retry(0.0, "handler failed")  # Y must come back
            async with asyncio.timeout(2):
                again = await anext(streams[2])
            return [str(again.message.message_id)]
        finally:
            for transport in (slow, other, publisher):
                await transport.close()
            for stream in streams:
                await stream.aclose()  # type: ignore[attr-defined]

    assert asyncio.run(scenario()) == ["Y"]  # a stale ack that deleted Y would lose it
