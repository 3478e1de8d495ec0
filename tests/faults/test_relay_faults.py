"""A relay SIGKILLed again and again while relaying from a RabbitMQ queue loses nothing.

The relay acks a message only after the outbox committed the event it published, so a relay
killed at any instant leaves every message either in the outbox or still on the queue (to be
relayed by the next run); the outbox stores an event id once, so what came twice is there once.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.clirun import ROOT
from tests.conftest import delete_amqp_topology
from tests.faults.rig import RABBIT, queue_depth
from tests.ledger import check, scaled
from tidings import Bus, Event
from tidings.config import load_config
from tidings.relay import HOPS_HEADER, Relay
from tidings.transport import ExchangeSpec, Outcome, Topology

pytestmark = [pytest.mark.rabbitmq, pytest.mark.slow]

EVENTS = scaled(3000, 30000)
KILLS = 10


def relay_config(root: Path, exchange: str, queue: str) -> Path:
    path = root / "tidings.toml"
    path.write_text(
        '[bus]\nhome = "home"\n'
        '[transports.local]\nkind = "embedded"\n'
        f'[transports.rabbit]\nkind = "amqp"\nurl = "{RABBIT}"\n'
        "[relays.upstream]\n"
        f'transport = "rabbit"\nexchange = "{exchange}"\nqueue = "{queue}"\nbindings = ["load.#"]\n'
        "prefetch = 200\nconcurrency = 16\n"
    )
    return path


class Upstream:
    """Another service publishing into the upstream exchange, with the publishing side of a ledger."""

    def __init__(self, bus: Bus, exchange: str) -> None:
        self.bus, self.exchange = bus, exchange
        self.transport = bus.make_transport("rabbit")
        self.format = bus.make_format("tidings")
        self.attempted: list[str] = []
        self.returned: list[str] = []

    async def open(self) -> None:
        await self.transport.connect()
        relay_app = Relay(self.bus, "upstream").app()
        await self.transport.declare(Topology([ExchangeSpec(self.exchange)], relay_app.topology().queues))

    async def publish(self, count: int) -> None:
        for _ in range(0, count, 20):
            batch = [Event.create(f"load.{n % 7}", {"n": n}) for n in range(20)]
            self.attempted += [e.id for e in batch]
            results = await self.transport.send(self.exchange, [self.format.encode(e) for e in batch])
            self.returned += [
                e.id for e, r in zip(batch, results, strict=True) if r.outcome is Outcome.DELIVERED
            ]
            await asyncio.sleep(0.2)  # a steady stream for 3 s, so that every kill lands mid-flight


def start_relay(root: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tidings", "relay", "upstream", "--log-level", "WARNING"],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=(root / "relay.err").open("ab"),
    )


async def test_a_relay_killed_ten_times_loses_nothing(tmp_path: Path, rabbitmq: str) -> None:
    tag = uuid.uuid4().hex[:8]
    exchange, queue = f"upstream-{tag}", f"relay-{tag}"
    bus = Bus(load_config(relay_config(tmp_path, exchange, queue)))
    rng = random.Random(18)
    upstream = Upstream(bus, exchange)
    await upstream.open()
    waiting_at_kills = []
    try:
        for _ in range(KILLS):
            relay = start_relay(tmp_path)
            publishing = asyncio.create_task(upstream.publish(EVENTS // KILLS))
            await asyncio.sleep(rng.uniform(0.8, 2.0))  # mid-flight: some relayed, some not
            relay.send_signal(signal.SIGKILL)
            relay.wait(timeout=30)
            await publishing
            waiting_at_kills.append(await queue_depth(RABBIT, queue))
        assert sum(1 for waiting in waiting_at_kills if waiting) >= KILLS // 2, waiting_at_kills
        relay = start_relay(tmp_path)
        for _ in range(600):
            if await queue_depth(RABBIT, queue) == 0:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)  # the last messages' acks
        relay.send_signal(signal.SIGTERM)
        assert relay.wait(timeout=30) == 0, (tmp_path / "relay.err").read_text()[-2000:]
        relayed = list(bus.outbox.history())
        verdict = check(upstream.attempted, upstream.returned, [e.id for e in relayed])
        print(verdict.line(f"relay SIGKILL x{KILLS} while relaying from RabbitMQ"))
        assert verdict.lost == 0 and verdict.unexpected == 0
        assert verdict.duplicated == 0  # the outbox stores an id once
        assert all(e.headers[HOPS_HEADER] == "upstream" for e in relayed)
        assert await queue_depth(RABBIT, queue) == 0
    finally:
        await upstream.transport.close()
        bus.close()
        await delete_amqp_topology(RABBIT, [queue, f"{queue}.dead"], [exchange])
