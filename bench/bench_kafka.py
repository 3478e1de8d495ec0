"""tidings on Kafka against a raw confluent-kafka client, in one run.

    python bench/bench_kafka.py [--quick] [--rounds N]

1. delivery: the dispatcher sending outbox events to Kafka (idempotent producer, acks=all),
   vs a raw confluent-kafka idempotent producer sending the very same records (value, key,
   headers) and waiting for every delivery report; and vs a hand-written outbox forwarder: the
   same raw producer fed from an outbox of the same events, each row decoded and encoded by the
   same code tidings uses (the per-event work any forwarder of stored events does, without
   tidings' cursor, settlements, backlog and event loop);
2. consuming with commits: a tidings App (handler, then the commit of the finished prefix) vs
   a raw confluent-kafka consumer that commits the same way (asynchronously, every 0.2 s), each
   reading the same number of records from a topic of its own.

Needs a Kafka-protocol broker on 127.0.0.1:9092 (scripts/services starts Tansu). Results go
to bench/results/kafka.json.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from statistics import median

from confluent_kafka import Consumer, Producer, TopicPartition

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import BODY_1KB, Report, dispatch_rate, rate
from tidings import App, Bus, Event
from tidings.config import load_config
from tidings.transports.kafka.records import key_of, to_record

SERVERS = "127.0.0.1:9092"
#: a Kafka record as the raw producer takes it: key, value, headers
Record = tuple[bytes | None, bytes, list[tuple[str, bytes]]]


def make_bus(root: Path, exchange: str) -> Bus:
    root.mkdir(parents=True, exist_ok=True)
    (root / "tidings.toml").write_text(
        f'[bus]\nhome = "home"\n\n[transports.kafka]\nkind = "kafka"\nurl = "kafka://{SERVERS}"\n'
        "session_timeout = 2.0\n\n"
        f'[connectors.kafka]\ntransport = "kafka"\nexchange = "{exchange}"\n'
    )
    return Bus(load_config(root / "tidings.toml"))


async def tidings_delivery(root: Path, n: int, exchange: str) -> float:
    bus = make_bus(root, exchange)
    delivered = await dispatch_rate(bus, n, "bench.kafka", poll=0.02)
    bus.close()
    return delivered


def same_records(bus: Bus, n: int, topic: str) -> list[Record]:
    """The records tidings sends: the native format's message as a Kafka record."""
    fmt = bus.make_format("tidings")
    records = []
    for _ in range(n):
        message = fmt.encode(bus.event("bench.kafka", BODY_1KB))
        record = to_record(message, topic, key_of(message, "subject"))
        records.append((record.key, record.value, record.headers))
    return records


def timed_produce(topic: str, records: Iterable[Record]) -> tuple[int, float]:
    """An idempotent raw producer sends ``records`` (made as they are iterated, on the clock) and
    waits for every report: how many were delivered, and the seconds it took."""
    producer = Producer(
        {"bootstrap.servers": SERVERS, "enable.idempotence": True, "acks": "all", "linger.ms": 5}
    )
    producer.produce(topic, value=b"warm-up")
    producer.flush(30)
    delivered = 0

    def report(error: object, _: object) -> None:
        nonlocal delivered
        if error is None:
            delivered += 1

    start = time.perf_counter()
    for key, value, headers in records:
        while True:
            try:
                producer.produce(topic, value=value, key=key, headers=headers, on_delivery=report)
                break
            except BufferError:
                producer.poll(0.001)
        producer.poll(0)
    producer.flush(60)
    return delivered, time.perf_counter() - start


def raw_delivery(records: list[Record], topic: str) -> float:
    delivered, elapsed = timed_produce(topic, records)
    assert delivered == len(records), f"raw producer delivered {delivered} of {len(records)}"
    return rate(len(records), elapsed)


def forwarder_delivery(bus: Bus, n: int, topic: str) -> float:
    """A forwarder written by hand: outbox rows read in batches of 500, each event decoded and
    encoded as tidings does, produced at once; every delivery report awaited at the end."""
    for i in range(0, n, 1000):
        bus.publish_many([bus.event("bench.kafka", BODY_1KB) for _ in range(min(1000, n - i))])
    fmt = bus.make_format("tidings")
    outbox = sqlite3.connect(bus.config.outbox_path())

    def read() -> Iterator[Record]:
        last = 0
        while rows := outbox.execute(
            "SELECT seq, data FROM events WHERE seq > ? ORDER BY seq LIMIT 500", (last,)
        ).fetchall():
            for _, data in rows:
                message = fmt.encode(Event.from_stored(data))
                record = to_record(message, topic, key_of(message, "subject"))
                yield record.key, record.value, record.headers
            last = rows[-1][0]

    delivered, elapsed = timed_produce(topic, read())
    outbox.close()
    assert delivered == n, f"the forwarder delivered {delivered} of {n}"
    return rate(n, elapsed)


async def fill(bus: Bus, exchange: str, n: int) -> None:
    transport = bus.make_transport("kafka")
    await transport.connect()
    fmt = bus.make_format("tidings")
    for i in range(0, n, 1000):
        messages = [fmt.encode(bus.event("bench.fill", BODY_1KB)) for _ in range(min(1000, n - i))]
        await transport.send(exchange, messages)
    await transport.close()


async def tidings_consume(root: Path, n: int, exchange: str) -> float:
    bus = make_bus(root, exchange)
    app = App(f"{exchange}.q", transport="kafka", exchange=exchange, prefetch=500, concurrency=64)
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
    await fill(bus, exchange, n)
    stop = asyncio.Event()
    task = asyncio.create_task(app.run(bus, stop))
    await asyncio.wait_for(done.wait(), 600)
    elapsed = time.perf_counter() - first[0]
    stop.set()
    await task
    bus.close()
    return rate(n - 1, elapsed)


def raw_consume(n: int, topic: str) -> float:
    consumer = Consumer(
        {
            "bootstrap.servers": SERVERS,
            "group.id": f"{topic}.raw",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 2000,
            "heartbeat.interval.ms": 200,
            "fetch.wait.max.ms": 10,
        }
    )
    consumer.subscribe([topic])
    seen, first, last_commit = 0, 0.0, 0.0
    positions: dict[int, int] = {}
    while seen < n:
        for record in consumer.consume(500, 0.05):
            if record.error() is not None:
                continue
            if not first:
                first = time.perf_counter()
            seen += 1
            positions[record.partition()] = record.offset() + 1
        now = time.perf_counter()
        if positions and now - last_commit >= 0.2:
            consumer.commit(
                offsets=[TopicPartition(topic, p, o) for p, o in positions.items()], asynchronous=True
            )
            last_commit = now
    elapsed = time.perf_counter() - first
    consumer.commit(offsets=[TopicPartition(topic, p, o) for p, o in positions.items()], asynchronous=False)
    consumer.close()
    return rate(n - 1, elapsed)


async def main(quick: bool, rounds: int) -> None:
    n = 5000 if quick else 50_000
    work = Path(tempfile.mkdtemp(prefix="tidings-bench-kafka-"))
    report = Report("kafka")
    # the broker's pace drifts from run to run (Tansu keeps every record in memory): the two sides
    # take turns, the order swapped each round, and each side's median is compared
    delivered: dict[str, list[float]] = {"tidings": [], "raw": [], "forwarder": []}
    consumed: dict[str, list[float]] = {"tidings": [], "raw": []}
    for turn in range(rounds):
        tag = uuid.uuid4().hex[:6]
        bus = make_bus(work / f"raw-{tag}", f"bench-{tag}-raw")
        records = same_records(bus, n, f"bench-{tag}-raw")
        sides = ("tidings", "raw", "forwarder")
        for side in sides if turn % 2 == 0 else sides[::-1]:
            if side == "tidings":
                ours = await tidings_delivery(work / f"deliver-{tag}", n, f"bench-{tag}-ours")
                delivered[side].append(ours)
            elif side == "raw":
                delivered[side].append(raw_delivery(records, f"bench-{tag}-raw"))
            else:
                by_hand = make_bus(work / f"forward-{tag}", f"bench-{tag}-fwd")
                delivered[side].append(forwarder_delivery(by_hand, n, f"bench-{tag}-fwd"))
                by_hand.close()
        consumed["tidings"].append(await tidings_consume(work / f"consume-{tag}", n, f"bench-{tag}-c-ours"))
        await fill(bus, f"bench-{tag}-c-raw", n)
        consumed["raw"].append(raw_consume(n, f"bench-{tag}-c-raw"))
        bus.close()
        ours, raw, by_hand = (delivered[side][-1] for side in ("tidings", "raw", "forwarder"))
        ours_c, raw_c = consumed["tidings"][-1], consumed["raw"][-1]
        print(
            f"round {turn + 1}: deliver {ours:,.0f} vs raw {raw:,.0f} /s (x{ours / raw:.2f}), "
            f"vs a hand-written forwarder {by_hand:,.0f} /s (x{ours / by_hand:.2f}); "
            f"consume {ours_c:,.0f} vs raw {raw_c:,.0f} /s (x{ours_c / raw_c:.2f})",
            flush=True,
        )
    report.add(
        f"deliver to Kafka (idempotent, acks=all): tidings, median of {rounds}",
        median(delivered["tidings"]),
        "msgs/s",
        peer="raw confluent-kafka, same records",
        peer_value=median(delivered["raw"]),
        target=">= 0.8x raw and >= 10,000",
    )
    report.add(
        f"deliver to Kafka: tidings vs a hand-written forwarder, median of {rounds}",
        median(delivered["tidings"]),
        "msgs/s",
        peer="the same outbox rows, decoded and encoded by hand",
        peer_value=median(delivered["forwarder"]),
    )
    report.add(
        f"consume with commits: tidings App, median of {rounds}",
        median(consumed["tidings"]),
        "msgs/s",
        peer="raw confluent-kafka, same commits",
        peer_value=median(consumed["raw"]),
        target=">= 0.8x raw",
    )
    print(f"saved {report.save()}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller counts (a smoke run)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of both sides (default 3)")
    arguments = parser.parse_args()
    asyncio.run(main(arguments.quick, arguments.rounds))
