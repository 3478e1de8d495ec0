"""``Bus.serve``: the dispatcher and the consumers in one process, on the real RabbitMQ."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from tests.conftest import delete_amqp_topology
from tests.waiting import until
from tidings import App, Bus, Event
from tidings.config import load_config

pytestmark = [pytest.mark.rabbitmq, pytest.mark.stomp]


class SlowStart(App):
    """A consumer whose process takes a while to start consuming (imports, its own setup)."""

    async def run(self, bus: Bus, stop: asyncio.Event | None = None) -> None:
        await asyncio.sleep(1.5)
        await super().run(bus, stop)


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
