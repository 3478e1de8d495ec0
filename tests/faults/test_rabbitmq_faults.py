"""Faults against the real RabbitMQ: broker restarts, dropped connections, poison and unroutable events.

Every scenario keeps a ledger and prints it; lost must be zero.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.conftest import delete_amqp_topology
from tests.faults.rig import Rig, rabbitmqctl
from tests.ledger import check
from tests.waiting import until
from tidings import App, Event

# alone: it stops RabbitMQ and closes every connection it has, other tests' too
pytestmark = [pytest.mark.rabbitmq, pytest.mark.stomp, pytest.mark.slow, pytest.mark.alone]

STOMP = "stomp://guest:guest@127.0.0.1:61613/"


async def test_restarts_and_dropped_connections_lose_nothing(tmp_path: Path, rabbitmq: str) -> None:
    """10,000 events while the broker's app stops and starts twice and every connection is closed
    once; a STOMP consumer of the same exchange lives through it too (a broker shutting down
    refuses the channel of a connection it just took: that is a reconnect, not the end)."""
    rig = Rig(tmp_path, more_config=f'\n[transports.stomp]\nkind = "stomp"\nurl = "{STOMP}"\n')
    over_stomp = App(f"{rig.queue}.stomp", transport="stomp", exchange=rig.exchange, prefetch=200)
    over_stomp_saw: list[str] = []
    distinct: set[str] = set()

    @over_stomp.subscribe("#")
    async def record(event: Event) -> None:
        over_stomp_saw.append(event.id)
        distinct.add(event.id)

    await over_stomp.declare(rig.bus)
    stomp_running = asyncio.create_task(over_stomp.run(rig.bus, rig.stop), name="stomp consumer")
    rig.tasks.append(stomp_running)
    await rig.start()
    publishing = asyncio.create_task(rig.publish(10_000, pace=0.0002))
    try:
        for fault in ("stop", "close", "stop"):
            await asyncio.sleep(1.0)
            if fault == "stop":
                await asyncio.to_thread(rabbitmqctl, "stop_app")
                await asyncio.sleep(1.0)
                await asyncio.to_thread(rabbitmqctl, "start_app")
            else:
                await asyncio.to_thread(rabbitmqctl, "close_all_connections", "fault test")
        await publishing
        await rig.wait_all_delivered(timeout=180)  # (it fails at once when a consumer task ended)
        await until(lambda: stomp_running.done() or len(distinct) >= len(rig.returned), 120)
    finally:
        await asyncio.to_thread(rabbitmqctl, "start_app")
        await rig.close()
        await delete_amqp_topology(rabbitmq, [over_stomp.settings.queue], [])
    verdict = rig.verdict()
    print(verdict.line("rabbitmq stop/start x2 + close_all_connections"))
    assert verdict.ok
    assert verdict.returned == 10_000
    over_stomp_verdict = check(rig.attempted, rig.returned, over_stomp_saw)
    print(over_stomp_verdict.line("rabbitmq stop/start x2 + close_all_connections, STOMP consumer"))
    assert over_stomp_verdict.ok


async def test_poison_message_is_dead_lettered_after_exactly_the_attempts(
    tmp_path: Path, rabbitmq: str
) -> None:
    rig = Rig(tmp_path)
    rig.app.settings.max_attempts = 3
    attempts: list[int] = []

    async def poison(event: Event) -> None:
        if event.body.get("poison"):
            attempts.append(event.body["n"])
            raise ValueError("cannot handle this one")

    rig.on_event = poison
    await rig.start()
    bad = rig.bus.event("fault.poison", {"n": -1, "poison": True})
    await rig.bus.apublish(bad)
    await rig.publish(200)
    try:
        await rig.wait_all_delivered(timeout=60)  # the other traffic kept flowing
        transport = rig.bus.make_transport("rabbit")
        await transport.connect()
        dead_queue = rig.app.queue_spec()
        dead_queue.name = dead_queue.dead_letter_queue
        stream = transport.consume(dead_queue, prefetch=1)
        letter = await asyncio.wait_for(anext(stream), 30)  # type: ignore[arg-type]
        await letter.ack()
        await stream.aclose()  # type: ignore[attr-defined]
        await transport.close()
    finally:
        await rig.close()
    assert letter.message.message_id == bad.id
    assert "cannot handle this one" in str(letter.message.headers.get("x-tidings-reason"))
    assert len(attempts) == 3


async def test_unroutable_event_waits_in_the_backlog(tmp_path: Path, rabbitmq: str) -> None:
    rig = Rig(tmp_path)
    await rig.start(
        consumer=False, dispatcher=False
    )  # the queue is bound to '#'... so unbind by a new exchange
    rig.bus.config.connectors["rabbit"].exchange = f"{rig.exchange}.nobody"
    event = rig.bus.publish("fault.lonely", {})
    dispatcher = rig.bus.dispatcher()
    await dispatcher.drain(timeout=30)
    await dispatcher.connectors[0].transport.close()
    status = rig.bus.outbox.status(["rabbit"])[0]
    assert (status.backlog, status.dead) == (1, 0)
    (entry,) = rig.bus.outbox.entries("rabbit", "backlog")
    assert entry["id"] == event.id
    assert "unroutable" in str(entry["reason"])
    assert dispatcher.connectors[0].stats.delivered == 0
    await rig.close()


async def test_an_unroutable_event_holds_up_no_one(tmp_path: Path, rabbitmq: str) -> None:
    """On an ordered connector, the events after one no queue is bound for go on while it waits."""
    rig = Rig(tmp_path)
    rig.bus.config.connectors["rabbit"].retry_schedule = [600]  # its next try: far beyond the test
    rig.app = App(rig.queue, transport="rabbit", exchange=rig.exchange, prefetch=50)
    rig.app.subscribe("fault.#")(rig._record)
    await rig.start()
    stray = rig.bus.publish("nobody.listens", {})
    try:
        await rig.publish(200)
        await rig.wait_all_delivered(timeout=60)
        (entry,) = rig.bus.outbox.entries("rabbit", "backlog")
    finally:
        await rig.close()
    assert entry["id"] == stray.id
    assert "unroutable" in str(entry["reason"])
    verdict = rig.verdict()
    print(verdict.line("an unroutable event first, 200 routable after it"))
    assert verdict.ok
