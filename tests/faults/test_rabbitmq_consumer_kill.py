"""A consumer SIGKILLed between its side effect and its ack, many times, on RabbitMQ."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import delete_amqp_topology
from tests.faults.rig import write_config
from tidings import App, Bus
from tidings.config import load_config

pytestmark = [pytest.mark.rabbitmq, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
EVENTS, KILL_EVERY = 30, 3  # 10 events kill their consumer once each


def effects(db_path: Path) -> list[str]:
    if not db_path.exists():
        return []
    with sqlite3.connect(db_path) as db:
        try:
            return [row[0] for row in db.execute("SELECT id FROM effects")]
        except sqlite3.OperationalError:
            return []  # no table yet


def run_until_done(config: Path, app: str, effects_arg: str, effects_db: Path, ids: set[str]) -> int:
    """Restart the dying consumer until every event's side effect is there; returns the kills."""
    kills = 0
    deadline = time.monotonic() + 180
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    while not ids <= set(effects(effects_db)):
        assert time.monotonic() < deadline, f"not done after {kills} kills"
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.faults.procs",
                "consume-and-die",
                str(config),
                app,
                effects_arg,
                str(KILL_EVERY),
            ],
            cwd=config.parent,
            env=env,
            stderr=subprocess.DEVNULL,
        )
        while proc.poll() is None and not ids <= set(effects(effects_db)):
            time.sleep(0.05)
        if proc.poll() is None:
            proc.terminate()
            proc.wait(20)
        elif proc.returncode == -9:
            kills += 1
    return kills


@pytest.mark.parametrize("inbox", [False, True], ids=["plain", "inbox"])
def test_every_killed_event_comes_back_and_the_inbox_makes_effects_once(
    tmp_path: Path, rabbitmq: str, inbox: bool
) -> None:
    config, exchange = write_config(tmp_path, rabbitmq)
    bus = Bus(load_config(config))
    queue = f"{exchange}.killed"
    app = App(queue, transport="rabbit", exchange=exchange)
    app.subscribe("#")(lambda event: None)
    asyncio.run(app.declare(bus))
    published = [bus.publish(f"kill.e{n}", {"n": n}) for n in range(EVENTS)]
    asyncio.run(bus.dispatcher().drain(timeout=60))
    ids = {e.id for e in published}
    effects_db = tmp_path / "home" / "inbox.db" if inbox else tmp_path / "effects.db"
    try:
        kills = run_until_done(config, queue, "inbox" if inbox else str(effects_db), effects_db, ids)
    finally:
        asyncio.run(delete_amqp_topology(rabbitmq, [queue], [exchange]))
        bus.close()
    done = effects(effects_db)
    duplicated = len(done) - len(set(done))
    print(
        f"[ledger] consumer SIGKILL before ack ({'inbox' if inbox else 'plain'}): events {EVENTS}, "
        f"kills {kills}, effects {len(done)}, lost {len(ids - set(done))}, duplicated {duplicated}"
    )
    assert kills >= EVENTS // KILL_EVERY
    assert ids <= set(done)  # every event whose consumer died came back
    if inbox:
        assert duplicated == 0  # the side effect and the inbox record commit together
    else:
        assert duplicated >= kills  # without the inbox each killed event's effect happened twice
