"""tidings over STOMP (RabbitMQ's STOMP plugin) against raw stomp.py, in one run.

    python bench/bench_stomp.py [--quick]

Delivery with a receipt for every frame (RabbitMQ answers a receipt once the message is
confirmed): the dispatcher sending outbox events (with the default 4 batches in flight, and
with 16), vs raw stomp.py sending the very same frames
(body and headers) one at a time — each waits for its receipt —, and vs raw stomp.py writing
every frame at once and then waiting for all the receipts (pipelined).

Needs RabbitMQ with the STOMP plugin on 127.0.0.1:61613 (scripts/services enables it). Results
go to bench/results/stomp.json.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import aiormq
import stomp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import BODY_1KB, Report, dispatch_rate, rate
from tidings import Bus
from tidings.config import load_config
from tidings.transport import Binding, ExchangeSpec, QueueSpec, Topology
from tidings.transports.stomp.frames import send_headers

URL = "stomp://guest:guest@127.0.0.1:61613/"
AMQP = "amqp://guest:guest@127.0.0.1:5672/"


async def delete_amqp_topology(queues: list[str], exchanges: list[str]) -> None:
    connection = await aiormq.connect(AMQP)
    channel = await connection.channel()
    for name in queues:
        for suffix in ("", ".dead", *(f".retry.{d}s" for d in (1, 5, 25, 125, 625))):
            await channel.queue_delete(name + suffix)
    for name in exchanges:
        await channel.exchange_delete(name)
    await connection.close()


def make_bus(root: Path, exchange: str, in_flight: int = 4) -> Bus:
    root.mkdir(parents=True, exist_ok=True)
    (root / "tidings.toml").write_text(
        f'[bus]\nhome = "home"\n\n[transports.stomp]\nkind = "stomp"\nurl = "{URL}"\n\n'
        f'[connectors.stomp]\ntransport = "stomp"\nexchange = "{exchange}"\nin_flight = {in_flight}\n'
    )
    return Bus(load_config(root / "tidings.toml"))


async def tidings_delivery(root: Path, n: int, exchange: str, in_flight: int = 4) -> float:
    bus = make_bus(root, exchange, in_flight)
    delivered = await dispatch_rate(bus, n, "bench.stomp", poll=0.02)
    bus.close()
    return delivered


class Receipts(stomp.ConnectionListener):
    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.changed = threading.Condition()

    def on_receipt(self, frame: stomp.utils.Frame) -> None:
        with self.changed:
            self.seen.add(frame.headers["receipt-id"])
            self.changed.notify_all()

    def wait(self, receipts: set[str], timeout: float = 120) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: receipts <= self.seen, timeout), "receipts missing"


def same_frames(bus: Bus, n: int, exchange: str) -> list[tuple[str, bytes, dict[str, str]]]:
    fmt = bus.make_format("tidings")
    frames = []
    for _ in range(n):
        message = fmt.encode(bus.event("bench.stomp", BODY_1KB))
        frames.append((f"/exchange/{exchange}/{message.routing_key}", message.body, send_headers(message)))
    return frames


def raw_delivery(frames: list[tuple[str, bytes, dict[str, str]]], pipelined: bool) -> float:
    connection = stomp.Connection12([("127.0.0.1", 61613)], vhost="/", auto_decode=False)
    listener = Receipts()
    connection.set_listener("bench", listener)
    connection.connect("guest", "guest", wait=True)
    start = time.perf_counter()
    receipts = set()
    for n, (destination, body, headers) in enumerate(frames):
        receipt = f"r{n}"
        connection.send(destination, body, headers={**headers, "receipt": receipt})
        if pipelined:
            receipts.add(receipt)
        else:
            listener.wait({receipt})
    listener.wait(receipts)
    elapsed = time.perf_counter() - start
    connection.disconnect()
    return rate(len(frames), elapsed)


async def main(quick: bool) -> None:
    n = 3000 if quick else 20_000
    sequential_n = 1000 if quick else 3000
    work = Path(tempfile.mkdtemp(prefix="tidings-bench-stomp-"))
    tag = uuid.uuid4().hex[:6]
    exchange, sink = f"bench.stomp.{tag}", f"bench.stomp.{tag}.sink"
    bus = make_bus(work / "declare", exchange)
    transport = bus.make_transport("stomp")
    await transport.declare(Topology([ExchangeSpec(exchange)], [QueueSpec(sink, [Binding(exchange, "#")])]))
    report = Report("stomp")
    try:
        ours = await tidings_delivery(work / "deliver", n, exchange)
        wide = await tidings_delivery(work / "deliver-wide", n, exchange, in_flight=16)
        frames = same_frames(bus, n, exchange)
        pipelined = raw_delivery(frames, pipelined=True)
        sequential = raw_delivery(frames[:sequential_n], pipelined=False)
        report.add(
            "deliver over STOMP with receipts: tidings",
            ours,
            "msgs/s",
            peer="raw stomp.py pipelined",
            peer_value=pipelined,
            target=">= 1x pipelined raw",
        )
        report.add(
            "  the same, in_flight = 16 batches",
            wide,
            "msgs/s",
            peer="raw stomp.py pipelined",
            peer_value=pipelined,
        )
        report.add(
            "deliver over STOMP with receipts: tidings",
            ours,
            "msgs/s",
            peer="raw stomp.py, a receipt awaited per frame",
            peer_value=sequential,
        )
    finally:
        bus.close()
        await delete_amqp_topology([sink], [exchange])
    print(f"saved {report.save()}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller counts (a smoke run)")
    asyncio.run(main(parser.parse_args().quick))
