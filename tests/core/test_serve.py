"""``Bus.serve``: the dispatcher and the consumers in one process, on the real RabbitMQ."""

from __future__ import annotations

import asyncio
import socket
import uuid
from pathlib import Path

import pytest

from tests.conftest import delete_amqp_topology
from tests.faultproxy import FaultProxy
from tests.waiting import until
from tidings import App, Bus, Event
from tidings.config import load_config

pytestmark = [pytest.mark.rabbitmq, pytest.mark.stomp]


class SlowStart(App):
    """A consumer whose process takes a while to start consuming (imports, its own setup)."""

    async def run(self, bus: Bus, stop: asyncio.Event | None = None, **options: bool) -> None:
        await asyncio.sleep(1.5)
        await super().run(bus, stop, **options)


async def test_events_published_before_a_new_queue_exists_reach_it(
    tmp_path: Path, rabbitmq: str, stomp: str
) -> None:
    """serve declares each consumer's queue before its dispatcher sends: what the outbox held
    before the queue existed is not sent to an exchange no queue is bound to. Over STOMP,
    RabbitMQ drops such a message without a word (AMQP's mandatory flag would have said so)."""
    tag = uuid.uuid4().hex[:6]
    exchange, queue = f"serve.{tag}", f"serve.{tag}.q"
    (tmp_path / "tidings.toml").write_text(
        f'[bus]\nhome = "home"\n\n[transports.rabbit]\nkind = "stomp"\nurl = "{stomp}"\n\n'
        f'[connectors.rabbit]\ntransport = "rabbit"\nexchange = "{exchange}"\n'
    )
    bus = Bus(load_config(tmp_path / "tidings.toml"))
    sent = [bus.publish("lab.job", {"n": n}) for n in range(5)]  # before any queue exists
    got: list[Event] = []
    app = SlowStart(queue, transport="rabbit", exchange=exchange)
    app.add_handler(["lab.#"], got.append)
    stop = asyncio.Event()
    serving = asyncio.create_task(bus.serve(stop, [app]))
    try:
        await until(lambda: len(got) == 5)
    finally:
        stop.set()
        await serving
        bus.close()
        await delete_amqp_topology(rabbitmq, [queue], [exchange])
    assert [e.id for e in got] == [e.id for e in sent]


async def test_a_broker_away_when_serve_starts_is_waited_for_by_the_consumers_too(
    tmp_path: Path, rabbitmq: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A machine booting may start tidings before RabbitMQ: serve keeps its consumers trying, as
    its dispatcher does, and everything flows once the broker answers."""
    with socket.socket() as probe:  # a port nothing listens on yet: the broker's, once it "starts"
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    tag = uuid.uuid4().hex[:6]
    exchange, queue = f"late.{tag}", f"late.{tag}.q"
    (tmp_path / "tidings.toml").write_text(
        f'[bus]\nhome = "home"\n\n[transports.rabbit]\nkind = "amqp"\n'
        f'url = "amqp://guest:guest@127.0.0.1:{port}/"\n\n'
        f'[connectors.rabbit]\ntransport = "rabbit"\nexchange = "{exchange}"\n'
    )
    bus = Bus(load_config(tmp_path / "tidings.toml"))
    got: list[Event] = []
    app = App(queue, transport="rabbit", exchange=exchange)
    app.add_handler(["lab.#"], got.append)
    stop = asyncio.Event()
    serving = asyncio.create_task(bus.serve(stop, [app]))
    broker = FaultProxy(5672)
    try:
        await until(lambda: caplog.text.count("trying again in") >= 2 or serving.done(), 20)
        assert not serving.done(), serving  # not ended by the broker's absence: it tried twice
        await broker.start(port)
        sent = [bus.publish("lab.job", {"n": n}) for n in range(3)]
        await until(lambda: len(got) == 3, 30)
    finally:
        stop.set()
        await serving
        await broker.stop()
        bus.close()
        await delete_amqp_topology(rabbitmq, [queue], [exchange])
    assert sorted(e.id for e in got) == sorted(e.id for e in sent)


async def test_stopping_serve_while_it_waits_for_a_broker_is_a_clean_stop(tmp_path: Path) -> None:
    (tmp_path / "tidings.toml").write_text(
        '[bus]\nhome = "home"\n\n[transports.rabbit]\nkind = "amqp"\nurl = "amqp://guest:guest@127.0.0.1:9/"\n'
    )
    bus = Bus(load_config(tmp_path / "tidings.toml"))
    app = App("nowhere", transport="rabbit")
    app.add_handler(["#"], lambda event: None)
    stop = asyncio.Event()
    serving = asyncio.create_task(bus.serve(stop, [app]))
    await asyncio.sleep(1.5)
    stop.set()
    await asyncio.wait_for(serving, 10)  # no error: it never connected, nothing to settle
    bus.close()


@pytest.mark.parametrize("kind", ["embedded", "zeromq"])
async def test_a_service_beside_the_consumers_that_fails_ends_serve_with_its_error(
    tmp_path: Path, kind: str
) -> None:
    """The consumers are cancelled when a service beside them fails (another dispatcher holds the
    outbox, a relay's source is refused): a cancelled consumer waited for its activity reporter,
    which only a stop ends, and ZeroMQ's close waited for the cancelled consumer's socket; serve
    hung for good, deaf to SIGTERM, and said nothing."""
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    options = {"embedded": 'path = "broker.db"', "zeromq": f'endpoint = "tcp://127.0.0.1:{port}"'}
    (tmp_path / "tidings.toml").write_text(
        f'[bus]\nhome = "home"\n\n[transports.t]\nkind = "{kind}"\n{options[kind]}\n\n'
        '[connectors.t]\ntransport = "t"\n'
    )
    bus = Bus(load_config(tmp_path / "tidings.toml"))

    async def failing(stop: asyncio.Event) -> None:
        await asyncio.sleep(0.5)
        raise RuntimeError("the service beside failed")

    app = App("svc", transport="t")
    app.add_handler(["#"], lambda event: None)
    try:
        with pytest.raises(RuntimeError, match="the service beside failed"):
            await asyncio.wait_for(bus.serve(asyncio.Event(), [app], beside=[failing]), 20)
    finally:
        bus.close()
