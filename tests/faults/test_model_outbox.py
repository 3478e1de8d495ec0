"""Model-based test of the outbox and dispatcher against a small model of the reliability contract.

Hypothesis plays random sequences of operations — publishing, delivering, brokers refusing or
going down, the clock moving, crashes, purges, operator retries — on the real code, and the same
sequence on a plain-Python model of what the contract promises. After every step the real state,
read straight from the SQLite file (not through the code under test), must equal the model's,
and the contract's invariants must hold on the real state.

Run with ``pytest -s`` to see the ``[ledger]`` line the machine prints per example.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import sqlite3
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from tests.core.fakes import ScriptedTransport
from tidings.config import ConnectorConfig
from tidings.connector import Connector
from tidings.dispatcher import ConnectorWorker, Dispatcher
from tidings.errors import TransportError
from tidings.event import Event
from tidings.formats.native import NativeFormat
from tidings.outbox import Outbox
from tidings.transport import (
    DELIVERED,
    Outcome,
    SendResult,
    WireMessage,
)

T = TypeVar("T")

# ==========================================================================================
# Part 1: outbox + dispatcher
# ==========================================================================================

SCHEDULE = [5.0, 25.0]
MAX_ATTEMPTS = 3
BATCH = 3  # small, so batches end in the middle of what is pending
RETENTION = 20.0
JITTER = (0.8, 1.2)  # Connector.retry_delay: the schedule's entry ±20 %
EPSILON = 1e-6


@dataclass(frozen=True)
class LaneSpec:
    """One connector: "a" keeps order and takes every topic, "b" does not and takes only m.#."""

    ordered: bool
    wanted_prefix: str | None

    def wants(self, topic: str) -> bool:
        # written out by hand rather than asking the code's own topic matcher
        return self.wanted_prefix is None or topic.split(".")[0] == self.wanted_prefix


LANES = {"a": LaneSpec(ordered=True, wanted_prefix=None), "b": LaneSpec(ordered=False, wanted_prefix="m")}
TOPIC_FILTERS = {"a": ["#"], "b": ["m.#"]}
#: what a broker answers for an event: mostly yes
ANSWER = st.sampled_from([Outcome.DELIVERED, Outcome.DELIVERED, Outcome.RETRY, Outcome.REFUSED])


def says_unroutable(seq: int) -> bool:
    """A RETRY for an odd event says no queue was bound: it does not hold an ordered connector."""
    return seq % 2 == 1


@dataclass
class Published:
    event: Event
    seq: int
    created: float


@dataclass
class Lane:
    """The model of one connector: what the outbox should record, and what its broker got."""

    name: str
    spec: LaneSpec
    cursor: int = 0
    backlog: dict[int, tuple[int, float]] = field(default_factory=dict)  # seq -> (attempts, next_at)
    #: backlog entries last refused as unroutable: the ordered connector's new events pass them
    aside: set[int] = field(default_factory=set)
    dead: dict[int, int] = field(default_factory=dict)  # seq -> attempts
    delivered: Counter[int] = field(default_factory=Counter)
    #: what the broker answers for an event (absent: DELIVERED)
    script: dict[int, Outcome] = field(default_factory=dict)
    #: every answer the broker gave per event since the operator last retried it
    answers: dict[int, list[Outcome]] = field(default_factory=dict)
    #: deliveries whose settlement a crash wiped out: each allows one duplicate
    torn: Counter[int] = field(default_factory=Counter)
    down: bool = False
    connected: bool = False
    #: the last event past the cursor handed to the broker (first sends go in publish order)
    last_new_send: int = 0


@dataclass
class Plan:
    """What one ConnectorWorker.step() should do, worked out from the model alone."""

    rows: list[int]  # seqs the step reads (from the backlog or past the cursor)
    sending: list[int]  # seqs it hands to the broker, in this order
    from_backlog: bool


@dataclass
class Observed:
    """The outbox file's tables, read by the test's own connection."""

    present: set[int]
    cursors: dict[str, int]
    backlog: dict[str, dict[int, tuple[int, float]]]
    dead: dict[str, dict[int, int]]


class FakeClock:
    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


class SimulatedCrash(Exception):
    """The dispatcher process dies after the broker confirmed a batch, before it is settled."""


class RecordingTransport(ScriptedTransport):
    """A scripted broker that logs each batch it took and can kill its caller right after one."""

    def __init__(self, decide: Callable[[WireMessage], SendResult]) -> None:
        super().__init__(decide)
        self.batches: list[list[str]] = []
        self.crash_after_send = False

    async def send(self, exchange: str, messages: Sequence[WireMessage]) -> list[SendResult]:
        results = await super().send(exchange, messages)
        self.batches.append([str(m.message_id) for m in messages])
        if self.crash_after_send:
            raise SimulatedCrash("killed between the broker's confirm and the settle")
        return results


async def _connect_and_step(worker: ConnectorWorker) -> bool:
    # what one turn of ConnectorWorker.run does, minus the pause
    await worker.ensure_connected()
    return await worker.step()


class OutboxDispatcherMachine(RuleBasedStateMachine):
    """Two connectors over one outbox file; crashes drop everything but the file."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="tidings-model-outbox-"))
        self.path = self.dir / "outbox.db"
        # a fake clock on the real epoch: purge compares it with the real `created` column
        self.clock = FakeClock(float(int(time.time())))
        self.rng: Callable[[], float] = random.Random(0).random
        self.loop = asyncio.new_event_loop()
        self.lanes = {name: Lane(name, spec) for name, spec in LANES.items()}
        self.transports = {name: RecordingTransport(self._decider(name)) for name in LANES}
        self.events: list[Published] = []
        self.by_id: dict[str, Published] = {}
        self.purged: set[int] = set()
        self.crashes = 0
        self._open()

    # -- the system's life cycle ------------------------------------------------------------

    def _open(self) -> None:
        self.producer = Outbox(self.path)  # the publishing app's connection
        self.outbox = Outbox(self.path)  # the dispatcher's own, as Bus.dispatcher() makes it
        self.eyes = sqlite3.connect(self.path, isolation_level=None)  # the test's view of the file
        self.eyes.execute("PRAGMA query_only=1")
        connectors = [
            Connector(
                name,
                self.transports[name],
                NativeFormat(),
                ConnectorConfig(
                    transport=name,
                    topics=TOPIC_FILTERS[name],
                    retry_schedule=SCHEDULE,
                    max_attempts=MAX_ATTEMPTS,
                    batch_size=BATCH,
                    ordered=spec.ordered,
                ),
            )
            for name, spec in LANES.items()
        ]
        self.dispatcher = Dispatcher(
            self.outbox, connectors, retention=RETENTION, clock=self.clock, rng=lambda: self.rng()
        )
        self.workers = {w.connector.name: w for w in self.dispatcher.workers}
        for lane in self.lanes.values():
            lane.connected = False
            lane.last_new_send = lane.cursor  # a restarted dispatcher starts again at the cursor

    def _close(self) -> None:
        self.outbox.close()
        self.producer.close()
        self.eyes.close()

    def teardown(self) -> None:
        self._close()
        self.loop.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        print(self._ledger_line())

    def _ledger_line(self) -> str:
        counts = ", ".join(
            f"{lane.name}: delivered {len(lane.delivered)}, backlog {len(lane.backlog)}, "
            f"dead {len(lane.dead)}, pending {sum(e.seq > lane.cursor for e in self.events)}, "
            f"duplicated {sum(n - 1 for n in lane.delivered.values())}"
            for lane in self.lanes.values()
        )
        return (
            f"[ledger] model outbox+dispatcher: appended {len(self.events)}, purged {len(self.purged)}, "
            f"crashes {self.crashes}, {counts}, lost 0"
        )

    def _decider(self, name: str) -> Callable[[WireMessage], SendResult]:
        def decide(message: WireMessage) -> SendResult:
            lane = self.lanes[name]
            seq = self.by_id[str(message.message_id)].seq
            outcome = lane.script.get(seq, Outcome.DELIVERED)
            lane.answers.setdefault(seq, []).append(outcome)
            if outcome is Outcome.DELIVERED:
                return DELIVERED
            if outcome is Outcome.RETRY and says_unroutable(seq):
                return SendResult(outcome, "unroutable: scripted")
            return SendResult(outcome, f"scripted {outcome.value}")

        return decide

    def _observe(self) -> Observed:
        db = self.eyes
        backlog: dict[str, dict[int, tuple[int, float]]] = {name: {} for name in LANES}
        dead: dict[str, dict[int, int]] = {name: {} for name in LANES}
        for name, seq, attempts, next_at in db.execute(
            "SELECT connector, seq, attempts, next_at FROM backlog"
        ):
            backlog[name][seq] = (attempts, next_at)
        for name, seq, attempts in db.execute("SELECT connector, seq, attempts FROM dead"):
            dead[name][seq] = attempts
        return Observed(
            present={seq for (seq,) in db.execute("SELECT seq FROM events")},
            cursors=dict(db.execute("SELECT connector, seq FROM cursors").fetchall()),
            backlog=backlog,
            dead=dead,
        )

    # -- rules -------------------------------------------------------------------------------

    @initialize(seed=st.integers(0, 2**32 - 1))
    def seed_the_jitter(self, seed: int) -> None:
        self.rng = random.Random(seed).random

    @rule(batch=st.lists(st.tuples(st.booleans(), ANSWER, ANSWER), min_size=1, max_size=4))
    def publish(self, batch: list[tuple[bool, Outcome, Outcome]]) -> None:
        """Append 1-4 events in one commit; each comes with what each connector's broker will answer."""
        start = len(self.events)
        events = [
            Event.create(f"{'m' if wanted else 'x'}.{start + i}", {"n": start + i})
            for i, (wanted, *_) in enumerate(batch)
        ]
        self.producer.append(events)
        for event, (_, *answers) in zip(events, batch, strict=True):
            seq, created = self.eyes.execute(
                "SELECT seq, created FROM events WHERE id = ?", (event.id,)
            ).fetchone()
            assert not self.events or seq > self.events[-1].seq, "the outbox reordered a publish"
            self.events.append(Published(event, seq, created))
            self.by_id[event.id] = self.events[-1]
            for lane, answer in zip(self.lanes.values(), answers, strict=True):
                lane.script[seq] = answer

    @precondition(lambda self: self.events)
    @rule(index=st.integers(0, 10**6))
    def publish_the_same_id_again(self, index: int) -> None:
        # a producer retrying after an unknown outcome: stored once (while still in the outbox)
        kept = [e for e in self.events if e.seq not in self.purged]
        if kept:
            self.producer.append([kept[index % len(kept)].event])

    @precondition(lambda self: self.events)
    @rule(name=st.sampled_from(sorted(LANES)), index=st.integers(0, 10**6), outcome=ANSWER)
    def broker_changes_its_answer(self, name: str, index: int, outcome: Outcome) -> None:
        self.lanes[name].script[self.events[index % len(self.events)].seq] = outcome

    @rule(name=st.sampled_from(sorted(LANES)), down=st.booleans())
    def broker_down(self, name: str, down: bool) -> None:
        self.lanes[name].down = self.transports[name].down = down

    @rule(seconds=st.sampled_from([1.0, 5.0, 6.0, 25.0, 31.0, 200.0]))
    def advance_clock(self, seconds: float) -> None:
        self.clock.now += seconds

    @rule(name=st.sampled_from(sorted(LANES)), times=st.integers(1, 4))
    def deliver(self, name: str, times: int) -> None:
        for _ in range(times):
            self._step(name, torn=False)

    @rule(name=st.sampled_from(sorted(LANES)), mid_delivery=st.booleans())
    def crash(self, name: str, mid_delivery: bool) -> None:
        """The dispatcher process dies: between steps, or after a broker confirm and before the settle."""
        if mid_delivery:
            self._step(name, torn=True)
        self._crash()

    @precondition(lambda self: self.events)
    @rule()
    def purge(self) -> None:
        older_than = self.clock.now - RETENTION
        floor = min(lane.cursor for lane in self.lanes.values())
        held = {seq for lane in self.lanes.values() for seq in (*lane.backlog, *lane.dead)}
        newest = self.events[-1].seq  # always kept: the next seq is one above it
        expected = {
            e.seq
            for e in self.events
            if e.seq not in self.purged
            and e.seq <= floor
            and e.created < older_than
            and e.seq not in held
            and e.seq != newest
        }
        purged = self.dispatcher.purge()
        assert purged == len(expected), f"purge removed {purged} events, the model says {sorted(expected)}"
        self.purged |= expected

    @precondition(lambda self: any(lane.dead for lane in self.lanes.values()))
    @rule(name=st.sampled_from(sorted(LANES)), one=st.booleans(), index=st.integers(0, 10**6))
    def operator_retries_dead_letters(self, name: str, one: bool, index: int) -> None:
        lane = self.lanes[name]
        chosen = sorted(lane.dead)
        if one and chosen:
            chosen = [chosen[index % len(chosen)]]
        moved = self.outbox.retry_dead(name, chosen if one else None, now=self.clock.now)
        assert moved == len(chosen)
        for seq in chosen:
            del lane.dead[seq]
            lane.backlog[seq] = (0, self.clock.now)
            lane.aside.discard(seq)  # its last error is forgotten: it holds the order again
            lane.answers.pop(seq, None)  # a fresh attempt count: the old answers no longer count

    # -- one dispatcher step, predicted and checked ------------------------------------------

    def _step(self, name: str, *, torn: bool) -> None:
        lane, transport = self.lanes[name], self.transports[name]
        plan = self._plan(lane)
        before = self._observe()
        already = len(transport.batches)
        transport.crash_after_send = torn
        try:
            self.loop.run_until_complete(_connect_and_step(self.workers[name]))
            result = "ok"
        except TransportError:
            self.workers[name].connected = False  # as ConnectorWorker.run does when it pauses
            result = "down"
        except SimulatedCrash:
            result = "crashed"
        finally:
            transport.crash_after_send = False
        batches = transport.batches[already:]
        self._check_order(lane, before, batches)
        self._check_against_plan(lane, plan, batches, result, torn)
        self._apply(lane, plan, result)

    def _plan(self, lane: Lane) -> Plan | None:
        """ConnectorWorker.step as the contract describes it (None: it finds nothing to do)."""
        now = self.clock.now
        if lane.backlog:
            holding = [seq for seq in sorted(lane.backlog) if seq not in lane.aside]
            due_now = [(next_at, seq) for seq, (_, next_at) in lane.backlog.items() if next_at <= now]
            if lane.spec.ordered:
                # nothing at or after the first entry that holds the order and is not due; an
                # unroutable one not due holds nothing up (it reached nobody)
                blocked = next((s for s in holding if lane.backlog[s][1] > now), float("inf"))
                due = sorted(seq for _, seq in due_now if seq < blocked)[:BATCH]
            else:
                due = sorted(seq for _, seq in sorted(due_now)[:BATCH])  # the longest due first
            if due:
                return Plan(due, due, from_backlog=True)
            if lane.spec.ordered and holding:
                return None  # new events wait behind the backlog
        rows = [e for e in self.events if e.seq > lane.cursor][:BATCH]
        if not rows:
            return None
        sending = [e.seq for e in rows if lane.spec.wants(e.event.topic)]
        return Plan([e.seq for e in rows], sending, from_backlog=False)

    def _expected_result(self, lane: Lane, plan: Plan | None, torn: bool) -> str:
        if lane.down and not lane.connected:
            return "down"  # ensure_connected fails before the step looks at anything
        if plan is None or not plan.sending:
            return "ok"
        if lane.down:
            return "down"
        return "crashed" if torn else "ok"

    def _check_against_plan(
        self, lane: Lane, plan: Plan | None, batches: list[list[str]], result: str, torn: bool
    ) -> None:
        assert result == self._expected_result(lane, plan, torn), (result, plan)
        sent = [[self.by_id[i].seq for i in batch] for batch in batches]
        expected = [plan.sending] if plan and plan.sending and result != "down" else []
        assert sent == expected, f"connector {lane.name} sent {sent}, the model says {expected}"

    def _check_order(self, lane: Lane, before: Observed, batches: list[list[str]]) -> None:
        """The order the code guarantees, checked on what the broker saw and the file before the step.

        Every batch is in publish order. A batch is either all backlog or all new (past the
        cursor), and new events reach the broker in publish order across batches. With
        ordered=True no new event is sent while an older one waits in that connector's backlog,
        unless the broker said it was unroutable; an event of the *same* batch may still overtake
        one the broker answered RETRY.
        """
        cursor = before.cursors.get(lane.name, 0)
        for batch in batches:
            seqs = [self.by_id[i].seq for i in batch]
            assert seqs == sorted(set(seqs)), f"batch out of publish order: {seqs}"
            new = [s for s in seqs if s > cursor]
            if not new:
                continue
            assert new == seqs, f"a batch mixed backlog and new events: {seqs}"
            assert seqs[0] > lane.last_new_send, f"new event {seqs[0]} sent after {lane.last_new_send}"
            if lane.spec.ordered:
                waiting = sorted(set(before.backlog[lane.name]) - lane.aside)
                assert not waiting, f"new events {seqs} overtook backlog {waiting} of ordered {lane.name}"
            lane.last_new_send = seqs[-1]

    def _apply(self, lane: Lane, plan: Plan | None, result: str) -> None:
        if result == "down":
            lane.connected = False
            return
        lane.connected = True
        if plan is None:
            return
        if result == "crashed":  # the broker has them; the outbox never heard
            for seq in plan.sending:
                if lane.script.get(seq, Outcome.DELIVERED) is Outcome.DELIVERED:
                    lane.delivered[seq] += 1
                    lane.torn[seq] += 1
            return
        for seq in plan.sending:
            self._settle(lane, seq, plan.from_backlog)
        if not plan.from_backlog:
            lane.cursor = plan.rows[-1]

    def _settle(self, lane: Lane, seq: int, from_backlog: bool) -> None:
        attempts = lane.backlog[seq][0] if from_backlog else 0
        outcome = lane.script.get(seq, Outcome.DELIVERED)
        lane.aside.discard(seq)
        if outcome is Outcome.DELIVERED:
            lane.backlog.pop(seq, None)
            lane.delivered[seq] += 1
        elif outcome is Outcome.REFUSED or attempts + 1 >= MAX_ATTEMPTS:
            lane.backlog.pop(seq, None)
            lane.dead[seq] = attempts + 1
        else:
            lane.backlog[seq] = (attempts + 1, self._next_at(lane, seq, attempts + 1))
            if says_unroutable(seq):
                lane.aside.add(seq)

    def _next_at(self, lane: Lane, seq: int, attempts: int) -> float:
        """The retry time the outbox recorded, checked to lie within the jittered schedule."""
        row = self.eyes.execute(
            "SELECT next_at FROM backlog WHERE connector = ? AND seq = ?", (lane.name, seq)
        ).fetchone()
        assert row is not None, f"event {seq} should wait in {lane.name}'s backlog"
        base = SCHEDULE[min(attempts, len(SCHEDULE)) - 1]
        low, high = (self.clock.now + base * j for j in JITTER)
        assert low - EPSILON <= row[0] <= high + EPSILON, (
            f"retry {attempts} due at {row[0]}, not in [{low}, {high}]"
        )
        return float(row[0])

    def _crash(self) -> None:
        """Close everything without a word to anyone and start again from the file."""
        self._close()
        self.crashes += 1
        self._open()

    # -- invariants ---------------------------------------------------------------------------

    @invariant()
    def the_file_matches_the_model(self) -> None:
        seen = self._observe()
        assert seen.present == {e.seq for e in self.events} - self.purged
        for name, lane in self.lanes.items():
            assert seen.cursors.get(name, 0) == lane.cursor, f"{name} cursor"
            assert seen.backlog[name] == lane.backlog, f"{name} backlog"
            assert seen.dead[name] == lane.dead, f"{name} dead letters"
            got = Counter(self.by_id[str(m.message_id)].seq for m in self.transports[name].sent)
            assert got == lane.delivered, f"{name}'s broker got {got}, the model says {lane.delivered}"

    @invariant()
    def no_appended_event_is_lost(self) -> None:
        """Per connector each event is exactly one of: delivered (finished), backlog, dead, pending."""
        seen = self._observe()
        for name, lane in self.lanes.items():
            got = Counter(self.by_id[str(m.message_id)].seq for m in self.transports[name].sent)
            for e in self.events:
                states = [
                    state
                    for state, holds in (
                        ("pending", e.seq > seen.cursors.get(name, 0)),
                        ("backlog", e.seq in seen.backlog[name]),
                        ("dead", e.seq in seen.dead[name]),
                    )
                    if holds
                ]
                assert len(states) <= 1, f"event {e.seq} is {states} at once for {name}"
                wanted = lane.spec.wants(e.event.topic)
                assert wanted or not got[e.seq], f"{name} got event {e.seq}, whose topic it does not want"
                if not states:
                    assert got[e.seq] or not wanted, f"event {e.seq} finished for {name}, never delivered"
                else:
                    assert e.seq in seen.present, f"event {e.seq} purged while {name} has it {states[0]}"
                    # delivered yet unfinished only when a crash lost the settlement
                    assert not got[e.seq] or lane.torn[e.seq], f"event {e.seq} delivered and {states[0]}"

    @invariant()
    def duplicates_only_after_a_lost_settlement(self) -> None:
        # never because the other connector failed: each duplicate needs a crash of its own
        for name, lane in self.lanes.items():
            got = Counter(self.by_id[str(m.message_id)].seq for m in self.transports[name].sent)
            for seq, times in got.items():
                assert times <= 1 + lane.torn[seq], f"{name} got event {seq} {times} times"

    @invariant()
    def dead_letters_only_after_the_attempt_limit_or_a_refusal(self) -> None:
        seen = self._observe()
        for name, lane in self.lanes.items():
            for seq in seen.dead[name]:
                answers = lane.answers.get(seq, [])
                assert Outcome.REFUSED in answers or answers.count(Outcome.RETRY) >= MAX_ATTEMPTS, (
                    f"event {seq} dead for {name} after only {answers}"
                )


OutboxDispatcherMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestOutboxDispatcherModel = OutboxDispatcherMachine.TestCase
