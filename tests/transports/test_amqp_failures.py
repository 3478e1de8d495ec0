"""RabbitMQ saying no: each refusal is one clear line, quickly, and nothing hangs."""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiormq
import pamqp.commands
import pytest

from tests.conftest import delete_amqp_topology
from tests.faults.rig import rabbitmqctl, write_config
from tests.transports.conformance import hold, message, refused_retry_comes_back
from tidings import App, Bus, Event
from tidings.config import load_config
from tidings.errors import ConfigError, TransportError
from tidings.transport import Binding, ExchangeSpec, Outcome, QueueSpec, SendResult, Topology, WireMessage
from tidings.transports.amqp import AmqpTransport
from tidings.transports.amqp.transport import amqp_name_problem

pytestmark = pytest.mark.rabbitmq


async def connect_and_check_a_missing_exchange(transport: AmqpTransport) -> None:
    await transport.connect()
    await transport.declare(Topology([ExchangeSpec(f"missing.{uuid.uuid4().hex}", passive=True)]))


async def one_line_error(transport: AmqpTransport, within: float = 12.0) -> str:
    started = time.monotonic()
    try:
        with pytest.raises(TransportError) as caught:
            await connect_and_check_a_missing_exchange(transport)
    finally:
        await transport.close()
    assert time.monotonic() - started < within
    assert "\n" not in str(caught.value)
    return str(caught.value)


async def test_refused_credentials(rabbitmq: str) -> None:
    message = await one_line_error(AmqpTransport("amqp://guest:not-the-password@127.0.0.1:5672/"))
    assert "ACCESS_REFUSED, 403" in message and "not-the-password" not in message


async def test_a_missing_exchange_on_a_passive_declare(rabbitmq: str) -> None:
    message = await one_line_error(AmqpTransport(rabbitmq))
    assert "does not exist (404 NOT_FOUND)" in message and "missing." in message


async def test_an_unreachable_broker() -> None:
    message = await one_line_error(AmqpTransport("amqp://guest:guest@127.0.0.1:9/", connect_timeout=3))
    assert "127.0.0.1:9" in message


@pytest.mark.parametrize(
    "url", ["rabbitmq.example.org", "http://127.0.0.1:5672/", "amqp://", "amqp://guest:pw@:5672/"]
)
def test_a_malformed_url_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError, match="amqp transport: url") as caught:
        AmqpTransport(url)
    assert "pw" not in str(caught.value)


async def test_a_name_amqp_cannot_carry_is_one_config_line_before_anything_is_declared(
    rabbitmq: str,
) -> None:
    """The client library raises a bare ValueError on these; the user needs the name and the rule."""
    transport = AmqpTransport(rabbitmq, retry_delays=[1])
    try:
        for topology, problem in (
            (Topology([ExchangeSpec("e" * 128)]), "128 characters, over the 127"),
            (Topology([ExchangeSpec("bug\\x")]), "only letters, digits"),
            (Topology([], [QueueSpec("q" * 250, [])]), "over AMQP's 255"),  # its retry queue is longer
        ):
            with pytest.raises(ConfigError, match=problem):
                await transport.declare(topology)
    finally:
        await transport.close()
    # the limit is the client library's own: one character less passes both
    pamqp.commands.Exchange.Declare(exchange="e" * 127)
    assert amqp_name_problem("e" * 127, "exchange") is None


async def test_a_retry_into_a_queue_that_is_gone_hands_the_message_back_after_a_while(
    rabbitmq: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its copy is refused (mandatory: no queue took it), so the original is not acked; left
    unsettled it would keep its prefetch place on a channel that is fine, handed back at once its
    handler would run in a loop. It comes back, after a backoff."""
    exchange, name = f"gone.{uuid.uuid4().hex[:6]}", f"gone-{uuid.uuid4().hex[:6]}"
    queue = QueueSpec(name, [Binding(exchange, "gone.#")])
    transport = AmqpTransport(rabbitmq, retry_delays=[1])
    try:
        await transport.declare(Topology([ExchangeSpec(exchange)], [queue]))
        sent = message("gone.one")
        await transport.send(exchange, [sent])
        stream = transport.consume(queue, prefetch=1)
        (delivery,) = await hold(stream, 1)
        await asyncio.to_thread(rabbitmqctl, "delete_queue", f"{name}.retry.1s")
        refused_at: list[float] = []
        send = transport.send

        async def noting_refusals(exchange: str, messages: list[WireMessage]) -> list[SendResult]:
            results = await send(exchange, messages)
            refused_at.extend(time.monotonic() for r in results if r.outcome is not Outcome.DELIVERED)
            return results

        monkeypatch.setattr(transport, "send", noting_refusals)
        # prefetch 1: it comes back only if its place was given back
        again = await refused_retry_comes_back(delivery, stream, refused_at, "unroutable")
        await again.ack()
        await stream.aclose()  # type: ignore[attr-defined]
    finally:
        await transport.close()
        await delete_amqp_topology(rabbitmq, [name], [exchange])


@pytest.fixture
def bus_and_app(tmp_path: Path, rabbitmq: str) -> Iterator[tuple[Bus, App]]:
    config, exchange = write_config(tmp_path, heartbeat=5)
    bus = Bus(load_config(config))
    app = App(f"{exchange}.svc", transport="rabbit", exchange=exchange, prefetch=10, retry_schedule=[0.2])
    yield bus, app
    bus.close()
    asyncio.run(delete_amqp_topology(rabbitmq, [app.settings.queue], [exchange]))


async def test_a_deleted_queue_ends_the_consumer_with_a_clear_error(
    bus_and_app: tuple[Bus, App], rabbitmq: str
) -> None:
    """RabbitMQ cancels the consumer (basic.cancel) when its queue is deleted: no silent hang."""
    bus, app = bus_and_app
    app.subscribe("#")(lambda event: None)
    await app.declare(bus)
    running = asyncio.create_task(app.run(bus, asyncio.Event()))
    await asyncio.sleep(1.0)  # consuming
    connection = await aiormq.connect(rabbitmq)
    await (await connection.channel()).queue_delete(app.settings.queue)
    await connection.close()
    with pytest.raises(TransportError, match="was deleted"):
        await asyncio.wait_for(running, 15)


def rabbit_setting(key: str, milliseconds: int | None) -> int | None:
    """Set one of RabbitMQ's settings (read by channels opened from now on; None: unset it);
    returns the previous value (None: it was unset)."""
    got = subprocess.run(
        ["rabbitmqctl", "eval", f"application:get_env(rabbit, {key})."],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    previous = int(got[len("{ok,") : -1]) if got.startswith("{ok,") else None
    command = (
        f"application:set_env(rabbit, {key}, {milliseconds})."
        if milliseconds is not None
        else f"application:unset_env(rabbit, {key})."
    )
    subprocess.run(["rabbitmqctl", "eval", command], capture_output=True, check=True)
    return previous


@pytest.mark.slow
@pytest.mark.alone  # it sets RabbitMQ's consumer_timeout to 1 s for every channel
async def test_a_channel_closed_by_the_ack_timeout_is_reopened_and_the_event_handled(
    bus_and_app: tuple[Bus, App],
) -> None:
    """A handler slower than RabbitMQ's consumer_timeout: the broker closes the channel (it checks
    once a channel tick, made a second here); the consumer reopens it, the event comes back and is
    handled."""
    bus, app = bus_and_app
    calls: list[int] = []
    release_first = asyncio.Event()

    @app.subscribe("#")
    async def slow_then_fast(event: Event) -> None:
        calls.append(len(calls) + 1)
        if len(calls) == 1:
            await release_first.wait()  # holds the delivery unacked past the timeout

    previous = rabbit_setting("consumer_timeout", 1000)  # the delivery-acknowledgement timeout
    # a channel checks that timeout once a tick (a minute by default)
    previous_tick = rabbit_setting("channel_tick_interval", 1000)
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    try:
        await app.declare(bus)
        running = asyncio.create_task(app.run(bus, stop))
        tasks.append(running)
        await asyncio.sleep(1.0)
        await bus.apublish("slow.one", {"n": 1})
        tasks.append(asyncio.create_task(bus.dispatcher().run(stop)))
        deadline = time.monotonic() + 100
        while len(calls) < 2 and time.monotonic() < deadline:
            assert not running.done(), running
            await asyncio.sleep(0.5)
        assert len(calls) == 2, "the event was not delivered again after the channel closed"
        release_first.set()  # its ack goes to a dead channel: logged, not fatal
        await asyncio.sleep(0.5)
        assert not running.done()
    finally:
        rabbit_setting("consumer_timeout", previous)
        rabbit_setting("channel_tick_interval", previous_tick)
        stop.set()
        release_first.set()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
    assert app.counters.handled >= 1


# -- an unreachable broker: one line of ours, not the client library's records ------------------


def _unreachable(tmp_path: Path) -> None:
    (tmp_path / "tidings.toml").write_text(
        '[transports.rabbit]\nkind = "amqp"\nurl = "amqp://guest:guest@127.0.0.1:1/"\nconnect_timeout = 2\n'
        '[connectors.rabbit]\ntransport = "rabbit"\nexchange = "nowhere"\n'
        '[consumers.svc]\ntransport = "rabbit"\nexchange = "nowhere"\nbindings = ["#"]\n'
    )
    (tmp_path / "svc.py").write_text("def handle(event):\n    pass\n")


def _only_our_lines(stderr: str) -> list[str]:
    lines = [line for line in stderr.splitlines() if line.strip()]
    for line in lines:
        assert "aiormq" not in line and "Traceback" not in line and "error when creating" not in line, stderr
    return lines


@pytest.mark.parametrize("args", [["doctor"], ["dispatch", "--once"]])
def test_an_unreachable_broker_is_one_line_of_ours(tmp_path: Path, args: list[str]) -> None:
    from tests.clirun import tidings

    _unreachable(tmp_path)
    assert tidings(tmp_path, "publish", "a.b", "--body", "{}").returncode == 0
    done = tidings(tmp_path, *args, timeout=60)
    assert done.returncode == 6, (done.stdout, done.stderr)
    lines = _only_our_lines(done.stderr)
    assert any("cannot connect to amqp://guest:***@127.0.0.1:1/" in line for line in lines), done.stderr
    assert len(lines) <= 2, done.stderr  # the problem, and (doctor) the count of problems


def test_a_consumer_that_cannot_reach_its_broker_at_start_says_so_in_one_line(tmp_path: Path) -> None:
    from tests.clirun import tidings

    _unreachable(tmp_path)
    done = tidings(tmp_path, "consume", "--callback", "svc:handle", "--bind", "#", "--transport", "rabbit")
    assert done.returncode == 6, done.stderr
    lines = _only_our_lines(done.stderr)
    assert lines[-1].startswith("tidings: error: cannot connect to amqp://guest:***@127.0.0.1:1/"), (
        done.stderr
    )
    assert len(lines) == 2  # "consuming queue ..." and the error


async def test_a_retried_message_keeps_the_exchange_it_came_through(rabbitmq: str) -> None:
    """A retry re-keys a message into the queue on the default exchange; Taskcluster's format reads
    the event's kind from the exchange, so the copy must bring it back (it died as invalid)."""
    from tests.transports.conformance import hold, message
    from tidings.transport import Binding, QueueSpec

    exchange = f"exchange/tidings-test-{uuid.uuid4().hex[:6]}/v1/task-completed"
    queue = QueueSpec(f"keep-{uuid.uuid4().hex[:6]}", [Binding(exchange, "#")])
    transport = AmqpTransport(rabbitmq, retry_delays=[1])
    try:
        await transport.declare(Topology([ExchangeSpec(exchange)], [queue]))
        await transport.send(exchange, [message("primary.task.1")])
        stream = transport.consume(queue, prefetch=1)
        (first,) = await hold(stream, 1)
        assert first.message.exchange == exchange
        await first.retry(1, "again")
        (second,) = await hold(stream, 1)
        await second.ack()
        await stream.aclose()  # type: ignore[attr-defined]
    finally:
        await transport.close()
        await delete_amqp_topology(rabbitmq, [queue.name], [exchange])
    assert (second.attempt, second.message.exchange) == (2, exchange)
    assert second.message.routing_key == "primary.task.1"
    assert not any(name.startswith("x-tidings-") for name in second.message.headers)
