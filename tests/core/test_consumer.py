"""The consumer runtime on the embedded broker: acks, flow-control exceptions, dead letters, inbox."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import pytest

from tests.transports.conformance import take
from tests.waiting import WAIT, until
from tidings import App, Bus, Drop, Event, Halt, Reject, Retry
from tidings.consumer import Context
from tidings.errors import ConfigError, HaltedError, StorageError, TransportError
from tidings.runner import Runner
from tidings.testing.delivering import Handover
from tidings.transport import QueueSpec, WireMessage


class Running:
    """An app and the dispatcher running in the background of a test."""

    def __init__(self, bus: Bus, app: App) -> None:
        self.bus, self.app = bus, app
        self.stop = asyncio.Event()
        self.tasks: list[asyncio.Task[Any]] = []

    async def __aenter__(self) -> Running:
        await self.app.declare(self.bus)
        self.tasks = [
            asyncio.create_task(self.app.run(self.bus, self.stop)),
            asyncio.create_task(self.bus.dispatcher().run(self.stop)),
        ]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def dead_letters(bus: Bus, queue: str, count: int) -> list[Any]:
    transport = bus.make_transport("local")
    await transport.connect()
    try:
        return await take(transport, QueueSpec(f"{queue}.dead"), count)
    finally:
        await transport.close()


@pytest.fixture
def fast_app() -> App:
    return App("svc", max_attempts=3, retry_schedule=[0.05], prefetch=10, concurrency=4)


async def test_sync_and_async_handlers_get_matching_events(bus: Bus, fast_app: App) -> None:
    seen: list[tuple[str, str]] = []
    lock = threading.Lock()

    @fast_app.subscribe("build.*")
    def sync_handler(event: Event) -> None:
        with lock:
            seen.append(("sync", event.topic))

    @fast_app.subscribe("build.#", "test.done")
    async def async_handler(event: Event, ctx: Context) -> None:
        assert ctx.attempt == 1
        seen.append(("async", event.topic))

    async with Running(bus, fast_app):
        for topic in ("build.new", "build.x.y", "test.done", "other.thing"):
            await bus.apublish(topic, {"n": 1})
        await until(lambda: fast_app.counters.handled == 3)
    assert sorted(seen) == [
        ("async", "build.new"),
        ("async", "build.x.y"),
        ("async", "test.done"),
        ("sync", "build.new"),
    ]


async def test_a_member_acks_what_no_handler_of_its_own_takes_and_says_so_once_per_topic(
    bus: Bus, caplog: pytest.LogCaptureFixture
) -> None:
    """Two members of one queue subscribed differently (a deploy under way): what the old member
    is given of the new member's subscription, it acks without a call — and warns, once per
    topic; what a binding of its own settings brings (with no handler: on purpose), in silence."""
    old = App("svc", prefetch=10, bindings=["audit.#"])
    new = App("svc", prefetch=10)
    seen: list[str] = []
    old.subscribe("a.#")(lambda event: seen.append(event.topic))
    new.subscribe("a.#", "b.#")(lambda event: None)
    await new.declare(bus)  # binds b.# to the queue they share
    for topic in ("a.1", "b.1", "b.1", "b.2", "audit.x"):
        bus.publish(topic, {})
    await bus.dispatcher().drain()
    caplog.set_level(logging.WARNING, logger="tidings.runner")
    async with Running(bus, old):
        await until(lambda: old.counters.handled + old.counters.unhandled == 5)
    assert seen == ["a.1"]
    assert (old.counters.handled, old.counters.unhandled) == (1, 4)  # acked without a call: not "handled"
    warned = [r.getMessage() for r in caplog.records if "no handler takes" in r.getMessage()]
    assert len(warned) == 2, warned
    assert warned[0].startswith("svc: no handler takes 'b.1' (routing key 'b.1'): acked without a call")


async def test_queues_bound_for_other_topics_spend_no_attempt_of_a_waiting_unroutable_event(
    bus: Bus,
) -> None:
    """Each binding on the embedded broker makes the connector try its unroutable events at once;
    one still unroutable must keep its attempts (restarted consumers dead-lettered them)."""
    connector = bus.config.connectors["local"]
    connector.retry_schedule, connector.max_attempts = [600.0], 3
    stop = asyncio.Event()
    dispatching = asyncio.create_task(bus.dispatcher().run(stop))
    try:
        event = bus.publish("lonely.one", {})
        await until(lambda: bus.outbox.status(["local"])[0].backlog == 1)
        for n in range(4):  # more bindings than the connector has attempts
            other = App(f"other{n}")
            other.subscribe(f"other{n}.#")(lambda got: None)
            await other.declare(bus)
            await asyncio.sleep(0.7)  # the connector looks at the broker's bindings twice a second
        (entry,) = bus.outbox.entries("local", "backlog")
        assert (entry["id"], entry["attempts"]) == (event.id, 1)
        seen: list[str] = []
        taker = App("taker")
        taker.subscribe("lonely.#")(lambda got: seen.append(got.id))
        await taker.declare(bus)  # bound at last: it goes out at once
        done = asyncio.Event()
        taking = asyncio.create_task(taker.run(bus, done))
        await until(lambda: seen == [event.id])
        done.set()
        await taking
    finally:
        stop.set()
        await dispatching
    assert bus.outbox.status(["local"])[0].dead == 0


async def test_flow_control_exceptions(bus: Bus, fast_app: App, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="tidings.runner")
    calls: dict[str, int] = {}

    @fast_app.subscribe("#")
    async def handler(event: Event) -> None:
        calls[event.topic] = calls.get(event.topic, 0) + 1
        if event.topic == "retry.once" and calls[event.topic] == 1:
            raise Retry(0.05)
        if event.topic == "drop":
            raise Drop()
        if event.topic == "reject":
            raise Reject("not for us")
        if event.topic == "always.fails":
            raise ValueError("boom")

    async with Running(bus, fast_app):
        for topic in ("retry.once", "drop", "reject", "always.fails", "fine"):
            await bus.apublish(topic, {})
        await until(lambda: fast_app.counters.handled == 2 and fast_app.counters.rejected == 2)
    assert calls == {"retry.once": 2, "drop": 1, "reject": 1, "always.fails": 3, "fine": 1}
    assert fast_app.counters.dropped == 1
    letters = await dead_letters(bus, "svc", 2)
    reasons = {m.message.routing_key: m.message.headers["x-tidings-reason"] for m in letters}
    assert "not for us" in reasons["reject"]
    # a rejection is said, as a failure on its last attempt is (it was only counted)
    assert any("dead-lettered: rejected by handler: not for us" in r.getMessage() for r in caplog.records)
    assert "failed 3 times" in reasons["always.fails"] and "boom" in reasons["always.fails"]


async def test_a_handler_that_returns_its_work_undone_fails_instead_of_acking(
    bus: Bus, fast_app: App
) -> None:
    """A coroutine it forgot to await, a sync decorator around an async handler, a generator,
    an async __call__ of a base class: each was acked "handled" without its body running."""
    import functools

    ran: list[str] = []

    async def work(event: Event) -> None:
        ran.append(event.topic)

    def logged(handler: Any) -> Any:
        @functools.wraps(handler)
        def wrapper(*args: Any) -> Any:
            return handler(*args)

        return wrapper

    class Base:
        async def __call__(self, event: Event) -> None:
            ran.append(event.topic)

    class Inherits(Base):
        pass

    fast_app.add_handler(["not.awaited"], lambda event: work(event))
    fast_app.add_handler(["sync.decorator"], logged(work))
    fast_app.add_handler(["a.generator"], lambda event: (yield))  # a generator function
    fast_app.add_handler(["inherited.call"], Inherits())
    async with Running(bus, fast_app):
        for topic in ("not.awaited", "sync.decorator", "a.generator", "inherited.call"):
            await bus.apublish(topic, {})
        await until(lambda: fast_app.counters.rejected == 3 and fast_app.counters.handled == 1)
    assert ran == ["inherited.call"] and fast_app.counters.retried == 6  # 3 tries each, then dead
    reasons = [m.message.headers["x-tidings-reason"] for m in await dead_letters(bus, "svc", 3)]
    assert all("instead of running it: await it" in reason for reason in reasons), reasons


class Unusual(BaseException):
    """Not an Exception: a handler may still raise it."""


async def test_a_handler_raising_any_base_exception_is_retried_not_left_unsettled(
    bus: Bus, fast_app: App
) -> None:
    tries: dict[str, int] = {}

    @fast_app.subscribe("base", "cancelled", "keyboard")
    async def handler(event: Event) -> None:
        tries[event.topic] = tries.get(event.topic, 0) + 1
        if tries[event.topic] == 1:
            raise {"base": Unusual(), "cancelled": asyncio.CancelledError(), "keyboard": KeyboardInterrupt()}[
                event.topic
            ]

    @fast_app.subscribe("sync.#")
    def sync_handler(event: Event) -> None:
        tries[event.topic] = tries.get(event.topic, 0) + 1
        if tries[event.topic] == 1:
            raise GeneratorExit()

    async with Running(bus, fast_app):
        for topic in ("base", "cancelled", "keyboard", "sync.exit"):
            await bus.apublish(topic, {})
        await until(lambda: fast_app.counters.handled == 4)
    assert tries == {"base": 2, "cancelled": 2, "keyboard": 2, "sync.exit": 2}
    assert fast_app.counters.retried == 4


async def test_invalid_messages_go_to_dead_letters_without_a_requeue_loop(bus: Bus, fast_app: App) -> None:
    handled: list[str] = []
    fast_app.subscribe("#")(lambda event: handled.append(event.topic))
    async with Running(bus, fast_app):
        transport = bus.make_transport("local")
        await transport.connect()
        garbage = WireMessage("bad.json", b"{not json", headers={"ce_specversion": "1.0"})
        foreign = WireMessage("no.headers", b"{}")
        # a valid time whose UTC is before year 1: it raised OverflowError, and stayed unsettled
        early = bus.make_format("tidings").encode(bus.event("early", {}))
        early.headers["ce_time"] = "0001-01-01T00:30:00+01:00"
        await transport.send("tidings", [garbage, foreign, early])
        await transport.close()
        await bus.apublish("good", {})
        await until(lambda: fast_app.counters.rejected == 3 and handled == ["good"])
    letters = await dead_letters(bus, "svc", 3)
    assert {m.attempt for m in letters} == {1}  # straight there, no retries
    assert all("invalid message" in m.message.headers["x-tidings-reason"] for m in letters)
    (early_letter,) = [m for m in letters if m.message.routing_key == "early"]
    assert "out of range in UTC" in early_letter.message.headers["x-tidings-reason"]


async def test_a_format_that_fails_unexpectedly_dead_letters_the_message(
    bus: Bus, fast_app: App, caplog: pytest.LogCaptureFixture
) -> None:
    """A format's own bug (a plug-in's) must not leave the message unsettled, holding its place."""
    fast_app.subscribe("#")(lambda event: None)
    runner = Runner(fast_app, bus)

    class Broken:
        name = "broken"

        def decode(self, message: WireMessage) -> Event:
            raise KeyError("ce_what")

    runner.format = Broken()  # type: ignore[assignment]
    handed = Handover(WireMessage("a.b", b"{}"))
    try:
        with caplog.at_level(logging.ERROR, logger="tidings"):
            assert await runner.handle(handed) is None
    finally:
        runner.close()
    assert handed.settled is not None and handed.settled[0] == "dead"
    assert "the broken format failed on it: KeyError" in str(handed.settled)
    assert fast_app.counters.rejected == 1
    assert "tidings bug" not in caplog.text


async def test_a_settle_that_fails_without_the_handlers_is_a_warning_not_a_bug(
    bus: Bus, fast_app: App, caplog: pytest.LogCaptureFixture
) -> None:
    """An invalid message whose dead-lettering the broker refuses comes back later: the runtime
    says so, in one line, and goes on (it is not an error of tidings)."""

    class Refusing(Handover):
        async def reject(self, reason: str, *, attempts: int | None = None) -> None:
            raise TransportError("the broker is gone")

    runner = Runner(fast_app, bus)
    refused = Refusing(WireMessage("bad.json", b"{not json"))
    try:
        with caplog.at_level(logging.WARNING, logger="tidings"):
            assert await runner.handle(refused) is None
    finally:
        runner.close()
    (line,) = [r.getMessage() for r in caplog.records if "could not settle" in r.getMessage()]
    assert "the broker is gone" in line and "delivered again" in line
    assert refused.settled is not None and refused.settled[0] == "released"  # not left holding it


async def test_a_journal_that_cannot_be_read_hands_the_message_back(
    bus: Bus, fast_app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Asked for every redelivered message: failing, it must not leave the message unsettled."""
    fast_app.subscribe("#")(lambda event: None)
    runner = Runner(fast_app, bus)

    def unreadable(*args: object, **kwargs: object) -> int:
        raise StorageError("handling journal deaths.db: disk I/O error")

    monkeypatch.setattr(runner.journal, "deaths", unreadable)
    came_back = Handover(bus.make_format("tidings").encode(bus.event("a.b", {})), redelivered=True)
    try:
        assert await runner.handle(came_back) is None
    finally:
        runner.close()
    assert came_back.settled is not None and came_back.settled[0] == "released"


async def test_halt_puts_the_message_back_and_stops(bus: Bus, fast_app: App) -> None:
    @fast_app.subscribe("#")
    async def handler(event: Event) -> None:
        raise Halt()

    await fast_app.declare(bus)
    await bus.apublish("x", {})
    stop = asyncio.Event()
    dispatching = asyncio.create_task(bus.dispatcher().run(stop))
    with pytest.raises(HaltedError):
        await asyncio.wait_for(fast_app.run(bus, asyncio.Event()), WAIT)
    stop.set()
    await dispatching
    transport = bus.make_transport("local")
    await transport.connect()
    (again,) = await take(transport, fast_app.queue_spec(), 1)
    await transport.close()
    assert again.attempt == 1  # released, not counted


async def test_concurrency_bounds_the_handlers_running_at_once(bus: Bus) -> None:
    app = App("bounded", prefetch=20, concurrency=3)
    running_now, most, done = 0, 0, []

    @app.subscribe("#")
    async def slow(event: Event) -> None:
        nonlocal running_now, most
        running_now += 1
        most = max(most, running_now)
        await asyncio.sleep(0.05)
        running_now -= 1
        done.append(event.id)

    async with Running(bus, app):
        await bus.apublish_many([bus.event(f"c.{n}", {}) for n in range(12)])
        await until(lambda: len(done) == 12)
    assert most == 3  # never more than the bound, and the bound is used


async def test_shutdown_finishes_the_handler_in_flight(bus: Bus, fast_app: App) -> None:
    started, finished = asyncio.Event(), []

    @fast_app.subscribe("#")
    async def slow(event: Event) -> None:
        started.set()
        await asyncio.sleep(0.3)
        finished.append(event.id)

    running = Running(bus, fast_app)
    await running.__aenter__()
    event = await bus.apublish("slow", {})
    await asyncio.wait_for(started.wait(), WAIT)
    await running.__aexit__()
    assert finished == [event.id]
    transport = bus.make_transport("local")
    await transport.connect()
    assert await transport.queue_depth("svc") == 0  # it was acked, not left for redelivery
    await transport.close()


async def test_inbox_swallows_a_redelivered_event(bus: Bus) -> None:
    app = App("once", inbox=True, retry_schedule=[0.05])
    handled: list[str] = []
    app.subscribe("#")(lambda event: handled.append(event.id))
    event = bus.event("dup", {})
    async with Running(bus, app):
        await bus.apublish(event)
        await until(lambda: handled == [event.id])
        transport = bus.make_transport("local")  # the same event id arrives again (a producer retry)
        await transport.connect()
        await transport.send("tidings", [bus.make_format("tidings").encode(event)])
        await transport.close()
        await until(lambda: app.counters.duplicates == 1)
    assert handled == [event.id]


async def test_attempts_survive_a_restart_of_the_consumer(bus: Bus) -> None:
    attempts: list[int] = []

    def make_app() -> App:
        app = App("restart", max_attempts=3, retry_schedule=[0.05])

        @app.subscribe("#")
        async def failing(event: Event, ctx: Context) -> None:
            attempts.append(ctx.attempt)
            raise RuntimeError("still broken")

        return app

    first = make_app()
    async with Running(bus, first):
        await bus.apublish("x", {})
        await until(lambda: len(attempts) == 2)
    second = make_app()
    async with Running(bus, second):
        await until(lambda: second.counters.rejected == 1)
    assert attempts[-1] == 3
    assert len(attempts) == 3


async def test_side_effects_through_the_inbox_transaction_happen_once(bus: Bus) -> None:
    app = App("effects", inbox=True)
    calls: list[str] = []

    @app.subscribe("#")
    def handler(event: Event, ctx: Context) -> None:
        calls.append(event.id)
        with ctx.transaction() as db:
            db.execute("CREATE TABLE IF NOT EXISTS effects (id TEXT)")
            db.execute("INSERT INTO effects VALUES (?)", (event.id,))

    event = bus.event("fx", {})
    async with Running(bus, app):
        await bus.apublish(event)
        await until(lambda: app.counters.handled == 1)
        transport = bus.make_transport("local")  # the same event again, as after a crash before the ack
        await transport.connect()
        await transport.send("tidings", [bus.make_format("tidings").encode(event)])
        await transport.close()
        await until(lambda: app.counters.duplicates == 1)
    rows = bus.inbox()._db.execute("SELECT id FROM effects").fetchall()
    assert rows == [(event.id,)]
    assert calls == [event.id]


async def test_async_handlers_awaiting_inside_their_transactions_do_not_stop_the_consumer(bus: Bus) -> None:
    """A threading lock held across an ``await``: the next message's inbox look waited for it on
    the event loop, and the loop, the handler holding it, and the whole consumer stood still."""
    app = App("awaits", inbox=True, concurrency=8, retry_schedule=[0.05], max_attempts=50)
    committed: list[str] = []

    @app.subscribe("tx.#")
    async def handler(event: Event, ctx: Context) -> None:
        async with ctx.atransaction() as db:
            db.execute("CREATE TABLE IF NOT EXISTS effects (id TEXT)")
            await asyncio.sleep(0.05)
            db.execute("INSERT INTO effects VALUES (?)", (event.id,))
        committed.append(event.id)

    @app.subscribe("sync.#")
    async def sync_style(event: Event, ctx: Context) -> None:
        with ctx.transaction() as db:  # no await inside: fine on the loop
            db.execute("CREATE TABLE IF NOT EXISTS effects (id TEXT)")
            db.execute("INSERT INTO effects VALUES (?)", (event.id,))
        committed.append(event.id)

    async with Running(bus, app):
        await bus.apublish_many([bus.event(f"tx.{n}", {}) for n in range(6)] + [bus.event("sync.a", {})])
        await until(lambda: len(committed) == 7, timeout=20)
    rows = bus.inbox()._db.execute("SELECT count(*) FROM effects").fetchone()
    assert rows == (7,)  # each once


async def test_transaction_without_inbox_is_a_clear_error(bus: Bus) -> None:
    app = App("no-inbox", max_attempts=1)
    errors: list[str] = []

    @app.subscribe("#")
    def handler(event: Event, ctx: Context) -> None:
        try:
            with ctx.transaction():
                pass
        except Exception as exc:
            errors.append(str(exc))
            raise

    async with Running(bus, app):
        await bus.apublish("x", {})
        await until(lambda: app.counters.rejected == 1)
    assert errors == ["ctx.transaction() needs the inbox: App('no-inbox', inbox=True)"]


def test_a_handler_the_runtime_cannot_call_is_refused_when_it_is_added() -> None:
    def three(event: Event, ctx: Context, extra: int) -> None: ...

    app = App("svc")
    with pytest.raises(ConfigError, match=r"handler .*three cannot be called with the event and its context"):
        app.subscribe("a.#")(three)
    app.subscribe("a.#")(lambda event, name="bound": None)  # a default for the second: the event only


def test_an_app_needs_a_name() -> None:
    # on RabbitMQ an empty queue name makes the broker name a new durable queue at every declare
    for name in ("", "  "):
        with pytest.raises(ConfigError, match="an app needs a name"):
            App(name)


def test_retry_takes_a_reason_as_reject_does() -> None:
    assert (Retry("builds not in yet").delay, str(Retry("builds not in yet"))) == (None, "builds not in yet")
    assert (Retry(30).delay, str(Retry(30, reason="later"))) == (30, "later")
    with pytest.raises(ValueError, match="Retry delay"):
        Retry(True)  # type: ignore[arg-type]


def test_halt_under_run_forever_ends_with_exit_8_in_one_line(tmp_path: Any) -> None:
    import subprocess
    import sys

    from tests.clirun import ROOT

    (tmp_path / "service.py").write_text(
        "import asyncio\n"
        "from tidings import App, Bus, Halt\n"
        "app = App('stopper')\n"
        "@app.subscribe('a.#')\n"
        "def handle(event):\n"
        "    raise Halt()\n"
        "bus = Bus.load()\n"
        "asyncio.run(app.declare(bus))\n"
        "bus.publish('a.b', {})\n"
        "asyncio.run(bus.dispatcher().deliver_due())\n"
        "app.run_forever(bus)\n"
    )
    done = subprocess.run(
        [sys.executable, "service.py"],
        cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 8, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "tidings: error: app stopper halted by its handler"
    assert "Traceback" not in done.stderr


def test_a_function_subscribed_twice_is_called_once_per_event() -> None:
    app = App("twice")
    calls: list[str] = []

    @app.subscribe("s.twice")
    @app.subscribe("s.*")
    def handler(event: Event) -> None:
        calls.append(event.topic)

    assert [sub.handler for sub in app.handlers_for("s.twice")] == [handler]
    assert [sub.handler for sub in app.handlers_for("s.other")] == [handler]


async def test_inbox_waits_park_no_thread_of_the_loop_s_executor(tmp_path: Any) -> None:
    """Waiting for the inbox's lock on the loop's shared executor: with its threads all parked
    there, the holder's own to_thread (a DNS lookup) could not run, and nothing moved again."""
    from concurrent.futures import ThreadPoolExecutor

    from tidings.inbox import Inbox

    inbox = Inbox(tmp_path / "inbox.db")
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=2))

    async def holder() -> None:
        async with inbox.atransaction("svc", "e1"):
            await asyncio.sleep(0.05)
            await asyncio.to_thread(lambda: None)  # needs a thread of the shared executor

    waiting = [inbox.aseen("svc", f"e{n}") for n in range(2, 6)]
    await asyncio.wait_for(asyncio.gather(holder(), *waiting), 10)
    assert await inbox.aseen("svc", "e1")
    inbox.close()
