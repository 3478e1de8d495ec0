"""tidings on RabbitMQ against its peers, in one run.

    python bench/bench_amqp.py [--quick]

1. delivery: the dispatcher sending outbox events to RabbitMQ with confirms, vs raw aio-pika with a
   pipelined confirm window of 1,000, vs fedora-messaging's api.publish;
2. consuming with acks: a tidings App vs raw aio-pika (prefetch 100) vs fedora-messaging's consumer,
   the medians of three interleaved runs each, each on its own exchange and queue. aio-pika sends
   and consumes the very messages tidings does (body, headers, properties);
3. end-to-end latency at 1,000 events/s through outbox, dispatcher, RabbitMQ and a consumer.

Needs RabbitMQ on 127.0.0.1:5672 (guest/guest). Results go to bench/results/amqp.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aio_pika
import aiormq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import BODY_1KB, Report, dispatch_rate, paced, percentile, rate, through_the_bus
from tidings import App, Bus, Event
from tidings.config import load_config
from tidings.format import load_format

URL = "amqp://guest:guest@127.0.0.1:5672/"
ROOT = Path(__file__).resolve().parents[1]


def make_bus(root: Path, exchange: str) -> Bus:
    root.mkdir(parents=True, exist_ok=True)
    config = root / "tidings.toml"
    config.write_text(
        f'[bus]\nhome = "home"\n[transports.rabbit]\nkind = "amqp"\nurl = "{URL}"\n'
        f'[connectors.rabbit]\ntransport = "rabbit"\nexchange = "{exchange}"\nbatch_size = 1000\n'
    )
    return Bus(load_config(config))


async def declare_sink(exchange: str, queue: str) -> None:
    connection = await aiormq.connect(URL)
    channel = await connection.channel()
    await channel.exchange_declare(exchange, exchange_type="topic", durable=True)
    await channel.queue_declare(queue, durable=True)
    await channel.queue_bind(queue, exchange, routing_key="#")
    await connection.close()


async def declare_fedora_queue(exchange: str, queue: str) -> None:
    """The queue exists and is bound before fedora-messaging fills it (with its own queue arguments)."""
    connection = await aiormq.connect(URL)
    channel = await connection.channel()
    await channel.queue_declare(queue, durable=False, auto_delete=True)
    await channel.queue_bind(queue, exchange, routing_key=f"{queue}.#")
    await connection.close()


async def cleanup(exchanges: list[str], queues: list[str]) -> None:
    connection = await aiormq.connect(URL)
    channel = await connection.channel()
    for queue in queues:
        for suffix in ("", ".dead", *(f".retry.{d}s" for d in (1, 5, 25, 125, 625))):
            await channel.queue_delete(queue + suffix)
    for exchange in exchanges:
        await channel.exchange_delete(exchange)
    await connection.close()


async def tidings_delivery(root: Path, n: int, exchange: str) -> float:
    bus = make_bus(root, exchange)
    delivered = await dispatch_rate(bus, n, "bench.amqp")
    bus.close()
    return delivered


def same_messages(n: int) -> list[aio_pika.Message]:
    """What tidings puts on the wire for n events (body, CloudEvents headers, properties), for aio-pika.

    The peers send and consume exactly the messages tidings does, so a ratio compares the
    clients, not the size of the messages.
    """
    fmt = load_format("tidings")
    messages = []
    for _ in range(n):
        wire = fmt.encode(Event.create("bench.raw", BODY_1KB, source="bench"))
        messages.append(
            aio_pika.Message(
                wire.body,
                headers=wire.headers,
                message_id=wire.message_id,
                timestamp=wire.timestamp,
                content_type=wire.content_type,
                delivery_mode=2,
            )
        )
    return messages


async def aio_pika_delivery(n: int, exchange_name: str, window: int = 1000) -> float:
    connection = await aio_pika.connect(URL)
    channel = await connection.channel(publisher_confirms=True)
    exchange = await channel.get_exchange(exchange_name)
    messages = same_messages(n)
    start = time.perf_counter()
    for i in range(0, n, window):
        await asyncio.gather(
            *(
                exchange.publish(message, routing_key="bench.raw", mandatory=True)
                for message in messages[i : i + window]
            )
        )
    elapsed = time.perf_counter() - start
    await connection.close()
    return rate(n, elapsed)


async def tidings_consume(root: Path, n: int, exchange: str, queue: str) -> float:
    bus = make_bus(root, exchange)
    app = App(queue, transport="rabbit", exchange=exchange, prefetch=100, concurrency=32)
    seen = 0
    done = asyncio.Event()
    first: list[float] = []

    @app.subscribe("#")
    async def handler(event: Event) -> None:
        nonlocal seen
        if not first:
            first.append(time.perf_counter())
        seen += 1
        if seen >= n:
            done.set()

    await app.declare(bus)
    transport = bus.make_transport("rabbit")
    await transport.connect()
    fmt = bus.make_format("tidings")
    for i in range(0, n, 1000):
        await transport.send(
            exchange, [fmt.encode(bus.event("bench.fill", BODY_1KB)) for _ in range(min(1000, n - i))]
        )
    await transport.close()
    stop = asyncio.Event()
    task = asyncio.create_task(app.run(bus, stop))
    await asyncio.wait_for(done.wait(), 600)
    elapsed = time.perf_counter() - first[0]
    stop.set()
    await task
    return rate(n - 1, elapsed)


async def consume_runs(work: Path, n: int, tag: str, rounds: int = 3) -> tuple[float, float]:
    """Medians of ``rounds`` interleaved runs each (tidings, aio-pika, tidings, ...), every run on a
    fresh exchange and queue of its own, so neither side consumes while the broker still writes
    the other's messages."""
    ours: list[float] = []
    raw: list[float] = []
    for i in range(rounds):
        for side, run, results in (("ours", tidings_consume, ours), ("raw", None, raw)):
            exchange, queue = f"bench.{tag}.c{i}{side}", f"bench.{tag}.c{i}{side}.q"
            await declare_sink(exchange, queue)
            try:
                if run is not None:
                    results.append(await run(work / f"consume-{i}", n, exchange, queue))
                else:
                    results.append(await aio_pika_consume(n, exchange, queue))
            finally:
                await cleanup([exchange], [queue])
    return statistics.median(ours), statistics.median(raw)


async def aio_pika_consume(n: int, exchange: str, queue_name: str) -> float:
    connection = await aio_pika.connect(URL)
    channel = await connection.channel(publisher_confirms=True)
    await channel.set_qos(prefetch_count=100)
    ex = await channel.get_exchange(exchange)
    queue = await channel.declare_queue(queue_name, durable=True)
    await queue.bind(ex, routing_key="#")
    messages = same_messages(n)
    for i in range(0, n, 1000):
        await asyncio.gather(*(ex.publish(m, routing_key="bench.raw") for m in messages[i : i + 1000]))
    seen = 0
    done = asyncio.Event()
    first: list[float] = []

    async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        nonlocal seen
        if not first:
            first.append(time.perf_counter())
        await message.ack()
        seen += 1
        if seen >= n:
            done.set()

    await queue.consume(on_message)
    await asyncio.wait_for(done.wait(), 600)
    elapsed = time.perf_counter() - first[0]
    await connection.close()
    return rate(n - 1, elapsed)


def fedora(role: str, n: int, *args: str) -> float | None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "bench.fedora_peer", role, str(n), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if result.returncode != 0:
        print(f"(fedora-messaging {role} failed: {result.stderr.strip().splitlines()[-1:]})")
        return None
    return float(result.stdout.strip().splitlines()[-1])


async def latency(root: Path, n: int, per_second: float, exchange: str, queue: str) -> tuple[float, float]:
    bus = make_bus(root, exchange)
    app = App(queue, transport="rabbit", exchange=exchange, prefetch=200, concurrency=32)

    async def publish() -> None:
        await paced(lambda i: bus.apublish("bench.latency", {"i": i}), n, per_second)

    _, latencies = await through_the_bus(bus, app, n, publish)
    return percentile(latencies, 0.5) * 1000, percentile(latencies, 0.99) * 1000


async def main(quick: bool) -> None:
    n = 4000 if quick else 20_000
    fedora_n = 300 if quick else 1500
    work = Path(tempfile.mkdtemp(prefix="tidings-bench-amqp-"))
    tag = uuid.uuid4().hex[:6]
    exchange, sink = f"bench.{tag}", f"bench.{tag}.sink"
    await declare_sink(exchange, sink)
    report = Report("amqp")
    try:
        ours = await tidings_delivery(work / "deliver", n, exchange)
        raw = await aio_pika_delivery(n, exchange)
        fm = fedora("publish", fedora_n, exchange)
        report.add(
            "deliver to RabbitMQ with confirms: tidings",
            ours,
            "msgs/s",
            peer="raw aio-pika pipelined",
            peer_value=raw,
            target=">= 1x raw (aim 2x)",
        )
        if fm:
            report.add(
                "deliver to RabbitMQ with confirms: tidings",
                ours,
                "msgs/s",
                peer="fedora-messaging api.publish",
                peer_value=fm,
            )
        ours_c, raw_c = await consume_runs(work, n, tag)
        await declare_fedora_queue(exchange, f"bench.{tag}.fm")
        fm_c = fedora("consume", fedora_n, f"bench.{tag}.fm", exchange)
        report.add(
            "consume with ack: tidings App",
            ours_c,
            "msgs/s",
            peer="raw aio-pika prefetch 100",
            peer_value=raw_c,
            target=">= 1x raw",
        )
        if fm_c:
            report.add(
                "consume with ack: tidings App",
                ours_c,
                "msgs/s",
                peer="fedora-messaging consumer",
                peer_value=fm_c,
            )
        # its own exchange: only the consumer's queue takes the messages, not the sink as well
        p50, p99 = await latency(
            work / "latency", 1000 if quick else 5000, 1000.0, f"{exchange}.lat", f"bench.{tag}.lat"
        )
        report.add("end to end via RabbitMQ @1,000/s, p50", p50, "ms", target="<= 3")
        report.add("end to end via RabbitMQ @1,000/s, p99", p99, "ms", target="<= 15")
    finally:
        await cleanup(
            [exchange, f"{exchange}.lat"],
            [sink, f"bench.{tag}.ours", f"bench.{tag}.raw", f"bench.{tag}.lat", f"bench.{tag}.fm"],
        )
    print(f"saved {report.save()}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller counts (a smoke run)")
    asyncio.run(main(parser.parse_args().quick))
