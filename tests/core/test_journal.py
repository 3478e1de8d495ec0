"""The handling journal: deaths are the starts a dead process left unfinished, counted once."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tidings import journal as journal_module
from tidings.journal import HandlingJournal
from tidings.runner import Isolation

ROOT = Path(__file__).resolve().parents[2]


def in_another_process(folder: Path, script: str, *, wait: bool = True) -> subprocess.Popen[bytes]:
    """Run journal calls in a real other process (``j`` is its journal on ``folder``)."""
    code = (
        f"from tidings.journal import HandlingJournal\nj = HandlingJournal({str(folder)!r})\n"
        + textwrap.dedent(script)
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        stdout=subprocess.PIPE,
    )
    if wait:
        proc.wait(30)
    return proc


def test_a_start_without_a_finish_in_a_dead_process_is_one_death(tmp_path: Path) -> None:
    in_another_process(
        tmp_path,
        """
        j.started("q", "poison"); j.started("q", "fine"); j.finished("q", "fine")
        j.started("other", "poison")
        import os; os._exit(17)
        """,
    )
    journal = HandlingJournal(tmp_path)
    assert journal.deaths("q", "poison") == 1
    assert journal.deaths("q", "fine") == 0
    assert journal.deaths("other", "poison") == 1  # per queue: two services, two counts
    assert not list(tmp_path.glob("*.log")), "the dead process's file is adopted and removed"
    assert journal.deaths("q", "poison") == 1  # counted once, however often it is asked
    journal.forget_deaths("q", "poison")
    assert journal.deaths("q", "poison") == 0
    journal.close()


def test_deaths_add_up_over_several_dead_processes(tmp_path: Path) -> None:
    journal = HandlingJournal(tmp_path)
    for _ in range(3):
        in_another_process(tmp_path, 'j.started("q", "poison")\nimport os; os._exit(17)\n')
        journal.deaths("q", "poison")  # adopt as the runtime does, once per redelivery
    assert journal.deaths("q", "poison") == 3
    journal.close()


def test_the_starts_of_a_living_process_are_not_deaths(tmp_path: Path) -> None:
    alive = in_another_process(
        tmp_path,
        'j.started("q", "running")\nprint("started", flush=True)\nimport time; time.sleep(30)\n',
        wait=False,
    )
    try:
        assert alive.stdout is not None and alive.stdout.readline() == b"started\n"
        journal = HandlingJournal(tmp_path)
        assert journal.deaths("q", "running") == 0, "a living process's file was adopted"
        assert len(list(tmp_path.glob("*.log"))) == 1
    finally:
        alive.kill()
        alive.wait(10)
    assert journal.deaths("q", "running") == 1  # now it is dead: the start was its last act
    journal.close()


def test_a_start_finished_and_started_again_counts_only_the_last(tmp_path: Path) -> None:
    in_another_process(
        tmp_path,
        """
        for _ in range(3):
            j.started("q", "retried"); j.finished("q", "retried")
        j.started("q", "retried")
        import os; os._exit(1)
        """,
    )
    journal = HandlingJournal(tmp_path)
    assert journal.deaths("q", "retried") == 1
    journal.close()


def test_a_torn_last_line_is_ignored(tmp_path: Path) -> None:
    (tmp_path / "1-dead.log").write_bytes(b'["S","q","a"]\n["S","q","b"]\n["S","q' + b"\0" * 100)
    journal = HandlingJournal(tmp_path)
    assert (journal.deaths("q", "a"), journal.deaths("q", "b")) == (1, 1)
    journal.close()


def test_a_file_adopted_before_is_not_counted_twice(tmp_path: Path) -> None:
    """The adopter died after committing the deaths and before removing the file."""
    dead = tmp_path / "1-dead.log"
    dead.write_bytes(b'["S","q","a"]\n')
    journal = HandlingJournal(tmp_path)
    assert journal.deaths("q", "a") == 1
    dead.write_bytes(b'["S","q","a"]\n')  # as if it had never been removed
    assert journal.deaths("q", "a") == 1
    assert not dead.exists()
    journal.close()


def test_a_full_file_makes_way_for_a_new_one_carrying_the_running_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal_module, "FILE_BYTES", 256)
    journal = HandlingJournal(tmp_path)
    journal.started("q", "long-running")
    for n in range(50):  # many short ones fill the file several times over
        journal.started("q", f"short-{n}")
        journal.finished("q", f"short-{n}")
    files = list(tmp_path.glob("*.log"))
    assert len(files) == 1, "the old files are removed"
    data = files[0].read_bytes().rstrip(b"\0")
    assert b'"long-running"' in data  # carried over: still a death if the process dies now
    assert journal_module._unfinished(data) == {("q", "long-running"): 1}
    journal.close()
    assert not list(tmp_path.glob("*.log")), "a closed journal leaves no file behind"


async def test_isolation_runs_an_exclusive_one_alone() -> None:
    isolation = Isolation()
    log: list[str] = []

    async def shared(name: str, hold: float) -> None:
        await isolation.enter_shared()
        log.append(f"+{name}")
        await asyncio.sleep(hold)
        log.append(f"-{name}")
        isolation.leave_shared()

    async def exclusive() -> None:
        await isolation.enter_exclusive()
        log.append("+alone")
        await asyncio.sleep(0.05)
        log.append("-alone")
        isolation.leave_exclusive()

    first = asyncio.create_task(shared("a", 0.05))
    await asyncio.sleep(0)
    alone = asyncio.create_task(exclusive())
    await asyncio.sleep(0)
    later = asyncio.create_task(shared("b", 0.01))  # arrives while the exclusive one waits
    await asyncio.gather(first, alone, later)
    assert log == ["+a", "-a", "+alone", "-alone", "+b", "-b"]


async def test_a_cancelled_exclusive_waiter_lets_the_others_go_on() -> None:
    isolation = Isolation()
    await isolation.enter_shared()
    waiting = asyncio.create_task(isolation.enter_exclusive())
    await asyncio.sleep(0)
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    await asyncio.wait_for(isolation.enter_shared(), 1)  # not blocked by the one that gave up
