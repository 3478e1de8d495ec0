"""The fedmsg ⇄ AMQP bridge against the real RabbitMQ and real ZeroMQ sockets.

As in Fedora's migration, the bridge's own exchange (``zmq.topic``) is bound into the main one
(``amq.topic``) so fedora-messaging consumers see fedmsg traffic too: every fedmsg-originated
message therefore reaches the AMQP → fedmsg direction, which must stop it (a loop) rather than
send it back to fedmsg.
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from pathlib import Path

import aiormq
import pytest
import zmq
import zmq.asyncio

from tests.conftest import delete_amqp_topology
from tidings import Bus, Event
from tidings.config import load_config
from tidings.errors import ConfigError
from tidings.formats.fedora import FedoraMessagingFormat
from tidings.formats.fedora.bridge import Bridge, verify_missing
from tidings.formats.fedora.fedmsg import FedmsgFormat, fedmsg_id

pytestmark = pytest.mark.rabbitmq

EACH_WAY = 500


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def write_config(root: Path, tag: str, fedmsg_port: int, publish_port: int, rabbitmq: str) -> Path:
    config = root / "tidings.toml"
    config.write_text(
        f'[bus]\nhome = "home"\n\n[transports.rabbit]\nkind = "amqp"\nurl = "{rabbitmq}"\n\n'
        f'[connectors.to-amqp]\ntransport = "rabbit"\nexchange = "bridge.{tag}.zmq"\n'
        'format = "fedora-messaging"\n\n'
        f'[bridges.test]\nzmq_endpoints = ["tcp://127.0.0.1:{fedmsg_port}"]\nconnector = "to-amqp"\n'
        f'transport = "rabbit"\nexchange = "bridge.{tag}.amq"\nqueue = "bridge.{tag}.q"\n'
        f'zmq_publish = "tcp://127.0.0.1:{publish_port}"\n'
    )
    return config


async def declare_exchanges(rabbitmq: str, main: str, own: str) -> None:
    connection = await aiormq.connect(rabbitmq)
    channel = await connection.channel()
    for name in (main, own):
        await channel.exchange_declare(name, exchange_type="topic", durable=True)
    await channel.exchange_bind(main, own, routing_key="#")  # what Fedora's broker did
    await connection.close()


async def collect_fedmsg(port: int, seen: list[str], stop: asyncio.Event) -> None:
    context = zmq.asyncio.Context()
    sub = context.socket(zmq.SUB)
    sub.connect(f"tcp://127.0.0.1:{port}")
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    fmt = FedmsgFormat()
    try:
        while not stop.is_set():
            if await sub.poll(100):
                frames = await sub.recv_multipart()
                seen.append(fmt.decode(_wire(frames)).id)
    finally:
        sub.close(linger=0)
        context.term()


def _wire(frames: list[bytes]):  # type: ignore[no-untyped-def]
    from tidings.transports.zeromq import to_wire

    return to_wire(frames)


async def test_both_ways_nothing_missing_and_no_loops(tmp_path: Path, rabbitmq: str) -> None:
    tag = uuid.uuid4().hex[:8]
    fedmsg_port, publish_port = free_port(), free_port()
    main, own = f"bridge.{tag}.amq", f"bridge.{tag}.zmq"
    await declare_exchanges(rabbitmq, main, own)
    bus = Bus(load_config(write_config(tmp_path, tag, fedmsg_port, publish_port, rabbitmq)))
    bridge = Bridge(bus, "test")
    context = zmq.asyncio.Context()
    fedmsg_publisher = context.socket(zmq.PUB)
    fedmsg_publisher.bind(f"tcp://127.0.0.1:{fedmsg_port}")
    stop = asyncio.Event()
    back_on_fedmsg: list[str] = []
    tasks = [
        asyncio.create_task(bridge.run(stop)),
        asyncio.create_task(collect_fedmsg(publish_port, back_on_fedmsg, stop)),
    ]
    checking = asyncio.create_task(verify_missing(bridge, duration=12, grace=3))
    try:
        await asyncio.sleep(2.5)  # subscribers connected (ZeroMQ drops what comes before)
        from_fedmsg = await publish_on_fedmsg(fedmsg_publisher)
        from_amqp = await publish_on_amqp(bus, main)
        missing = await checking
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        fedmsg_publisher.close(linger=0)
        context.term()
        bus.close()
        queues = [f"bridge.{tag}.q", f"tidings.verify.test.{main}", f"tidings.verify.test.{own}"]
        await delete_amqp_topology(rabbitmq, queues, [own, main])
    print(f"bridge counters: {bridge.counters}; missing: { {k: len(v) for k, v in missing.items()} }")
    assert missing == {"fedmsg": [], "amqp": []}
    assert bridge.counters.to_amqp == EACH_WAY and bridge.counters.to_fedmsg == EACH_WAY
    assert bridge.counters.undecodable == 1
    # every fedmsg message came round to the AMQP → fedmsg side, and went no further
    assert bridge.counters.loops_stopped == EACH_WAY
    assert sorted(back_on_fedmsg) == sorted(f"{e.time.year}-{e.id}" for e in from_amqp)
    assert not set(back_on_fedmsg) & {e.id for e in from_fedmsg}


async def publish_on_fedmsg(publisher: zmq.asyncio.Socket) -> list[Event]:
    fmt = FedmsgFormat(username="fedmsg-app")
    events = [
        Event.create("bodhi.update.comment", {"n": n}, source="bodhi", id=fedmsg_id())
        for n in range(EACH_WAY)
    ]
    await publisher.send_multipart([b"org.fedoraproject.prod.broken", b"{not json"])  # counted, not fatal
    for event in events:
        await publisher.send_multipart(fmt.encode(event).frames or [])
        await asyncio.sleep(0.001)
    return events


async def publish_on_amqp(bus: Bus, exchange: str) -> list[Event]:
    transport = bus.make_transport("rabbit")
    await transport.connect()
    fmt = FedoraMessagingFormat()
    events = [
        Event.create("org.fedoraproject.prod.koji.build", {"n": n}, source="koji") for n in range(EACH_WAY)
    ]
    try:
        results = await transport.send(exchange, [fmt.encode(e) for e in events])
    finally:
        await transport.close()
    assert all(r.outcome.value == "delivered" for r in results)
    return events


def test_a_connector_on_the_exchange_the_bridge_reads_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "tidings.toml"
    config.write_text(
        '[transports.rabbit]\nkind = "amqp"\n\n'
        '[connectors.to-amqp]\ntransport = "rabbit"\nexchange = "amq.topic"\nformat = "fedora-messaging"\n\n'
        '[bridges.loop]\nzmq_endpoints = ["tcp://127.0.0.1:9940"]\nconnector = "to-amqp"\n'
        'transport = "rabbit"\n'
    )
    with pytest.raises(ConfigError, match="loop"):
        load_config(config)
