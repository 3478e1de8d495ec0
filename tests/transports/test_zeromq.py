"""The ZeroMQ transport: the conformance suite as far as PUB/SUB allows, plus its own behaviour."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator

import pytest

from tests.transports.conformance import MakeTransport, TransportConformance
from tidings.errors import ConfigError
from tidings.transport import Binding, QueueSpec, Transport, WireMessage
from tidings.transports.zeromq import ZeroMQTransport, prefix_of


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SubscribedFirst:
    """Wraps a transport so that subscriptions exist before anything is sent (a PUB drops
    messages nobody subscribed to yet — the suite's tests declare, then send, then consume)."""

    def __init__(self, inner: ZeroMQTransport, *, publishes: bool) -> None:
        self.inner = inner
        self.publishes = publishes
        self.kind, self.acknowledged = inner.kind, inner.acknowledged
        self.streams: dict[str, tuple[AsyncIterator, asyncio.Queue]] = {}
        self.pumps: list[asyncio.Task[None]] = []

    async def connect(self) -> None:
        await self.inner.connect()
        if self.publishes:
            await self.inner.open_sender()  # bind the PUB now, before anyone subscribes

    async def close(self) -> None:
        for task in self.pumps:
            task.cancel()
        await asyncio.gather(*self.pumps, return_exceptions=True)
        for stream, _ in self.streams.values():
            await stream.aclose()
        await self.inner.close()

    async def declare(self, topology) -> None:  # type: ignore[no-untyped-def]
        for queue in topology.queues:
            if queue.name not in self.streams:
                stream = self.inner.consume(queue, prefetch=100)
                buffer: asyncio.Queue = asyncio.Queue()

                async def pump(stream: AsyncIterator = stream, buffer: asyncio.Queue = buffer) -> None:
                    async for delivery in stream:
                        await buffer.put(delivery)

                self.pumps.append(asyncio.ensure_future(pump()))
                self.streams[queue.name] = (stream, buffer)
        await asyncio.sleep(0.3)  # ZeroMQ's slow-joiner: a SUB needs a moment to attach

    async def send(self, exchange, messages):  # type: ignore[no-untyped-def]
        return await self.inner.send(exchange, messages)

    async def consume(self, queue: QueueSpec, *, prefetch: int):  # type: ignore[no-untyped-def]
        _, buffer = self.streams[queue.name]
        while True:
            yield await buffer.get()


class TestZeroMQConformance(TransportConformance):
    acknowledged = False
    routes_cc = False

    @pytest.fixture
    async def make_transport(self) -> AsyncIterator[MakeTransport]:
        port = free_port()
        made: list[SubscribedFirst] = []

        async def make() -> Transport:
            inner = ZeroMQTransport(f"tcp://127.0.0.1:{port}", settle=0)  # declare() waits instead
            transport = SubscribedFirst(inner, publishes=not made)
            await transport.connect()
            made.append(transport)
            return transport  # type: ignore[return-value]

        yield make
        for transport in made:
            await transport.close()

    @pytest.fixture
    def exchange(self) -> str:
        return f"zmq-{uuid.uuid4().hex[:6]}"


def test_prefixes_stop_at_the_first_wildcard() -> None:
    assert prefix_of("org.linaro.validation.testjob") == "org.linaro.validation.testjob"
    assert prefix_of("org.*.validation") == "org"
    assert prefix_of("#") == ""


def test_bad_options_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="mode"):
        ZeroMQTransport("tcp://127.0.0.1:1", mode="listen")
    with pytest.raises(ConfigError, match="endpoint"):
        ZeroMQTransport("localhost:1")
    with pytest.raises(ConfigError, match="'localhost:2'"):
        ZeroMQTransport(["tcp://127.0.0.1:1", "localhost:2"])
    with pytest.raises(ConfigError, match="no address"):
        ZeroMQTransport([])
    for port in ("99999", "", "http"):
        with pytest.raises(ConfigError, match="needs a port from 0 to 65535"):
            ZeroMQTransport(f"tcp://*:{port}")
    assert ZeroMQTransport("tcp://*:*").endpoints == ["tcp://*:*"]  # a port the system picks


async def test_a_subscriber_hears_every_publisher_of_its_endpoint_list() -> None:
    """fedmsg's way: one SUB connected to several publishers, each bound (here as "tcp://*:PORT")."""
    ports = [free_port(), free_port()]
    publishers = [ZeroMQTransport(f"tcp://*:{port}", settle=0) for port in ports]
    subscriber = ZeroMQTransport([f"tcp://*:{port}" for port in ports])  # connects to 127.0.0.1
    for transport in (*publishers, subscriber):
        await transport.connect()
    for publisher in publishers:
        await publisher.open_sender()
    stream = subscriber.consume(QueueSpec("q", [Binding("", "#")]), prefetch=10)
    heard: set[str] = set()
    got = asyncio.ensure_future(anext(stream))  # type: ignore[arg-type]
    try:
        for _ in range(100):  # until both subscriptions have reached their publishers
            for n, publisher in enumerate(publishers):
                await publisher.send("", [WireMessage(f"from.{n}", b"{}")])
            done, _ = await asyncio.wait({got}, timeout=0.1)
            if done:
                heard.add(got.result().message.routing_key)
                got = asyncio.ensure_future(anext(stream))  # type: ignore[arg-type]
            if heard == {"from.0", "from.1"}:
                break
    finally:
        got.cancel()
        await asyncio.gather(got, return_exceptions=True)
        await stream.aclose()  # type: ignore[attr-defined]
        for transport in (*publishers, subscriber):
            await transport.close()
    assert heard == {"from.0", "from.1"}


async def test_publisher_connects_to_a_bound_subscriber_and_frames_pass_unchanged() -> None:
    port = free_port()
    subscriber = ZeroMQTransport(f"tcp://127.0.0.1:{port}", mode="connect")  # publisher connects: SUB binds
    publisher = ZeroMQTransport(f"tcp://127.0.0.1:{port}", mode="connect")
    await subscriber.connect()
    await publisher.connect()
    stream = subscriber.consume(QueueSpec("q", [Binding("", "lab.device")]), prefetch=10)
    got = asyncio.ensure_future(anext(stream))  # type: ignore[arg-type]
    frames = [b"lab.device", b"uuid", b"2026-01-01T00:00:00", b"lava", b'{"a": 1}']
    for _ in range(50):  # until the subscription has reached the publisher
        await publisher.send("", [WireMessage("lab.device", b"", frames=frames)])
        done, _ = await asyncio.wait({got}, timeout=0.1)
        if done:
            break
    delivery = got.result()
    assert delivery.message.frames == frames
    assert delivery.message.routing_key == "lab.device"
    await stream.aclose()  # type: ignore[attr-defined]
    await publisher.close()
    await subscriber.close()


@pytest.mark.parametrize("fmt", ["lava", "tidings"])
async def test_a_subscriber_connected_before_the_dispatcher_starts_gets_every_event(
    tmp_path, fmt: str
) -> None:  # type: ignore[no-untyped-def]
    """A LAVA-style subscriber connects first; the dispatcher then starts with events waiting."""
    import zmq
    import zmq.asyncio

    from tidings import Bus
    from tidings.formats.lava import lava_event

    port = free_port()
    (tmp_path / "tidings.toml").write_text(
        f'[transports.stream]\nkind = "zeromq"\nendpoint = "tcp://127.0.0.1:{port}"\n'
        f'[connectors.stream]\ntransport = "stream"\nformat = "{fmt}"\n'
    )
    bus = Bus.load(tmp_path / "tidings.toml")
    ctx = zmq.asyncio.Context()
    subscriber = ctx.socket(zmq.SUB)
    subscriber.setsockopt(zmq.SUBSCRIBE, b"")
    subscriber.connect(f"tcp://127.0.0.1:{port}")  # before anything is bound: ZeroMQ retries by itself
    sent = [bus.publish(lava_event("testjob", {"job": n, "status": "Submitted"})) for n in range(1, 51)]
    stop = asyncio.Event()
    dispatching = asyncio.create_task(bus.dispatcher().run(stop))
    received: list[list[bytes]] = []
    try:
        while len(received) < len(sent):
            received.append(await asyncio.wait_for(subscriber.recv_multipart(), 10))
    finally:
        stop.set()
        await dispatching
        subscriber.close(linger=0)
        ctx.term()
        bus.close()
    topics = {frames[0] for frames in received}
    assert topics == {b"org.linaro.validation.testjob"}
    if fmt == "lava":  # the first event (job 1) is there, and every other, in order
        assert [frames[1].decode() for frames in received] == [event.id for event in sent]


async def test_settle_is_a_transport_option_and_open_sender_binds_once() -> None:
    port = free_port()
    transport = ZeroMQTransport(f"tcp://127.0.0.1:{port}", settle=0.2)
    await transport.connect()
    started = asyncio.get_running_loop().time()
    await transport.open_sender()
    await transport.open_sender()  # already open: no second bind (it would fail), no second wait
    assert 0.2 <= asyncio.get_running_loop().time() - started < 0.4
    await transport.close()
