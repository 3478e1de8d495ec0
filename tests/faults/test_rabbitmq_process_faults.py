"""Process faults against the real RabbitMQ: the dispatcher SIGKILLed between publish and confirm,
and the broker's memory alarm raised while events flow. Ledgers are printed; lost must be 0."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.faults.rig import Rig, rabbitmqctl
from tests.ledger import scaled

# alone: its memory alarm blocks every publisher on RabbitMQ, other tests' too
pytestmark = [pytest.mark.rabbitmq, pytest.mark.slow, pytest.mark.alone]

ROOT = Path(__file__).resolve().parents[2]
KILLS, EVENTS = scaled(20, 200), scaled(6_000, 60_000)


def start_dispatcher(config: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tidings", "--config", str(config), "dispatch", "--log-level", "WARNING"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


async def test_dispatcher_sigkilled_twenty_times_loses_nothing(tmp_path: Path, rabbitmq: str) -> None:
    seed = int(os.environ.get("TIDINGS_FAULT_SEED", "11"))
    rng = random.Random(seed)
    rig = Rig(tmp_path)
    await rig.start(dispatcher=False)  # the consumer here; `tidings dispatch` in its own process
    dispatcher = start_dispatcher(rig.config_path)
    publishing = asyncio.create_task(rig.publish(EVENTS, pace=0.0005))
    kills = 0
    try:
        while kills < KILLS or not publishing.done():
            # at random moments: mostly with batches sent and not yet confirmed
            await asyncio.sleep(rng.uniform(0.3, 1.0))
            dispatcher.send_signal(signal.SIGKILL)
            await asyncio.to_thread(dispatcher.wait)
            kills += 1
            dispatcher = start_dispatcher(rig.config_path)
        await publishing
        await rig.wait_all_delivered(timeout=120)
    finally:
        dispatcher.terminate()
        await asyncio.to_thread(dispatcher.wait, 30)
        await rig.close()
    verdict = rig.verdict()
    print(verdict.line(f"dispatcher SIGKILL x{kills} on RabbitMQ (seed {seed})"))
    assert kills >= KILLS
    assert verdict.ok and verdict.returned == EVENTS


def memory_watermark() -> str:
    return rabbitmqctl("eval", "vm_memory_monitor:get_vm_memory_high_watermark().").strip()


async def test_memory_alarm_holds_delivery_and_nothing_is_dropped(tmp_path: Path, rabbitmq: str) -> None:
    """RabbitMQ blocks publishers for 30 s; publish() keeps returning (the outbox takes the events),
    and delivery resumes within 10 s of the alarm clearing."""
    rig = Rig(tmp_path)
    await rig.start()
    previous = memory_watermark()
    publishing = asyncio.create_task(rig.publish(3_000, pace=0.015))
    try:
        await asyncio.sleep(3)
        await asyncio.to_thread(rabbitmqctl, "set_vm_memory_high_watermark", "0")
        returned_at_alarm = len(rig.returned)
        await asyncio.sleep(2)  # what was already on its way arrives
        delivered_blocked = len(set(rig.delivered))
        await asyncio.sleep(28)
        returned_during = len(rig.returned) - returned_at_alarm
        delivered_before_clear = len(set(rig.delivered))
        await asyncio.to_thread(rabbitmqctl, "set_vm_memory_high_watermark", previous)
        cleared = time.monotonic()
        while len(set(rig.delivered)) == delivered_before_clear and time.monotonic() - cleared < 30:
            await asyncio.sleep(0.1)
        resumed_after = time.monotonic() - cleared
        await publishing
        await rig.wait_all_delivered(timeout=120)
    finally:
        await asyncio.to_thread(rabbitmqctl, "set_vm_memory_high_watermark", previous)
        await rig.close()
    verdict = rig.verdict()
    print(verdict.line("memory alarm 30 s"))
    print(
        f"published during the alarm: {returned_during}; delivered while blocked: "
        f"{delivered_before_clear - delivered_blocked}; delivery resumed after {resumed_after:.1f}s"
    )
    assert returned_during > 1_000  # publishing never waited for the broker
    assert delivered_before_clear == delivered_blocked, "the alarm did not hold anything back"
    assert resumed_after <= 10
    assert verdict.ok and verdict.returned == 3_000
    assert rig.dispatcher is not None and rig.dispatcher.connectors[0].stats.dead == 0
