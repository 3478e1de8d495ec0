"""Stopping: the first SIGTERM or Ctrl-C lets what runs finish; a second one stops at once."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.core.test_relay_reactor import ended, running
from tidings import App, Bus
from tidings.config import load_config
from tidings.stopping import run_until_signalled

ROOT = Path(__file__).resolve().parents[2]


def wait_for(check: object, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def serve(root: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tidings", "serve"],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_second_ctrl_c_kills_a_long_reactor_command_and_its_event_comes_back(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    # max_attempts = 1: had the interrupted run counted as a death, the event would be dead-lettered
    # on its way back instead of running again
    (tmp_path / "tidings.toml").write_text(
        '[bus]\nhome = "home"\n\n[reactor.rules.slow]\nbindings = ["job.#"]\n'
        f'command = ["sh", "-c", "echo $$ >> {pids}; exec sleep 60"]\ntimeout = 120\nmax_attempts = 1\n'
    )
    bus = Bus(load_config(tmp_path / "tidings.toml"))
    bus.publish("job.done", {"n": 1})
    bus.close()

    first = serve(tmp_path)
    try:
        wait_for(lambda: pids.exists() and pids.read_text().count("\n") == 1)
        command = int(pids.read_text().split()[0])
        first.send_signal(signal.SIGINT)
        time.sleep(1.5)
        assert first.poll() is None and running(command), "the first Ctrl-C must let the command run on"
        first.send_signal(signal.SIGINT)
        _, err = first.communicate(timeout=20)
    finally:
        first.kill()
    assert first.returncode == 130, err
    assert "Ctrl-C again stops at once" in err and "stopping at once" in err
    assert "Traceback" not in err
    assert ended(command)

    second = serve(tmp_path)  # the event was not settled: it comes back and the command runs again
    try:
        wait_for(lambda: pids.read_text().count("\n") == 2)
        second.send_signal(signal.SIGTERM)
        time.sleep(0.5)  # two of one signal sent together may arrive as one
        second.send_signal(signal.SIGTERM)
        _, err = second.communicate(timeout=20)
    finally:
        second.kill()
    assert second.returncode == 0, err
    assert ended(int(pids.read_text().split()[1]))


def test_a_second_ctrl_c_stops_a_consumer_whose_sync_handler_runs_on(tmp_path: Path) -> None:
    """A plain (not async) handler runs in a thread nothing can interrupt: the second signal
    ends the process anyway, and the message comes back to the next run."""
    started = tmp_path / "started"
    (tmp_path / "slow.py").write_text(
        "import time\n"
        "def handle(event):\n"
        f"    open({str(started)!r}, 'a').write(event.id + '\\n')\n"
        "    time.sleep(600)\n"
    )
    (tmp_path / "tidings.toml").write_text('[bus]\nhome = "home"\n')
    command = [sys.executable, "-m", "tidings", "consume", "--callback", "slow:handle", "--bind", "a.#"]
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{tmp_path}"}
    consumer = subprocess.Popen(
        [*command, "--queue", "slowq"], cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True
    )
    bus = Bus(load_config(tmp_path / "tidings.toml"))
    queue = App("slowq", queue="slowq")  # the queue the consumer binds, there before the event is sent
    queue.add_handler(["a.#"], lambda event: None)
    asyncio.run(queue.declare(bus))
    try:
        event = bus.publish("a.b", {})
        subprocess.run(
            [sys.executable, "-m", "tidings", "dispatch", "--once"], cwd=tmp_path, env=env, check=True
        )
        wait_for(lambda: started.exists())
        consumer.send_signal(signal.SIGINT)
        time.sleep(0.5)
        assert consumer.poll() is None  # the first waits for the handler
        consumer.send_signal(signal.SIGINT)
        stopped_at = time.monotonic()
        _, err = consumer.communicate(timeout=20)
        assert time.monotonic() - stopped_at < 10
    finally:
        consumer.kill()
        bus.close()
    assert consumer.returncode == 130, err
    assert started.read_text().split() == [event.id]


async def _until(seen: list[str], stop: asyncio.Event) -> None:
    await stop.wait()
    seen.append("stopped cleanly")


async def test_one_signal_is_a_clean_stop_and_returns_what_was_received() -> None:
    seen: list[str] = []
    loop = asyncio.get_running_loop()
    loop.call_later(0.1, os.kill, os.getpid(), signal.SIGTERM)
    assert await run_until_signalled(_until, seen) == [signal.SIGTERM]
    assert seen == ["stopped cleanly"]


async def test_a_run_that_ends_by_itself_raises_what_it_raised_and_unhooks_the_signals() -> None:
    async def fails(stop: asyncio.Event) -> None:
        raise RuntimeError("broken")

    with pytest.raises(RuntimeError, match="broken"):
        await run_until_signalled(fails)
    # the handlers are gone: Python's own default for SIGINT is back
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


async def test_being_cancelled_cancels_what_runs() -> None:
    cancelled = asyncio.Event()

    async def forever(stop: asyncio.Event) -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    outer = asyncio.create_task(run_until_signalled(forever))
    await asyncio.sleep(0.05)
    outer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await outer
    assert cancelled.is_set()


@pytest.mark.parametrize("after", [0.15, 0.3, 0.45])
def test_ctrl_c_while_the_command_line_is_still_loading_is_one_line(tmp_path: Path, after: float) -> None:
    """Half a second of imports comes before the command runs: Ctrl-C then is no traceback either."""
    command = subprocess.Popen(
        [sys.executable, "-m", "tidings", "demo", "--duration", "5"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as a terminal's would be
    )
    time.sleep(after)
    command.send_signal(signal.SIGINT)
    _, errors = command.communicate(timeout=30)
    assert "Traceback" not in errors, errors
    # before Python's own handler is in place the signal ends it as it would any program
    assert command.returncode in (130, -signal.SIGINT), (command.returncode, errors)
    assert "KeyboardInterrupt" not in errors
