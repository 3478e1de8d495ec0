"""A relay (ZeroMQ in → outbox → AMQP out) against a raw pyzmq → aio-pika forwarder, in one run.

    python bench/bench_relay.py [--quick] [--runs N]

A LAVA-like PUB socket publishes N five-frame events as fast as it can. tidings: a relay
(zeromq transport, lava format) publishes each into the outbox — durable, fsynced — and the
dispatcher delivers it to RabbitMQ with publisher confirms; the clock stops when RabbitMQ has
confirmed the N-th. The peer: a SUB socket whose messages aio-pika publishes (persistent, with
publisher confirms, up to 1,000 unconfirmed), the clock stopping at the N-th confirm — the same
path without the outbox, so what it loses in a crash, tidings keeps. ReactOBus itself forwards
ZeroMQ to ZeroMQ and has no AMQP output, so it cannot run this path. Both ends have their
ZeroMQ high-water marks lifted (nothing dropped). Needs RabbitMQ on 127.0.0.1:5672; results go
to bench/results/relay.json.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aio_pika
import zmq
import zmq.asyncio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import Report, rate
from tidings import Bus
from tidings.config import parse_config
from tidings.formats.lava import LavaFormat, lava_event
from tidings.relay import Relay

AMQP = "amqp://guest:guest@127.0.0.1:5672/"
TOPIC = "org.linaro.validation.testjob"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def frames(count: int) -> list[list[bytes]]:
    fmt = LavaFormat()
    jobs = [
        lava_event("testjob", {"job": n, "status": "Complete", "device_type": "x15"}) for n in range(count)
    ]
    return [fmt.encode(job).frames or [] for job in jobs]


class Publisher:
    """The LAVA server's side: a PUB that binds; sends once the subscriber answered a probe."""

    def __init__(self) -> None:
        self.endpoint = f"tcp://127.0.0.1:{free_port()}"
        self.context = zmq.asyncio.Context()
        self.socket = self.context.socket(zmq.PUB)
        self.socket.setsockopt(zmq.SNDHWM, 0)
        self.socket.bind(self.endpoint)

    async def send(self, messages: list[list[bytes]]) -> None:
        for message in messages:
            await self.socket.send_multipart(message)

    def close(self) -> None:
        self.socket.close(linger=0)
        self.context.term()


async def declare_queue(exchange: str, queue: str) -> None:
    connection = await aio_pika.connect(AMQP)
    channel = await connection.channel()
    declared = await channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
    bound = await channel.declare_queue(queue, durable=True)
    await bound.bind(declared, "#")
    await connection.close()


async def drop_queue(exchange: str, queue: str) -> None:
    connection = await aio_pika.connect(AMQP)
    channel = await connection.channel()
    await channel.queue_delete(queue)
    await channel.exchange_delete(exchange)
    await connection.close()


async def through_tidings(count: int) -> float:
    tag = uuid.uuid4().hex[:8]
    exchange, queue = f"bench-relay-{tag}", f"bench-relay-{tag}"
    await declare_queue(exchange, queue)
    publisher = Publisher()
    home = Path(tempfile.mkdtemp(prefix="bench-relay-"))
    bus = Bus(
        parse_config(
            {
                "transports": {
                    "local": {"kind": "embedded"},
                    "lab": {"kind": "zeromq", "endpoint": publisher.endpoint, "hwm": 0},
                    "rabbit": {"kind": "amqp", "url": AMQP},
                },
                "connectors": {"rabbit": {"transport": "rabbit", "exchange": exchange, "format": "lava"}},
                "relays": {
                    "lab": {
                        "transport": "lab",
                        "format": "lava",
                        "bindings": [TOPIC],
                        "prefetch": 1000,
                        "concurrency": 256,
                    }
                },
            },
            base_dir=home,
        )
    )
    stop = asyncio.Event()
    relay_app = Relay(bus, "lab").app()
    dispatcher = bus.dispatcher()
    tasks = [asyncio.create_task(relay_app.run(bus, stop)), asyncio.create_task(dispatcher.run(stop))]
    stats = dispatcher.connectors[0].stats
    await attach(publisher, lambda: stats.delivered > 0)
    before = stats.delivered
    messages = frames(count)
    start = time.perf_counter()
    await publisher.send(messages)
    while stats.delivered < before + count:
        await asyncio.sleep(0.002)
    elapsed = time.perf_counter() - start
    stop.set()
    await asyncio.gather(*tasks)
    bus.close()
    publisher.close()
    await drop_queue(exchange, queue)
    return elapsed


async def attach(publisher: Publisher, arrived: object) -> None:
    """ZeroMQ's slow joiner: send probes until the other side shows it got one."""
    probe = frames(1)
    for _ in range(400):
        if arrived():  # type: ignore[operator]
            return
        await publisher.send(probe)
        await asyncio.sleep(0.025)
    raise SystemExit("the subscriber never attached")


async def through_raw_forwarder(count: int) -> float:
    tag = uuid.uuid4().hex[:8]
    exchange_name, queue = f"bench-raw-{tag}", f"bench-raw-{tag}"
    await declare_queue(exchange_name, queue)
    publisher = Publisher()
    context = zmq.asyncio.Context()
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, 0)
    sub.setsockopt(zmq.SUBSCRIBE, TOPIC.encode())
    sub.connect(publisher.endpoint)
    connection = await aio_pika.connect(AMQP)
    channel = await connection.channel(publisher_confirms=True)
    exchange = await channel.get_exchange(exchange_name)
    confirmed = 0
    window = asyncio.Semaphore(1000)
    done = asyncio.Event()

    async def forward(parts: list[bytes]) -> None:
        nonlocal confirmed
        message = aio_pika.Message(
            parts[4],
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=parts[1].decode(),
            content_type="application/json",
        )
        await exchange.publish(message, routing_key=parts[0].decode())
        confirmed += 1
        window.release()
        if confirmed >= count:
            done.set()

    async def pump() -> None:
        while True:
            parts = await sub.recv_multipart()
            await window.acquire()
            asyncio.create_task(forward(parts))  # noqa: RUF006 - counted by `confirmed`

    pumping = asyncio.create_task(pump())
    await attach(publisher, lambda: confirmed > 0)
    confirmed, done = 0, asyncio.Event()
    messages = frames(count)
    start = time.perf_counter()
    await publisher.send(messages)
    await asyncio.wait_for(done.wait(), 600)
    elapsed = time.perf_counter() - start
    pumping.cancel()
    await connection.close()
    sub.close(linger=0)
    context.term()
    publisher.close()
    await drop_queue(exchange_name, queue)
    return elapsed


async def main(count: int, runs: int) -> None:
    report = Report("relay")
    ours, raw = [], []
    for _ in range(runs):
        ours.append(rate(count, await through_tidings(count)))
        raw.append(rate(count, await through_raw_forwarder(count)))
        print(f"  run: tidings {ours[-1]:,.0f}/s, raw forwarder {raw[-1]:,.0f}/s", flush=True)
    report.add(
        f"relay zeromq → outbox → AMQP ({count:,} events)",
        statistics.median(ours),
        "events/s",
        peer="raw pyzmq → aio-pika",
        peer_value=statistics.median(raw),
        target="≥ 1.0x",
    )
    print(f"saved {report.save()}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller counts (a smoke run)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each; the median is reported")
    arguments = parser.parse_args()
    asyncio.run(main(2_000 if arguments.quick else 20_000, 1 if arguments.quick else arguments.runs))
