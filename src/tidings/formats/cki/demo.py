"""`tidings demo`: the embedded bus with a CKI DataWarehouse-like producer and a live consumer.

Everything runs in one process on the embedded default (an outbox and a broker
in SQLite files): a producer publishes checkouts, builds and tests as the
DataWarehouse announces them (seed 000), the dispatcher delivers them, and a
consumer service prints each one as it is acked. At the end the ledger says how
many were published, delivered and received.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from tidings.bus import Bus
from tidings.config import default_config
from tidings.consumer import App, Context
from tidings.event import Event
from tidings.formats.cki import cki_event, queue_name

TREES = ["mainline", "stable", "net-next", "rhel-9", "fedora-rawhide"]
ARCHES = ["x86_64", "aarch64", "ppc64le", "s390x"]
TESTS = ["boot", "ltp", "kselftest.net", "xfstests", "stress-ng", "blktests"]


def checkout_story(number: int, rng: random.Random) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(object_type, status, object) in the order the DataWarehouse reports a checkout's life."""
    tree = rng.choice(TREES)
    checkout_id = f"redhat:{rng.getrandbits(40):010x}"
    checkout = {
        "id": checkout_id,
        "origin": "redhat",
        "tree_name": tree,
        "git_commit_hash": f"{rng.getrandbits(160):040x}",
        "valid": True,
    }
    yield "checkout", "new", checkout
    for arch in rng.sample(ARCHES, 2):
        build = {
            "id": f"{checkout_id}-{arch}",
            "checkout_id": checkout_id,
            "origin": "redhat",
            "architecture": arch,
            "status": "PASS" if rng.random() > 0.1 else "FAIL",
        }
        yield "build", "new", build
        yield "build", "updated", build
        for test in rng.sample(TESTS, 2):
            status = rng.choices(["PASS", "FAIL", "ERROR"], [8, 1, 1])[0]
            yield (
                "test",
                "new",
                {
                    "id": f"{build['id']}-{test}",
                    "build_id": build["id"],
                    "origin": "redhat",
                    "path": test,
                    "status": status,
                },
            )
    yield "checkout", "build_setups_finished", checkout
    yield "checkout", "tests_finished", checkout
    yield "checkout", "ready_to_report", checkout


@dataclass
class Ledger:
    published: int = 0
    received: int = 0
    latencies: list[float] | None = None


async def produce(bus: Bus, ledger: Ledger, rate: float, duration: float, stop: asyncio.Event) -> None:
    rng = random.Random(2026)
    deadline = time.monotonic() + duration
    number = 0
    while time.monotonic() < deadline and not stop.is_set():
        number += 1
        for object_type, status, obj in checkout_story(number, rng):
            await bus.apublish(cki_event(object_type, status, obj, source=bus.config.bus.source))
            ledger.published += 1
            await asyncio.sleep(1 / rate)
            if time.monotonic() >= deadline or stop.is_set():
                return


def dashboard(console: Console, ledger: Ledger) -> App:
    app = App("demo-dashboard", queue=queue_name("demo-dashboard"), prefetch=50)

    @app.subscribe("datawarehouse.#")
    async def show(event: Event, ctx: Context) -> None:
        ledger.received += 1
        ledger.latencies.append((datetime.now(UTC) - event.time).total_seconds())  # type: ignore[union-attr]
        body = event.body
        obj = body["object"]
        colour = {"new": "green", "updated": "yellow", "tests_finished": "magenta"}.get(
            body["status"], "cyan"
        )
        detail = obj.get("tree_name") or obj.get("architecture") or f"{obj.get('path')} {obj.get('status')}"
        console.print(
            f"[dim]{event.time:%H:%M:%S.%f}[/] [{colour}]{escape(event.topic):<45}[/] "
            f"{escape(str(obj['id'])[:34]):<34} {escape(str(detail))}",
            markup=True,
            highlight=False,
            soft_wrap=True,  # one event, one line: a pipe or a narrow terminal must not split it
        )

    return app


async def run_demo(home: Path, duration: float, rate: float, console: Console, stop: asyncio.Event) -> Ledger:
    """Publish for ``duration`` seconds (or until ``stop``), then let what was published arrive."""
    bus = Bus(_config(home))
    ledger = Ledger(latencies=[])
    dispatcher = bus.dispatcher()
    try:
        # the lock first: a second demo in this folder stops here, before its consumer could take
        # the first one's events from their shared queue
        dispatcher.acquire()
        consumer = dashboard(console, ledger)
        await consumer.declare(bus)  # the queue exists before the first event is published
        done = asyncio.Event()
        consuming = asyncio.create_task(consumer.run(bus, done))
        dispatching = asyncio.create_task(dispatcher.run(done))
        try:
            await produce(bus, ledger, rate, duration, stop)
            deadline = time.monotonic() + 10
            while ledger.received < ledger.published and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        finally:
            done.set()
            await asyncio.gather(consuming, dispatching)
    finally:
        dispatcher.release()
        bus.close()
    return ledger


def _config(home: Path) -> Any:
    import msgspec

    config = default_config(home.parent)
    return msgspec.structs.replace(
        config, bus=msgspec.structs.replace(config.bus, home=home.name, source="demo.datawarehouse")
    )
