"""tidings.testing.deliver: the real runtime's handling, handed events from the outbox in-process."""

from __future__ import annotations

import threading

import pytest

from tidings import App, Bus, Context, Drop, Event, Halt, Reject, Retry
from tidings.testing import deliver, deliver_sync, published


@pytest.fixture
def app() -> App:
    return App("svc", max_attempts=3, retry_schedule=[7, 11])


async def test_only_events_the_queue_is_bound_by_are_delivered(
    bus: Bus, app: App, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[str] = []
    app.subscribe("build.*")(lambda event: seen.append(event.topic))
    app.settings.bindings = ["audit.#"]  # bound, with no handler: acked without a call
    for topic in ("build.new", "test.done", "build.x.y", "audit.log", "build.done"):
        bus.publish(topic, {})
    report = await deliver(bus, app)
    assert [(o.event.topic, o.state) for o in report] == [
        ("build.new", "acked"),
        ("audit.log", "acked"),
        ("build.done", "acked"),
    ]
    assert seen == ["build.new", "build.done"]
    assert (app.counters.handled, app.counters.unhandled) == (2, 1)  # audit.log: no handler ran
    assert "no handler takes" not in caplog.text  # bound by its own settings: acked on purpose


async def test_delivering_twice_hands_over_only_what_came_since(bus: Bus, app: App) -> None:
    seen: list[int] = []
    app.subscribe("#")(lambda event: seen.append(event.body["n"]))
    bus.publish("a.b", {"n": 1})
    bus.publish("a.b", {"n": 2})
    assert len(await deliver(bus, app)) == 2
    assert len(await deliver(bus, app)) == 0
    bus.publish("a.b", {"n": 3})
    assert [o.event.body["n"] for o in await deliver(bus, app)] == [3]
    assert seen == [1, 2, 3]


async def test_each_queue_has_its_own_cursor(bus: Bus) -> None:
    first, second = App("first"), App("second")
    for app in (first, second):
        app.subscribe("#")(lambda event: None)
    bus.publish("a.b", {})
    assert len(await deliver(bus, first)) == 1
    assert len(await deliver(bus, second)) == 1
    same_queue = App("other", queue="first")  # a second consumer of one queue: the broker's one copy
    same_queue.subscribe("#")(lambda event: None)
    assert len(await deliver(bus, same_queue)) == 0


async def test_what_handlers_publish_is_delivered_next_time(bus: Bus, app: App) -> None:
    @app.subscribe("step.*")
    async def forward(event: Event) -> None:
        if event.topic == "step.one":
            await bus.apublish("step.two", {"after": event.id})

    bus.publish("step.one", {})
    assert [o.event.topic for o in await deliver(bus, app)] == ["step.one"]
    assert [o.event.topic for o in await deliver(bus, app)] == ["step.two"]
    assert [e.topic for e in published(bus)] == ["step.one", "step.two"]


async def test_handlers_get_a_context_sync_ones_run_in_a_thread(bus: Bus, app: App) -> None:
    calls: list[tuple[str, object]] = []

    @app.subscribe("a.b")
    def with_context(event: Event, ctx: Context) -> None:
        calls.append(("sync", (ctx.attempt, ctx.queue, ctx.app, ctx.event_id == event.id)))
        calls.append(("thread", threading.current_thread().name.startswith("tidings-svc")))

    @app.subscribe("a.*")
    async def without(event: Event) -> None:
        calls.append(("async", threading.current_thread() is threading.main_thread()))

    bus.publish("a.b", {})
    (await deliver(bus, app)).assert_acked()
    assert calls == [("sync", (1, "svc", "svc", True)), ("thread", True), ("async", True)]


async def test_settling_follows_the_runtime_s_rules(bus: Bus, app: App) -> None:
    @app.subscribe("#")
    async def handler(event: Event) -> None:
        what = event.topic.split(".")[0]
        if what == "retry":
            raise Retry(delay=3, reason="not yet")
        if what == "scheduled":
            raise Retry()
        if what == "fails":
            raise ValueError("boom")
        if what == "drop":
            raise Drop()
        if what == "reject":
            raise Reject("not for us")

    for what in ("retry", "scheduled", "fails", "drop", "reject", "fine"):
        bus.publish(f"{what}.x", {})
    report = await deliver(bus, app)
    assert [(o.state, o.delay) for o in report] == [
        ("retry", 3),
        ("retry", 7),  # the app's schedule: attempt 1
        ("retry", 7),
        ("acked", None),
        ("dead", None),
        ("acked", None),
    ]
    assert report[0].reason == "Retry('not yet')" and isinstance(report[0].error, Retry)
    assert report[3].dropped and not report[5].dropped and report[5].error is None
    assert report[4].reason == "rejected by handler: not for us"
    assert (app.counters.retried, app.counters.dropped, app.counters.rejected) == (3, 1, 1)


@pytest.mark.parametrize("asynchronous", [True, False])
async def test_a_handler_calling_sys_exit_fails_that_message_and_the_consumer_goes_on(
    bus: Bus, app: App, asynchronous: bool
) -> None:
    import sys

    def leave(event: Event) -> None:
        if event.body.get("exit"):
            sys.exit(0)

    async def leave_async(event: Event) -> None:
        leave(event)

    app.add_handler(["#"], leave_async if asynchronous else leave)
    bus.publish("a.b", {"exit": True})
    bus.publish("a.c", {})
    report = await deliver(bus, app)
    assert [o.state for o in report] == ["retry", "acked"]
    assert isinstance(report[0].error, SystemExit)


async def test_retries_come_back_one_attempt_later_until_the_limit(bus: Bus, app: App) -> None:
    attempts: list[int] = []

    @app.subscribe("#")
    def always_fails(event: Event, ctx: Context) -> None:
        attempts.append(ctx.attempt)
        raise ValueError("still broken")

    bus.publish("a.b", {})
    report = await deliver(bus, app)
    report = await deliver(bus, app, retries=report)
    assert [(o.state, o.attempt, o.delay) for o in report] == [("retry", 2, 11)]
    report = await deliver(bus, app, retries=report)
    assert [(o.state, o.attempt) for o in report] == [("dead", 3)]
    assert report[0].reason == "failed 3 times; last error: ValueError('still broken')"
    assert len(await deliver(bus, app, retries=report)) == 0
    assert attempts == [1, 2, 3]


async def test_halt_puts_it_and_what_follows_back_for_next_time(bus: Bus, app: App) -> None:
    halting = True

    @app.subscribe("#")
    async def handler(event: Event) -> None:
        if event.topic == "stop.now" and halting:
            raise Halt()

    for topic in ("before.it", "stop.now", "after.it"):
        bus.publish(topic, {})
    report = await deliver(bus, app)
    assert [o.state for o in report] == ["acked", "released", "released"]
    assert report.halted and isinstance(report[1].error, Halt) and report[2].error is None
    halting = False
    assert [(o.event.topic, o.state) for o in await deliver(bus, app)] == [
        ("stop.now", "acked"),
        ("after.it", "acked"),
    ]


async def test_an_event_the_app_s_format_cannot_carry_is_refused(bus: Bus) -> None:
    app = App("triager", format="cki", transport="rabbit")  # a transport this bus does not have
    app.subscribe("datawarehouse.#")(lambda event: None)
    bus.publish("datawarehouse.checkout.new", {"not": "a DataWarehouse body"})
    [outcome] = await deliver(bus, app)
    assert outcome.state == "refused"
    assert outcome.reason.startswith("cannot encode for cki: ")


async def test_the_inbox_and_its_transaction_are_the_real_ones(bus: Bus) -> None:
    app = App("once", inbox=True)

    @app.subscribe("#")
    def handler(event: Event, ctx: Context) -> None:
        with ctx.transaction() as db:
            db.execute("CREATE TABLE IF NOT EXISTS seen (id TEXT)")
            db.execute("INSERT INTO seen VALUES (?)", (event.id,))

    event = bus.publish("a.b", {})
    (await deliver(bus, app)).assert_acked()
    assert bus.inbox().seen("once", event.id)


async def test_assert_acked_lists_the_others_and_raises_from_the_handler_s_error(bus: Bus, app: App) -> None:
    @app.subscribe("#")
    def handler(event: Event) -> None:
        if event.body["n"] == 2:
            raise KeyError("missing")

    bus.publish("a.b", {"n": 1})
    bus.publish("a.b", {"n": 2})
    report = await deliver(bus, app)
    with pytest.raises(AssertionError) as failed:
        report.assert_acked()
    assert str(failed.value) == (
        "1 of 2 event(s) not acked:\n  retry in 7s, attempt 1: a.b {\"n\":2} (KeyError('missing'))"
    )
    assert isinstance(failed.value.__cause__, KeyError)


def test_deliver_sync_runs_without_a_loop(bus: Bus, app: App) -> None:
    app.subscribe("#")(lambda event: None)
    bus.publish("a.b", {})
    deliver_sync(bus, app).assert_acked()


async def test_deliver_sync_in_a_loop_says_what_to_use(bus: Bus, app: App) -> None:
    with pytest.raises(RuntimeError, match=r"use await deliver\(bus, app\)"):
        deliver_sync(bus, app)


async def test_only_what_a_connector_would_send_is_delivered(tmp_path: object) -> None:
    """deliver matched the queue's bindings alone: an event no connector on the app's exchange
    sends (its topics, its filter) was handed over and acked in the test, never in production."""
    import msgspec

    from tests.conftest import embedded_config
    from tidings.config import ConnectorConfig

    config = embedded_config(tmp_path / "home", source="test")  # type: ignore[operator]
    only = ConnectorConfig(
        transport="local", topics=["datawarehouse.#"], filter={"not": {"field": "data.skip", "equals": True}}
    )
    bus = Bus(msgspec.structs.replace(config, connectors={"local": only}))
    try:
        app = App("svc")
        app.subscribe("#")(lambda event: None)
        for topic, body in (
            ("bodhi.update", {}),
            ("datawarehouse.a", {}),
            ("datawarehouse.b", {"skip": True}),
        ):
            bus.publish(topic, body)
        assert [o.event.topic for o in await deliver(bus, app)] == ["datawarehouse.a"]
        elsewhere = App("other", exchange="cki")  # no connector there (a test config): every event
        elsewhere.subscribe("#")(lambda event: None)
        assert len(await deliver(bus, elsewhere)) == 3
    finally:
        bus.close()


async def test_an_event_a_retry_puts_back_comes_again_with_the_retries(bus: Bus, app: App) -> None:
    tries: list[int] = []

    @app.subscribe("#")
    def handler(event: Event, ctx: Context) -> None:
        tries.append(ctx.attempt)
        if len(tries) == 1:
            raise Retry()
        if len(tries) == 2:
            raise Halt()

    bus.publish("a.b", {})
    first = await deliver(bus, app)
    assert [o.state for o in first] == ["retry"]
    second = await deliver(bus, app, retries=first)
    assert [o.state for o in second] == ["released"]
    third = await deliver(bus, app, retries=second)  # put back: it comes again, at the same attempt
    assert [o.state for o in third] == ["acked"] and tries == [1, 2, 2]
