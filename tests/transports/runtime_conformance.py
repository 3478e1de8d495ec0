"""The consumer-runtime suite: what an App promises, run on every transport that acknowledges.

A transport's test module subclasses :class:`RuntimeConformance` and provides one fixture,
``runtime_config``: the path of a config with a transport ``t`` and a connector ``t`` on a fresh
exchange (on a broker that redelivers quickly: the embedded broker's lease of a second). The suite
then checks, with real consumer processes where a process must die or stop:

* a message is acked only after its handler returned (a consumer SIGKILLed mid-handler gets it back),
  and the attempt it died in is counted, across the restart;
* ``Retry(delay)`` brings it back after about the delay, one attempt more;
* the attempt limit dead-letters it with the reason, the last error and the attempts;
* ``Reject`` dead-letters at once, ``Drop`` acks and forgets;
* ``Halt`` stops the app and puts the message back untouched;
* SIGTERM lets the handler in flight finish and hands the prefetched messages back, uncounted;
* with the inbox, a redelivery of a message already handled does not run the handler again.

``tests/transports/test_runtime_conformance.py`` fails when a registered transport that
acknowledges has no subclass of this suite.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.waiting import until
from tidings import App, Bus, Drop, Event, Halt, Reject, Retry
from tidings.errors import HaltedError
from tidings.transport import ATTEMPTS_HEADER, QUEUE_HEADER, REASON_HEADER, Outcome, QueueSpec, WireMessage

ROOT = Path(__file__).resolve().parents[2]  # the checkout: tests.transports.runtime_child importable
WAIT = 30.0


#: consumer processes started by the running test: none outlives it, whatever its outcome
STARTED: list[subprocess.Popen[bytes]] = []


class Child:
    """A consumer process (``tests.transports.runtime_child``) and its log of handler calls."""

    def __init__(self, config: Path, queue: str, scenario: str, log: Path) -> None:
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.transports.runtime_child", str(config), queue, scenario, str(log)],
            cwd=config.parent,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        STARTED.append(self.proc)
        assert self.proc.stdout is not None and self.proc.stdout.readline() == b"ready\n"

    def calls(self) -> list[dict[str, Any]]:
        """Every line the child wrote (a torn last line, from a process killed writing it, left out)."""
        if not self.log.exists():
            return []
        lines = self.log.read_bytes().splitlines()
        return [orjson.loads(line) for line in lines if line.strip().endswith(b"}")]

    def wait_for(self, condition: Any, timeout: float = WAIT) -> None:
        deadline = time.monotonic() + timeout
        while not condition(self.calls()):
            assert time.monotonic() < deadline, f"not reached within {timeout} s: {self.calls()}"
            assert self.proc.poll() is None or condition(self.calls()), "the consumer exited"
            time.sleep(0.02)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Signal the consumer and wait for it; one that does not end is killed (never left behind)
        and the test fails."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"the consumer did not stop within 30 s of signal {sig}") from None


class RuntimeConformance:
    """Subclass and provide ``runtime_config``."""

    transport = "t"

    @pytest.fixture(autouse=True)
    def no_consumer_left_behind(self) -> Iterator[None]:
        yield
        while STARTED:
            proc = STARTED.pop()
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)

    #: how long a probe consumer runs to see that nothing is left (longer where joining takes time)
    probe_seconds = 1.5

    @pytest.fixture
    def bus(self, runtime_config: Path) -> Any:
        bus = Bus.load(runtime_config)
        yield bus
        bus.close()

    @pytest.fixture
    def queue(self, bus: Bus) -> str:
        return f"{self.exchange(bus)}.svc-{uuid.uuid4().hex[:6]}"

    def exchange(self, bus: Bus) -> str:
        return bus.config.connectors[self.transport].exchange

    def app(self, bus: Bus, queue: str, **settings: Any) -> App:
        return App(queue, transport=self.transport, exchange=self.exchange(bus), **settings)

    async def publish(self, bus: Bus, queue: str, *topics: str) -> list[Event]:
        declared = self.app(bus, queue)
        declared.subscribe("#")(lambda event: None)
        await declared.declare(bus)
        events = [bus.publish(topic, {"n": n}) for n, topic in enumerate(topics)]
        await bus.dispatcher().drain()
        return events

    async def run_until(self, app: App, bus: Bus, condition: Any, timeout: float = WAIT) -> None:
        stop = asyncio.Event()
        running = asyncio.create_task(app.run(bus, stop))
        try:
            await until(lambda: condition() or running.done(), timeout)
        finally:
            stop.set()
            await asyncio.gather(running, return_exceptions=True)
        if running.done() and not running.cancelled() and running.exception() is not None:
            raise running.exception()  # type: ignore[misc]

    async def dead_letters(self, bus: Bus, queue: str, count: int) -> list[Any]:
        transport = bus.make_transport(self.transport)
        await transport.connect()
        stream = transport.consume(QueueSpec(f"{queue}.dead"), prefetch=count)
        try:
            letters = [await asyncio.wait_for(anext(stream), WAIT) for _ in range(count)]  # type: ignore[arg-type]
            for letter in letters:
                await letter.ack()
            return [letter.message for letter in letters]
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
            await transport.close()

    async def nothing_left(self, bus: Bus, queue: str) -> bool:
        seen: list[Event] = []
        probe = self.app(bus, queue)
        probe.subscribe("#")(seen.append)
        stop = asyncio.Event()
        running = asyncio.create_task(probe.run(bus, stop))
        await asyncio.sleep(self.probe_seconds)
        stop.set()
        await running
        return not seen

    # -- the suite ---------------------------------------------------------------------------

    async def test_ack_comes_after_the_handler_and_a_death_counts_an_attempt(
        self, bus: Bus, queue: str, runtime_config: Path, tmp_path: Path
    ) -> None:
        (event,) = await self.publish(bus, queue, "rt.ack")
        blocked = Child(runtime_config, queue, "block", tmp_path / "first.log")
        blocked.wait_for(lambda calls: calls)
        assert blocked.stop(signal.SIGKILL) == -signal.SIGKILL  # mid-handler: never acked
        again = Child(runtime_config, queue, "record", tmp_path / "second.log")
        try:
            again.wait_for(lambda calls: any(c["what"] == "finish" for c in calls))
        finally:
            again.stop()
        (call,) = [c for c in again.calls() if c["what"] == "start"]
        assert (call["id"], call["attempt"]) == (event.id, 2)  # the death was counted, durably

    async def test_retry_comes_back_after_about_the_delay_with_one_attempt_more(
        self, bus: Bus, queue: str
    ) -> None:
        await self.publish(bus, queue, "rt.retry")
        seen: list[tuple[int, float]] = []
        app = self.app(bus, queue)

        @app.subscribe("#")
        def handle(got: Event, ctx: Any) -> None:
            seen.append((ctx.attempt, time.monotonic()))
            if ctx.attempt == 1:
                raise Retry(delay=1.0)

        await self.run_until(app, bus, lambda: len(seen) >= 2)
        (first, at_first), (second, at_second) = seen[:2]
        assert (first, second) == (1, 2)
        assert 0.8 <= at_second - at_first < 6.0
        assert await self.nothing_left(bus, queue)

    async def test_a_message_without_an_id_keeps_its_event_id_when_retried(
        self, bus: Bus, queue: str
    ) -> None:
        """Bugzilla's format derives the event id from the content when the message carries none
        (a foreign publisher's); the retry's copy must decode to the same id, whatever a
        transport stamps on the copies it makes (inbox, ledgers and ``dead --id`` go by it)."""
        declared = self.app(bus, queue)
        declared.subscribe("#")(lambda event: None)
        await declared.declare(bus)
        # seed 002's comment example, with the fields the schema asks for
        event = {
            "target": "comment",
            "action": "create",
            "routing_key": "comment.create",
            "bug_id": 3,
            "change_set": "1.2.3",
            "time": "2016-12-04T19:00:38",
            "user": {"id": 1, "login": "a@b", "real_name": "A"},
        }
        comment = {
            "id": 7,
            "body": "hi",
            "creation_time": "2016-12-04T18:50:38",
            "number": 2,
            "is_private": False,
            "bug": {"id": 3, "is_private": False},
        }
        body = {"event": event, "comment": comment}
        sent = WireMessage("comment.create", orjson.dumps(body), message_id=None)
        transport = bus.make_transport(self.transport)
        await transport.connect()
        try:
            (result,) = await transport.send(self.exchange(bus), [sent])
        finally:
            await transport.close()
        assert result.outcome is Outcome.DELIVERED
        seen: list[str] = []
        app = self.app(bus, queue, format="bugzilla")

        @app.subscribe("#")
        def handle(got: Event, ctx: Any) -> None:
            seen.append(got.id)
            if ctx.attempt == 1:
                raise Retry(delay=0.1)

        await self.run_until(app, bus, lambda: len(seen) >= 2)
        assert seen[0] == seen[1]

    async def test_the_attempt_limit_dead_letters_with_reason_error_and_attempts(
        self, bus: Bus, queue: str
    ) -> None:
        (event,) = await self.publish(bus, queue, "rt.limit")
        attempts: list[int] = []
        app = self.app(bus, queue, max_attempts=3, retry_schedule=[0.1])

        @app.subscribe("#")
        def handle(got: Event, ctx: Any) -> None:
            attempts.append(ctx.attempt)
            raise ValueError("boom")

        await self.run_until(app, bus, lambda: app.counters.rejected >= 1)
        assert attempts == [1, 2, 3]
        (letter,) = await self.dead_letters(bus, queue, 1)
        assert letter.message_id == event.id
        assert "failed 3 times; last error: ValueError('boom')" in str(letter.headers[REASON_HEADER])
        assert letter.headers[ATTEMPTS_HEADER] == 3
        assert letter.headers[QUEUE_HEADER] == queue

    async def test_reject_dead_letters_at_once_and_drop_forgets(self, bus: Bus, queue: str) -> None:
        rejected, _ = await self.publish(bus, queue, "rt.reject", "rt.drop")
        app = self.app(bus, queue)

        @app.subscribe("rt.reject")
        def reject(got: Event) -> None:
            raise Reject("not for us")

        @app.subscribe("rt.drop")
        def drop(got: Event) -> None:
            raise Drop()

        await self.run_until(app, bus, lambda: app.counters.rejected + app.counters.dropped >= 2)
        (letter,) = await self.dead_letters(bus, queue, 1)
        assert letter.message_id == rejected.id
        assert "rejected by handler: not for us" in str(letter.headers[REASON_HEADER])
        assert await self.nothing_left(bus, queue)

    async def test_halt_stops_the_app_and_puts_the_message_back_untouched(self, bus: Bus, queue: str) -> None:
        (event,) = await self.publish(bus, queue, "rt.halt")
        app = self.app(bus, queue)

        @app.subscribe("#")
        def halt(got: Event) -> None:
            raise Halt()

        with pytest.raises(HaltedError):
            await asyncio.wait_for(app.run(bus, asyncio.Event()), WAIT)
        again: list[tuple[str, int]] = []
        after = self.app(bus, queue)
        after.subscribe("#")(lambda got, ctx: again.append((got.id, ctx.attempt)))
        await self.run_until(after, bus, lambda: again)
        assert again == [(event.id, 1)]

    async def test_sigterm_finishes_the_handler_in_flight_and_hands_the_rest_back(
        self, bus: Bus, queue: str, runtime_config: Path, tmp_path: Path
    ) -> None:
        events = await self.publish(bus, queue, *(f"rt.stop.{n}" for n in range(5)))
        slow = Child(runtime_config, queue, "slow", tmp_path / "slow.log")
        slow.wait_for(lambda calls: calls)
        assert slow.stop(signal.SIGTERM) == 0
        first = slow.calls()
        assert [c["what"] for c in first] == ["start", "finish"]  # finished, then stopped
        rest = Child(runtime_config, queue, "record", tmp_path / "rest.log")
        try:
            rest.wait_for(lambda calls: sum(c["what"] == "finish" for c in calls) >= 4)
        finally:
            rest.stop()
        starts = [c for c in rest.calls() if c["what"] == "start"]
        assert sorted(c["id"] for c in starts) == sorted(e.id for e in events if e.id != first[0]["id"])
        assert all(c["attempt"] == 1 for c in starts)  # handed back, not counted

    async def test_the_inbox_skips_a_redelivery_of_what_was_handled(
        self, bus: Bus, queue: str, runtime_config: Path, tmp_path: Path
    ) -> None:
        (event,) = await self.publish(bus, queue, "rt.inbox")
        dying = Child(runtime_config, queue, "inbox-kill", tmp_path / "dying.log")
        dying.wait_for(lambda calls: calls)
        assert dying.proc.wait(30) == -signal.SIGKILL
        second = Child(runtime_config, queue, "inbox-kill", tmp_path / "second.log")
        try:  # the redelivery arrives, and the inbox skips it
            second.wait_for(lambda calls: any(c["what"] == "duplicates" for c in calls))
        finally:
            second.stop()
        assert [c for c in second.calls() if c["what"] != "duplicates"] == []  # the handler never ran again
        assert self._effects(bus) == [event.id]  # the side effect happened once

    @staticmethod
    def _effects(bus: Bus) -> list[str]:
        path = bus.config.home_path() / "inbox.db"
        with sqlite3.connect(path) as db:
            try:
                return [row[0] for row in db.execute("SELECT id FROM effects")]
            except sqlite3.OperationalError:
                return []
