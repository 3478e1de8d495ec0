"""A bus wired to the real RabbitMQ for fault tests: one connector, one consuming app, a ledger."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiormq

from tests.conftest import delete_amqp_topology
from tests.ledger import Verdict, check
from tidings import App, Bus, Event
from tidings.config import load_config
from tidings.dispatcher import Dispatcher

RABBIT = "amqp://guest:guest@127.0.0.1:5672/"


def rabbitmqctl(*args: str, timeout: float = 120) -> str:
    result = subprocess.run(
        ["rabbitmqctl", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if result.returncode != 0:
        raise AssertionError(f"rabbitmqctl {' '.join(args)} failed: {result.stderr.strip()[-500:]}")
    return result.stdout


def write_config(
    root: Path, url: str = RABBIT, *, heartbeat: int = 5, name: str = "", more: str = ""
) -> tuple[Path, str]:
    """A config with a `rabbit` transport and connector on a fresh exchange, then ``more`` TOML;
    returns (path, exchange)."""
    exchange = f"faults.{name or uuid.uuid4().hex[:8]}"
    config = root / "tidings.toml"
    config.write_text(
        f'[bus]\nsource = "faults"\nhome = "home"\n\n'
        f'[transports.rabbit]\nkind = "amqp"\nurl = "{url}"\nheartbeat = {heartbeat}\n\n'
        f'[connectors.rabbit]\ntransport = "rabbit"\nexchange = "{exchange}"\nretry_schedule = [0.5, 1, 2]\n'
        f"max_attempts = 1000\n{more}"
    )
    return config, exchange


class Rig:
    """In-process dispatcher and consumer on RabbitMQ, counting like a ledger."""

    def __init__(self, root: Path, url: str = RABBIT, *, heartbeat: int = 5, more_config: str = "") -> None:
        self.url = url
        self.config_path, self.exchange = write_config(root, url, heartbeat=heartbeat, more=more_config)
        self.bus = Bus(load_config(self.config_path))
        self.queue = f"{self.exchange}.svc"
        self.app = App(
            self.queue,
            transport="rabbit",
            exchange=self.exchange,
            prefetch=200,
            concurrency=32,
            retry_schedule=[0.2],
        )
        self.attempted: list[str] = []
        self.returned: list[str] = []
        self.delivered: list[str] = []
        self.on_event: Callable[[Event], Any] | None = None
        self.app.subscribe("#")(self._record)
        self.stop = asyncio.Event()
        self.tasks: list[asyncio.Task[Any]] = []
        self.dispatcher: Dispatcher | None = None

    async def _record(self, event: Event) -> None:
        if self.on_event is not None:
            await self.on_event(event)
        self.delivered.append(event.id)

    async def start(self, *, consumer: bool = True, dispatcher: bool = True) -> None:
        await self.app.declare(self.bus)
        if consumer:
            self.tasks.append(asyncio.create_task(self.app.run(self.bus, self.stop), name="consumer"))
        if dispatcher:
            self.dispatcher = self.bus.dispatcher()
            self.tasks.append(asyncio.create_task(self.dispatcher.run(self.stop), name="dispatcher"))

    async def publish(self, count: int, *, pace: float = 0.0) -> None:
        for n in range(count):
            event = self.bus.event(f"fault.e{n % 10}", {"n": n})
            self.attempted.append(event.id)
            await self.bus.apublish(event)
            self.returned.append(event.id)
            if pace:
                await asyncio.sleep(pace)

    async def wait_all_delivered(self, timeout: float) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        want = set(self.returned)
        while not want <= set(self.delivered):
            for task in self.tasks:
                if task.done():
                    task.result()  # surface a crash of the consumer or dispatcher
            if asyncio.get_running_loop().time() > deadline:
                missing = len(want - set(self.delivered))
                raise AssertionError(f"{missing} events not delivered within {timeout}s; {self.verdict()}")
            await asyncio.sleep(0.1)

    def verdict(self) -> Verdict:
        return check(self.attempted, self.returned, self.delivered)

    async def close(self) -> None:
        await self.close_keeping_queues()
        await self.delete_topology()

    async def close_keeping_queues(self) -> None:
        self.stop.set()
        results = await asyncio.wait_for(asyncio.gather(*self.tasks, return_exceptions=True), 60)
        self.bus.close()
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def delete_topology(self) -> None:
        queues = [self.queue, f"{self.queue}.dead"]  # a test that consumes the dead letters declares it too
        await delete_amqp_topology(RABBIT, queues, [self.exchange, f"{self.exchange}.nobody"])


async def queue_depth(url: str, queue: str) -> int:
    connection = await aiormq.connect(url)
    try:
        declared = await (await connection.channel()).queue_declare(queue, passive=True)
        return int(declared.message_count or 0)
    finally:
        await connection.close()
