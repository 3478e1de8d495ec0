"""The doorbell: a commit in one process wakes a reader waiting in another, at once."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

from tidings.doorbell import Doorbell

ROOT = Path(__file__).resolve().parents[2]


async def test_a_ring_wakes_a_listener_of_the_same_database(tmp_path: Path) -> None:
    woken = asyncio.Event()
    listener = Doorbell(tmp_path / "broker.db")
    listener.listen(woken.set)
    Doorbell(tmp_path / "broker.db").ring()  # another writer of the same file
    await asyncio.wait_for(woken.wait(), 1)
    other = asyncio.Event()
    Doorbell(tmp_path / "other.db").listen(other.set)
    woken.clear()
    Doorbell(tmp_path / "broker.db").ring()
    await asyncio.wait_for(woken.wait(), 1)
    assert not other.is_set(), "a ring wakes only the readers of its own database"
    listener.close()
    assert not list((tmp_path / "broker.db.doorbell").iterdir())


def test_a_listener_in_another_process_wakes_within_milliseconds(tmp_path: Path) -> None:
    code = (
        "import asyncio, sys, time\n"
        "from tidings.doorbell import Doorbell\n"
        "async def main():\n"
        "    woken = asyncio.Event()\n"
        f"    Doorbell({str(tmp_path / 'broker.db')!r}).listen(woken.set)\n"
        "    print('listening', flush=True)\n"
        "    await asyncio.wait_for(woken.wait(), 10)\n"
        "    print(time.time(), flush=True)\n"
        "asyncio.run(main())\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    assert child.stdout is not None and child.stdout.readline() == b"listening\n"
    rung = time.time()
    Doorbell(tmp_path / "broker.db").ring()
    woke = float(child.stdout.readline())
    assert child.wait(10) == 0
    assert woke - rung < 0.2


def test_a_dead_listener_is_forgotten_by_the_next_ring(tmp_path: Path) -> None:
    folder = tmp_path / "broker.db.doorbell"
    folder.mkdir()
    (folder / "0123456789abcdef0123456789abcdef").touch()  # left by a process that died
    Doorbell(tmp_path / "broker.db").ring()
    assert not list(folder.iterdir())
