"""Outbox durability and the dispatcher's per-connector rules, against a scripted transport."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import orjson
import pytest

from tests.core.fakes import ScriptedTransport
from tidings.bus import Bus
from tidings.config import ConnectorConfig
from tidings.connector import Connector
from tidings.dispatcher import Dispatcher
from tidings.errors import DispatcherBusy
from tidings.event import Event
from tidings.formats.native import NativeFormat
from tidings.outbox import Outbox
from tidings.transport import DELIVERED, Outcome, SendResult, WireMessage


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def make(outbox: Outbox, clock: Clock, **transports: ScriptedTransport) -> Dispatcher:
    connectors = [
        Connector(
            name,
            transport,
            NativeFormat(),
            ConnectorConfig(transport=name, retry_schedule=[5, 25, 125], max_attempts=4, batch_size=50),
        )
        for name, transport in transports.items()
    ]
    return Dispatcher(outbox, connectors, clock=clock, rng=lambda: 0.5)


def events(n: int, prefix: str = "t") -> list[Event]:
    return [Event.create(f"{prefix}.{i}", {"i": i}) for i in range(n)]


@pytest.fixture
def outbox(tmp_path: Path) -> Outbox:
    return Outbox(tmp_path / "outbox.db")


def test_append_is_durable_and_idempotent_by_id(tmp_path: Path) -> None:
    first = Outbox(tmp_path / "o.db")
    batch = events(3)
    first.append(batch)
    first.append(batch[:1])  # a retried publish of the same id is stored once
    first.close()
    again = Outbox(tmp_path / "o.db")
    assert [r.event().id for r in again.read_after(0, 10)] == [e.id for e in batch]


def test_group_commit_from_many_threads_stores_everything_once(outbox: Outbox) -> None:
    batches = [events(200, f"th{n}") for n in range(8)]
    threads = [threading.Thread(target=lambda b=b: [outbox.append([e]) for e in b]) for b in batches]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stored = [r.event().id for r in outbox.read_after(0, 10_000)]
    assert sorted(stored) == sorted(e.id for b in batches for e in b)
    for batch in batches:  # each thread's events keep their order
        mine = {e.id for e in batch}
        assert [i for i in stored if i in mine] == [e.id for e in batch]


async def test_every_connector_gets_every_event_in_order(outbox: Outbox) -> None:
    a, b = ScriptedTransport(), ScriptedTransport()
    dispatcher = make(outbox, Clock(), a=a, b=b)
    outbox.append(events(120))
    await dispatcher.drain()
    expected = [f"t.{i}" for i in range(120)]
    assert a.delivered_topics() == expected
    assert b.delivered_topics() == expected


async def test_a_down_connector_pauses_without_delaying_the_other(outbox: Outbox) -> None:
    up, down = ScriptedTransport(), ScriptedTransport()
    down.down = True
    dispatcher = make(outbox, Clock(), up=up, down=down)
    outbox.append(events(10))
    worker_up, worker_down = dispatcher.workers
    await worker_up.ensure_connected()
    assert await worker_up.step()
    assert len(up.sent) == 10
    with pytest.raises(Exception, match="down"):
        await worker_down.ensure_connected()
    # nothing was lost for the down connector: its cursor did not move
    assert outbox.status(["down"])[0].pending == 10
    down.down = False
    await worker_down.ensure_connected()
    assert await worker_down.step()
    assert down.delivered_topics() == [f"t.{i}" for i in range(10)]


async def test_a_refused_event_waits_in_the_backlog_and_new_events_queue_behind(outbox: Outbox) -> None:
    clock = Clock()
    refusing = {"t.1"}
    transport = ScriptedTransport(
        lambda m: SendResult(Outcome.RETRY, "nack") if m.routing_key in refusing else DELIVERED
    )
    dispatcher = make(outbox, clock, c=transport)
    outbox.append(events(3))
    await dispatcher.drain()
    assert transport.delivered_topics() == ["t.0", "t.2"]
    status = outbox.status(["c"])[0]
    assert status.backlog == 1
    assert status.next_retry == pytest.approx(clock.now + 5)
    outbox.append(events(1, "later"))
    await dispatcher.drain()
    assert transport.delivered_topics() == ["t.0", "t.2"], "a new event overtook the backlog"
    refusing.clear()
    clock.now += 5
    await dispatcher.drain()
    assert transport.delivered_topics() == ["t.0", "t.2", "t.1", "later.0"]
    assert outbox.status(["c"])[0].backlog == 0


async def test_an_unroutable_event_does_not_hold_an_ordered_connector(outbox: Outbox) -> None:
    clock = Clock()
    answers = {"t.1": "unroutable: no queue bound for 't.1'", "nack.0": "nack"}
    transport = ScriptedTransport(
        lambda m: SendResult(Outcome.RETRY, answers[m.routing_key]) if m.routing_key in answers else DELIVERED
    )
    dispatcher = make(outbox, clock, c=transport)
    outbox.append(events(3))
    await dispatcher.drain()
    outbox.append(events(2, "later"))
    await dispatcher.drain()
    # it reached no queue, so nobody's order breaks when what follows goes on
    assert transport.delivered_topics() == ["t.0", "t.2", "later.0", "later.1"]
    for event in events(1, "nack") + events(1, "after"):  # a batch each: a batch goes out whole
        outbox.append([event])
        await dispatcher.drain()
    assert transport.delivered_topics()[-1] == "later.1", "a nacked event must still hold the order"
    del answers["nack.0"]
    clock.now += 5  # both are due; the unroutable one is refused again (its next try in 25 s)
    await dispatcher.drain()
    assert transport.delivered_topics()[-2:] == ["nack.0", "after.0"]
    status = outbox.status(["c"])[0]
    assert (status.backlog, status.next_retry) == (1, pytest.approx(clock.now + 25))
    answers.clear()
    clock.now += 25
    await dispatcher.drain()
    assert transport.delivered_topics()[-1] == "t.1"
    assert outbox.status(["c"])[0].backlog == 0


async def test_an_unroutable_event_after_a_waiting_refusal_waits_behind_it(outbox: Outbox) -> None:
    """Once a queue is bound for it, an unroutable event must not overtake an earlier one that
    waits for another reason, though its own retry comes first."""
    clock = Clock()
    answers = {"a.0": "nack", "b.0": "unroutable: no queue bound for 'b.0'"}
    transport = ScriptedTransport(
        lambda m: SendResult(Outcome.RETRY, answers[m.routing_key]) if m.routing_key in answers else DELIVERED
    )
    jitter = iter([1.0, 0.0])  # a.0's retry 20 % later than the schedule's 5 s, b.0's 20 % sooner
    dispatcher = make(outbox, clock, c=transport)
    dispatcher.rng = lambda: next(jitter)
    outbox.append(events(1, "a") + events(1, "b"))  # one batch: both refused
    await dispatcher.drain()
    status = outbox.status(["c"])[0]
    assert (status.backlog, status.next_retry) == (2, pytest.approx(clock.now + 4))  # the soonest
    del answers["b.0"]  # a queue is bound for it now
    clock.now += 4.5  # b.0 is due, a.0 not yet
    await dispatcher.drain()
    assert transport.delivered_topics() == [], "b.0 overtook a.0, which waits"
    del answers["a.0"]
    clock.now += 2
    await dispatcher.drain()
    assert transport.delivered_topics() == ["a.0", "b.0"]


def test_an_idle_look_at_an_ordered_backlog_does_not_walk_the_unroutable_entries_before_it(
    outbox: Outbox,
) -> None:
    """An idle connector asks for its next due time every poll: with a day of unroutable entries
    ahead of a waiting one, that must stay a few index steps (counted in SQLite's VM steps, not
    timed), not a walk over all of them."""

    def steps_with(unroutable: int) -> tuple[int, tuple[float | None, bool]]:
        with sqlite3.connect(outbox.path) as db:
            db.execute("DELETE FROM backlog")
            db.executemany(
                "INSERT INTO backlog VALUES ('c', ?, 1, ?, 'unroutable: no queue')",
                ((seq, 5_000.0 + seq % 7) for seq in range(1, unroutable + 1)),
            )
            db.execute("INSERT INTO backlog VALUES ('c', ?, 2, 4000.0, 'nack')", (unroutable + 1,))
        counted = [0]

        def count() -> int:
            counted[0] += 1
            return 0

        outbox._db.set_progress_handler(count, 100)
        try:
            answer = outbox.backlog_next_at("c", ordered=True)
        finally:
            outbox._db.set_progress_handler(None, 0)
        return counted[0], answer

    few, answer = steps_with(100)
    many, same = steps_with(20_000)
    assert answer == same == (4000.0, True)  # the waiting entry is due first, and holds the order
    assert many <= few + 2, f"{many * 100} VM steps with 20,000 unroutable entries, {few * 100} with 100"


async def test_after_the_attempt_limit_the_event_is_dead_lettered_and_replayable(outbox: Outbox) -> None:
    clock = Clock()
    transport = ScriptedTransport(lambda m: SendResult(Outcome.RETRY, "unroutable"))
    dispatcher = make(outbox, clock, c=transport)
    outbox.append(events(1))
    await dispatcher.drain()
    for delay in (5, 25, 125):
        clock.now += delay
        await dispatcher.drain()
    status = outbox.status(["c"])[0]
    assert (status.backlog, status.dead) == (0, 1)
    (entry,) = outbox.entries("c", "dead")
    assert entry["attempts"] == 4
    assert "unroutable" in str(entry["reason"])
    transport.decide = lambda m: DELIVERED
    assert outbox.retry_dead("c", now=clock.now) == 1
    await dispatcher.drain()
    assert transport.delivered_topics() == ["t.0"]
    assert outbox.status(["c"])[0].dead == 0


async def test_refused_goes_straight_to_dead_letters_and_the_rest_flows(outbox: Outbox) -> None:
    transport = ScriptedTransport(
        lambda m: SendResult(Outcome.REFUSED, "too large") if m.routing_key == "t.0" else DELIVERED
    )
    dispatcher = make(outbox, Clock(), c=transport)
    outbox.append(events(3))
    await dispatcher.drain()
    assert transport.delivered_topics() == ["t.1", "t.2"]
    assert outbox.status(["c"])[0].dead == 1


async def test_connector_topic_filter(outbox: Outbox) -> None:
    transport = ScriptedTransport()
    connector = Connector("c", transport, NativeFormat(), ConnectorConfig(transport="c", topics=["keep.#"]))
    dispatcher = Dispatcher(outbox, [connector])
    outbox.append([Event.create("keep.a", {}), Event.create("skip.a", {}), Event.create("keep", {})])
    await dispatcher.drain()
    assert transport.delivered_topics() == ["keep.a", "keep"]


async def test_purge_keeps_what_a_connector_still_needs(outbox: Outbox) -> None:
    clock = Clock()
    ok = ScriptedTransport()
    refusing = ScriptedTransport(
        lambda m: SendResult(Outcome.RETRY, "no") if m.routing_key == "t.0" else DELIVERED
    )
    dispatcher = make(outbox, clock, ok=ok, refusing=refusing)
    outbox.append(events(3))
    await dispatcher.drain()
    # t.0 is still in a backlog; t.2, the newest, always stays (the next seq is one above it)
    assert outbox.purge(["ok", "refusing"], older_than=2e12) == 1
    assert [r.topic for r in outbox.read_after(0, 10)] == ["t.0", "t.2"]


async def test_after_a_purge_of_everything_the_next_event_still_follows_the_cursors(outbox: Outbox) -> None:
    transport = ScriptedTransport()
    dispatcher = make(outbox, Clock(), c=transport)
    outbox.append(events(3))
    await dispatcher.drain()
    assert outbox.purge(["c"], older_than=2e12) == 2
    outbox.append(events(1, "late"))
    await dispatcher.drain()
    assert [m.routing_key for m in transport.sent] == ["t.0", "t.1", "t.2", "late.0"]
    assert outbox.last_seq() == 4  # seqs are never handed out twice


def test_only_one_dispatcher_per_outbox(outbox: Outbox) -> None:
    first = make(outbox, Clock(), c=ScriptedTransport())
    second = make(outbox, Clock(), c=ScriptedTransport())
    first.acquire()
    try:
        with pytest.raises(DispatcherBusy, match="another dispatcher"):
            second.acquire()
    finally:
        first.release()
    second.acquire()
    second.release()


async def test_an_event_the_format_cannot_encode_is_dead_lettered(outbox: Outbox) -> None:
    class Picky(NativeFormat):
        def encode(self, event: Event) -> WireMessage:
            if event.topic == "t.1":
                from tidings.errors import InvalidEvent

                raise InvalidEvent("route not allowed")
            return super().encode(event)

    transport = ScriptedTransport()
    dispatcher = Dispatcher(outbox, [Connector("c", transport, Picky(), ConnectorConfig(transport="c"))])
    outbox.append(events(3))
    await dispatcher.drain()
    assert transport.delivered_topics() == ["t.0", "t.2"]
    assert "route not allowed" in str(outbox.entries("c", "dead")[0]["reason"])


def test_a_connector_named_twice_is_one_connector(bus: Bus) -> None:
    assert [c.name for c in bus.dispatcher(["local", "local"]).connectors] == ["local"]


async def test_a_disabled_connector_keeps_its_events_from_the_purge(tmp_path: Path) -> None:
    """``enabled = false`` is a pause: what was published meanwhile is delivered once it is on
    again, however long the pause outlasted the outbox's retention."""
    from tidings.bus import Bus
    from tidings.config import load_config

    def bus(enabled: bool) -> Bus:
        (tmp_path / "tidings.toml").write_text(
            '[bus]\nhome = "home"\n[outbox]\nretention = 0\n'
            '[transports.now]\nkind = "file"\npath = "now.jsonl"\n'
            '[transports.later]\nkind = "file"\npath = "later.jsonl"\n'
            '[connectors.now]\ntransport = "now"\n'
            f'[connectors.later]\ntransport = "later"\nenabled = {str(enabled).lower()}\n'
        )
        return Bus(load_config(tmp_path / "tidings.toml"))

    paused = bus(enabled=False)
    sent = [paused.publish("lab.job", {"n": n}).id for n in range(4)]
    dispatcher = paused.dispatcher()
    await dispatcher.drain()
    assert dispatcher.purge() == 0  # "now" has them all; "later" has none yet
    await dispatcher.close_transports()
    paused.close()
    resumed = bus(enabled=True)
    await resumed.dispatcher().deliver_due()
    resumed.close()
    lines = (tmp_path / "home" / "later.jsonl").read_text().splitlines()  # bare names live in home
    assert [orjson.loads(line)["message_id"] for line in lines] == sent


def test_looking_at_a_connector_writes_nothing(outbox: Outbox) -> None:
    """``backlog list`` must work where a write fails (a full disk, when it is needed most)."""
    outbox.append(events(2))
    (status,) = outbox.status(["never-ran"])
    assert (status.cursor, status.pending) == (0, 2)
    assert outbox._read("SELECT count(*) FROM cursors WHERE connector = 'never-ran'") == [(0,)]


def test_entries_dropped_while_their_try_is_on_the_wire_stay_dropped(outbox: Outbox) -> None:
    """`tidings backlog drop --all` said "dropped 5000", and the batch then in flight put 164 of
    them back: its settlement inserted or replaced the entries it had read."""
    from tidings.outbox import Settlement

    outbox.append(events(3))
    later = 10**10
    outbox.settle(
        "c", [Settlement(s, "retry", 1, later, "nope") for s in (1, 2, 3)], new_cursor=3, from_backlog=False
    )
    assert outbox.status(["c"])[0].backlog == 3
    assert (
        outbox.drop("c", "backlog") == 3
    )  # the operator's decision, while a retry of 1 and 2 is on the wire
    outbox.settle(
        "c",
        [Settlement(1, "retry", 2, later, "nope"), Settlement(2, "dead", 2, reason="gave up")],
        new_cursor=None,
        from_backlog=True,
    )
    status = outbox.status(["c"])[0]
    assert (status.backlog, status.dead) == (0, 0)
    # a settlement of an entry still there is recorded as before
    outbox.settle("c", [Settlement(3, "retry", 1, later, "x")], new_cursor=None, from_backlog=False)
    outbox.settle("c", [Settlement(3, "dead", 2, reason="gave up")], new_cursor=None, from_backlog=True)
    status = outbox.status(["c"])[0]
    assert (status.backlog, status.dead) == (0, 1)
