"""The dispatcher's pipeline: several batches on the wire, settled strictly in order.

A gated transport holds each ``send`` until the test (or a random schedule)
answers it, so the tests can confirm batches out of order, fail one in the
middle, or stop the dispatcher while batches are still unconfirmed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.core.fakes import ScriptedTransport
from tests.waiting import until
from tidings.config import ConnectorConfig
from tidings.connector import Connector
from tidings.dispatcher import ConnectorWorker, Dispatcher
from tidings.errors import TransportError
from tidings.event import Event
from tidings.formats.native import NativeFormat
from tidings.outbox import Outbox
from tidings.transport import DELIVERED, Outcome, SendResult, WireMessage


class GatedTransport(ScriptedTransport):
    """Each send waits for its gate; the gate's value is the outcome (or an exception)."""

    def __init__(self) -> None:
        super().__init__()
        self.gates: list[asyncio.Future[object]] = []
        self.batches: list[list[str]] = []  # routing keys of each send, in the order sent
        self.opened = asyncio.Event()

    async def send(self, exchange: str, messages: Sequence[WireMessage]) -> list[SendResult]:
        gate: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self.gates.append(gate)
        self.batches.append([m.routing_key for m in messages])
        self.opened.set()
        answer = await gate
        if isinstance(answer, Exception):
            raise answer
        self.sent.extend(messages)
        return [DELIVERED] * len(messages)

    async def wait_sends(self, count: int) -> None:
        while len(self.gates) < count:
            self.opened.clear()
            await asyncio.wait_for(self.opened.wait(), 5)


def make(
    tmp_path: Path, transport: ScriptedTransport, *, in_flight: int, batch: int = 10, ordered: bool = True
) -> Dispatcher:
    config = ConnectorConfig(
        transport="c", batch_size=batch, in_flight=in_flight, retry_schedule=[60], ordered=ordered
    )
    outbox = Outbox(tmp_path / "outbox.db")
    return Dispatcher(outbox, [Connector("c", transport, NativeFormat(), config)], rng=lambda: 0.5)


def publish(dispatcher: Dispatcher, n: int) -> list[str]:
    events = [Event.create(f"t.{i}", {"i": i}) for i in range(n)]
    dispatcher.outbox.append(events)
    return [e.topic for e in events]


def durable_cursor(dispatcher: Dispatcher) -> int:
    return dispatcher.outbox.status(["c"])[0].cursor


async def test_batches_go_out_before_the_first_is_confirmed_and_settle_in_order(tmp_path: Path) -> None:
    transport = GatedTransport()
    dispatcher = make(tmp_path, transport, in_flight=3)
    topics = publish(dispatcher, 40)
    stop = asyncio.Event()
    running = asyncio.create_task(dispatcher.run(stop))
    await transport.wait_sends(3)
    await asyncio.sleep(0.05)
    assert len(transport.gates) == 3, "a fourth batch went out beyond the window of 3"
    assert [k for batch in transport.batches for k in batch] == topics[:30], "wire order is seq order"
    # the broker confirms the later batches first: the cursor must not pass batch 1
    transport.gates[2].set_result(None)
    transport.gates[1].set_result(None)
    await asyncio.sleep(0.05)
    assert durable_cursor(dispatcher) == 0
    transport.gates[0].set_result(None)
    await until(lambda: durable_cursor(dispatcher) == 30)
    await transport.wait_sends(4)
    transport.gates[3].set_result(None)
    await until(lambda: durable_cursor(dispatcher) == 40)
    stop.set()
    await running
    assert [k for batch in transport.batches for k in batch] == topics, "each event sent once, in order"


async def test_a_failed_batch_in_the_middle_sends_it_and_its_followers_again(tmp_path: Path) -> None:
    transport = GatedTransport()
    dispatcher = make(tmp_path, transport, in_flight=3)
    topics = publish(dispatcher, 30)
    stop = asyncio.Event()
    running = asyncio.create_task(dispatcher.run(stop))
    await transport.wait_sends(3)
    transport.gates[0].set_result(None)
    transport.gates[1].set_result(TransportError("connection lost"))
    transport.gates[2].set_result(None)  # delivered, but after a failed batch: must be sent again
    await transport.wait_sends(5)  # after the pause: batches 2 and 3 again
    for gate in transport.gates[3:]:
        gate.set_result(None)
    await until(lambda: durable_cursor(dispatcher) == 30)
    stop.set()
    await running
    assert transport.batches[3:] == [topics[10:20], topics[20:30]]
    delivered = transport.delivered_topics()
    assert set(delivered) == set(topics), "nothing lost"
    assert delivered.count(topics[25]) == 2 and delivered.count(topics[5]) == 1


async def test_stop_waits_for_the_batches_in_flight(tmp_path: Path) -> None:
    transport = GatedTransport()
    dispatcher = make(tmp_path, transport, in_flight=4)
    publish(dispatcher, 20)
    stop = asyncio.Event()
    running = asyncio.create_task(dispatcher.run(stop))
    await transport.wait_sends(2)
    stop.set()
    await asyncio.sleep(0.05)
    assert not running.done(), "stopped with unconfirmed batches"
    for gate in transport.gates:
        gate.set_result(None)
    await asyncio.wait_for(running, 5)
    assert durable_cursor(dispatcher) == 20


async def test_a_cancelled_dispatcher_leaves_no_task_behind(tmp_path: Path) -> None:
    transport = GatedTransport()
    dispatcher = make(tmp_path, transport, in_flight=4)
    publish(dispatcher, 40)
    before = asyncio.all_tasks()
    running = asyncio.create_task(dispatcher.run(asyncio.Event()))
    await transport.wait_sends(4)
    running.cancel()
    await asyncio.gather(running, return_exceptions=True)
    assert asyncio.all_tasks() == before
    assert durable_cursor(dispatcher) == 0, "nothing was confirmed, so the cursor stays"


def run_with_short_pauses(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run ``scenario`` with a lost link pausing the connector for milliseconds, not seconds."""
    import tidings.dispatcher as dispatcher_module

    saved = dispatcher_module.DOWN_BASE, dispatcher_module.DOWN_CAP
    dispatcher_module.DOWN_BASE, dispatcher_module.DOWN_CAP = 0.001, 0.01
    try:
        asyncio.run(scenario())
    finally:
        dispatcher_module.DOWN_BASE, dispatcher_module.DOWN_CAP = saved


class RandomBroker(ScriptedTransport):
    """Answers each send after a drawn delay: delivered, some messages refused for now, or a lost link."""

    def __init__(self, plan: list[tuple[int, str]]) -> None:
        super().__init__()
        self.plan = plan
        self.calls = 0

    async def send(self, exchange: str, messages: Sequence[WireMessage]) -> list[SendResult]:
        delay_ms, answer = self.plan[self.calls % len(self.plan)]
        self.calls += 1
        await asyncio.sleep(delay_ms / 1000)
        if answer == "lost" and self.calls < 40:
            raise TransportError("connection lost")
        results = [
            # an unroutable refusal lets an ordered connector's later events pass; a nack holds them
            SendResult(Outcome.RETRY, "unroutable" if i % 2 else "nack")
            if answer == "retry" and i % 3 == 0
            else DELIVERED
            for i in range(len(messages))
        ]
        self.sent.extend(m for m, r in zip(messages, results, strict=True) if r.outcome is Outcome.DELIVERED)
        return results


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    plan=st.lists(
        st.tuples(st.integers(0, 4), st.sampled_from(["ok", "ok", "retry", "lost"])), min_size=1, max_size=8
    ),
    in_flight=st.integers(1, 5),
    batch=st.integers(1, 7),
    count=st.integers(1, 60),
    ordered=st.booleans(),
)
def test_whatever_the_broker_answers_every_event_is_delivered_or_waits(
    tmp_path_factory: object,
    plan: list[tuple[int, str]],
    in_flight: int,
    batch: int,
    count: int,
    ordered: bool,
) -> None:
    tmp = tmp_path_factory.mktemp("pipe")  # type: ignore[attr-defined]
    transport = RandomBroker(plan)
    dispatcher = make(tmp, transport, in_flight=in_flight, batch=batch, ordered=ordered)
    topics = publish(dispatcher, count)

    def settled() -> bool:
        # done: everything passed the cursor, or (ordered) new events wait behind a backlog
        status = dispatcher.outbox.status(["c"])[0]
        return status.cursor == count or (ordered and status.backlog > 0)

    async def scenario() -> None:
        stop = asyncio.Event()
        running = asyncio.create_task(dispatcher.run(stop))
        await until(settled, timeout=3)
        await asyncio.sleep(0.02)  # batches still in flight may settle
        stop.set()
        await running

    run_with_short_pauses(scenario)
    backlog = {str(e["topic"]) for e in dispatcher.outbox.entries("c", "backlog", limit=1000)}
    delivered = set(transport.delivered_topics())
    cursor = durable_cursor(dispatcher)
    waiting = set(topics[cursor:])  # seq n is topics[n - 1]
    assert delivered | backlog | waiting == set(topics), "an event was neither delivered nor kept"
    assert not dispatcher.outbox.entries("c", "dead"), "nothing should reach its attempt limit here"
    dispatcher.outbox.close()


def test_step_keeps_one_batch_at_a_time(tmp_path: Path) -> None:
    """``step`` (used by drain and the model tests) sends and settles a batch before returning."""
    transport = ScriptedTransport()
    dispatcher = make(tmp_path, transport, in_flight=4)
    publish(dispatcher, 25)
    worker: ConnectorWorker = dispatcher.workers[0]

    async def one() -> None:
        await worker.ensure_connected()
        assert await worker.step()

    asyncio.run(one())
    assert len(transport.sent) == 10 and durable_cursor(dispatcher) == 10


class WireOrderBroker(RandomBroker):
    """RandomBroker that also records the routing keys in the order they were put on the wire."""

    def __init__(self, plan: list[tuple[int, str]]) -> None:
        super().__init__(plan)
        self.wire: list[str] = []

    async def send(self, exchange: str, messages: Sequence[WireMessage]) -> list[SendResult]:
        self.wire.extend(m.routing_key for m in messages)
        return await super().send(exchange, messages)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    chunks=st.lists(st.tuples(st.integers(1, 12), st.booleans(), st.integers(0, 3)), min_size=1, max_size=10),
    plan=st.lists(
        st.tuples(st.integers(0, 3), st.sampled_from(["ok", "ok", "lost"])), min_size=1, max_size=6
    ),
    in_flight=st.integers(1, 4),
    batch=st.integers(1, 6),
)
def test_events_published_while_it_runs_go_out_in_order_with_other_writers_between(
    tmp_path_factory: object,
    chunks: list[tuple[int, bool, int]],
    plan: list[tuple[int, str]],
    in_flight: int,
    batch: int,
) -> None:
    """Events committed by this process are handed to the dispatcher without being read back; a
    writer in another process (a second outbox connection) leaves gaps in what is handed over.
    Whatever the interleaving, every event goes out, and first sends follow the outbox order."""
    tmp = tmp_path_factory.mktemp("fresh")  # type: ignore[attr-defined]
    transport = WireOrderBroker(plan)
    dispatcher = make(tmp, transport, in_flight=in_flight, batch=batch)
    foreign = Outbox(tmp / "outbox.db")  # commits the dispatcher hears nothing about
    topics: list[str] = []

    async def scenario() -> None:
        stop = asyncio.Event()
        running = asyncio.create_task(dispatcher.run(stop))
        for size, ours, pause_ms in chunks:
            events = [Event.create(f"t.{len(topics) + i}", {"i": i}) for i in range(size)]
            writer = dispatcher.outbox if ours else foreign
            await asyncio.to_thread(writer.append, events)
            topics.extend(e.topic for e in events)
            await asyncio.sleep(pause_ms / 1000)
        await until(lambda: durable_cursor(dispatcher) == len(topics), timeout=5)
        stop.set()
        await running

    try:
        run_with_short_pauses(scenario)
    finally:
        foreign.close()
    first_sends = list(dict.fromkeys(transport.wire))
    assert first_sends == topics, "every event sent, first sends in outbox order"
    if all(answer == "ok" for _, answer in plan):
        assert transport.wire == topics, "with no failure, each event exactly once"
    dispatcher.outbox.close()


class CountingTransport(ScriptedTransport):
    """Delivers everything at once; remembers each send's size."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []

    async def send(self, exchange: str, messages: Sequence[WireMessage]) -> list[SendResult]:
        self.sizes.append(len(messages))
        return await super().send(exchange, messages)


def test_a_batch_of_large_events_ends_by_bytes(tmp_path: Path, monkeypatch: Any) -> None:
    """batch_size alone counted events: 500 events of 15 MB made a 7.5 GB batch, four of them on
    the wire (the dispatcher grew past 17 GB, and its broker's heartbeats went missing)."""
    from tidings import dispatcher as dispatching

    monkeypatch.setattr(dispatching, "BATCH_BYTES", 250_000)
    transport = CountingTransport()
    dispatcher = make(tmp_path, transport, in_flight=2, batch=50)
    big = [Event.create(f"big.{i}", {"pad": "x" * 100_000}) for i in range(9)]
    small = [Event.create(f"small.{i}", {"i": i}) for i in range(30)]
    dispatcher.outbox.append([*big, *small])

    async def run() -> None:
        stop = asyncio.Event()
        running = asyncio.create_task(dispatcher.run(stop))
        await until(lambda: durable_cursor(dispatcher) == 39)
        stop.set()
        await running

    asyncio.run(run())
    assert transport.delivered_topics() == [e.topic for e in (*big, *small)]  # each once, in order
    assert transport.sizes[:3] == [3, 3, 3]  # three 100 KB events reach 250,000 bytes
    assert transport.sizes[3:] == [30]  # then the count decides again


def test_the_outbox_reads_at_least_one_event_whatever_the_budget(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.db")
    outbox.append([Event.create(f"t.{i}", {"pad": "x" * 1000}) for i in range(5)])
    assert len(outbox.read_after(0, 10, max_bytes=1)) == 1
    assert len(outbox.read_after(0, 10, max_bytes=2500)) == 3
    assert len(outbox.read_after(0, 10)) == 5
    outbox.close()
