"""Network faults between tidings and RabbitMQ, through the TCP fault proxy (tests/faultproxy.py).

Each scenario runs 5,000 events through outbox → dispatcher → proxy → RabbitMQ → proxy →
consumer while one fault is switched on, then heals it, and keeps a ledger: lost and unexpected
must be zero. A blackholed connection must be noticed within twice the heartbeat interval, and
after each scenario no task or thread of ours may be left running.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from tests.faultproxy import FaultProxy
from tests.faults.rig import Rig
from tests.ledger import scaled

pytestmark = [pytest.mark.rabbitmq, pytest.mark.slow]

EVENTS = scaled(5_000, 50_000)
HEARTBEAT = 4.0  # seconds; the transport notices a silent connection within this


async def latency(proxy: FaultProxy, rig: Rig) -> None:
    proxy.latency(40, jitter_ms=30)
    await asyncio.sleep(4)


async def blackhole(proxy: FaultProxy, rig: Rig) -> None:
    assert rig.dispatcher is not None
    stats = rig.dispatcher.connectors[0].stats
    await asyncio.sleep(0.5)
    proxy.blackhole()
    started = time.monotonic()
    while stats.down_since is None and time.monotonic() - started < 3 * HEARTBEAT:
        await asyncio.sleep(0.05)
    noticed = time.monotonic() - started
    print(f"blackhole noticed by the dispatcher after {noticed:.1f}s (heartbeat {HEARTBEAT:g}s)")
    assert noticed <= 2 * HEARTBEAT


async def reset(proxy: FaultProxy, rig: Rig) -> None:
    for _ in range(3):
        await asyncio.sleep(1.0)
        assert proxy.reset_all() >= 1


async def slice_bytes(proxy: FaultProxy, rig: Rig) -> None:
    proxy.slice()
    await asyncio.sleep(3)


async def cut_mid_frame(proxy: FaultProxy, rig: Rig) -> None:
    # reconnections die after 1,500 bytes: past the handshake, in the middle of a publish
    proxy.cut_after(1_500)
    await asyncio.sleep(0.5)
    proxy.reset_all()
    await asyncio.sleep(3)


FAULTS: dict[str, Callable[[FaultProxy, Rig], Awaitable[None]]] = {
    "latency 40±30 ms": latency,
    "blackhole": blackhole,
    "reset every connection x3": reset,
    "1-byte writes": slice_bytes,
    "cut after 1,500 bytes": cut_mid_frame,
}


def our_threads() -> set[str]:
    return {t.name for t in threading.enumerate() if t.name.startswith("tidings")}


@pytest.mark.parametrize("name", list(FAULTS))
async def test_network_fault_loses_nothing(name: str, tmp_path: Path, rabbitmq: str) -> None:
    tasks_before = asyncio.all_tasks()
    threads_before = our_threads()
    proxy = await FaultProxy(5672).start()
    rig = Rig(tmp_path, proxy.url(), heartbeat=HEARTBEAT)
    try:
        await rig.start()
        publishing = asyncio.create_task(rig.publish(EVENTS, pace=0.0004))
        await FAULTS[name](proxy, rig)
        proxy.heal()
        await publishing
        await rig.wait_all_delivered(timeout=120)
    finally:
        proxy.heal()
        await rig.close()
        await proxy.stop()
    verdict = rig.verdict()
    print(verdict.line(f"fault proxy: {name}"))
    assert verdict.ok and verdict.returned == EVENTS
    await asyncio.sleep(0.5)  # tasks finishing their last callbacks
    left = [t for t in asyncio.all_tasks() - tasks_before if t is not asyncio.current_task()]
    assert not left, f"tasks left running: {left}"
    assert our_threads() <= threads_before, f"threads left running: {our_threads() - threads_before}"
