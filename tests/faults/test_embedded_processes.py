"""Many processes on one embedded bus: exactly once without crashes, nothing lost with SIGKILLs."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.ledger import check, read_ids, scaled
from tidings import App, Bus

ROOT = Path(__file__).resolve().parents[2]


def write_config(tmp_path: Path, lease: float = 30.0) -> Path:
    config = tmp_path / "tidings.toml"
    config.write_text(
        f'[bus]\nsource = "e2e"\nhome = "home"\n\n'
        f'[transports.local]\nkind = "embedded"\npath = "broker.db"\nlease = {lease}\npoll = 0.005\n\n'
        f'[connectors.local]\ntransport = "local"\nretry_schedule = [0.2]\n'
    )
    return config


def spawn(*args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def dispatcher(config: Path) -> subprocess.Popen[bytes]:
    return spawn("-m", "tidings", "--config", str(config), "dispatch", "--log-level", "WARNING")


def consumer(config: Path, app: str, ledger: Path) -> subprocess.Popen[bytes]:
    return spawn("-m", "tests.faults.procs", "consume", str(config), app, str(ledger))


def publishers(config: Path, ledger_dir: Path, count: int, each: int) -> list[subprocess.Popen[bytes]]:
    return [
        spawn("-m", "tests.faults.procs", "publish", str(config), f"p{i}", str(each), str(ledger_dir))
        for i in range(count)
    ]


def declare(config: Path, *apps: str) -> None:
    """Queues exist before the first publish, as an operator's `tidings consume` would make them."""
    import asyncio

    bus = Bus.load(config)
    for name in apps:
        app = App(name)
        app.subscribe("load.#")(lambda event: None)
        asyncio.run(app.declare(bus))


def wait_until(done: object, timeout: float, procs: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + timeout
    while not done():  # type: ignore[operator]
        for proc in procs:
            if proc.poll() not in (None, 0):
                raise AssertionError(f"a child died: {proc.args}: {proc.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for deliveries")
        time.sleep(0.2)


def stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.mark.slow
def test_four_publishers_three_consumers_exactly_once(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    ledgers = tmp_path / "ledger"
    ledgers.mkdir()
    declare(config, "alpha", "beta")
    procs = [
        dispatcher(config),
        consumer(config, "alpha", ledgers / "alpha-1"),
        consumer(config, "alpha", ledgers / "alpha-2"),
        consumer(config, "beta", ledgers / "beta-1"),
    ]
    pubs = publishers(config, ledgers, 4, 2500)
    try:
        for pub in pubs:
            assert pub.wait(300) == 0, pub.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
        returned = read_ids(sorted(ledgers.glob("returned-*")))
        assert len(returned) == 10_000

        def alpha() -> list[str]:
            return read_ids([ledgers / "alpha-1", ledgers / "alpha-2"])

        def beta() -> list[str]:
            return read_ids([ledgers / "beta-1"])

        wait_until(lambda: len(alpha()) >= 10_000 and len(beta()) >= 10_000, 180, procs)
        time.sleep(0.5)  # anything extra (a duplicate) would show up now
    finally:
        stop_all(procs)
    for name, got in (("alpha", alpha()), ("beta", beta())):
        verdict = check(returned, returned, got)
        print(verdict.line(f"4 publishers, {name}"))
        assert verdict.ok
        assert verdict.duplicated == 0, f"{name} got duplicates without any crash"
        assert Counter(got) == Counter(returned)
    # both alpha processes did share the work
    assert read_ids([ledgers / "alpha-1"]) and read_ids([ledgers / "alpha-2"])


@pytest.mark.slow
def test_sigkill_dispatcher_and_consumers_loses_nothing(tmp_path: Path) -> None:
    rng = random.Random(int(os.environ.get("TIDINGS_FAULT_SEED", "7")))
    config = write_config(tmp_path, lease=1.5)
    ledgers = tmp_path / "ledger"
    ledgers.mkdir()
    declare(config, "svc")
    roles = {
        "dispatcher": lambda: dispatcher(config),
        "consumer-1": lambda: consumer(config, "svc", ledgers / "svc-1"),
        "consumer-2": lambda: consumer(config, "svc", ledgers / "svc-2"),
    }
    running = {name: start() for name, start in roles.items()}
    pubs = publishers(config, ledgers, 2, 3000)
    kills = 0
    try:
        while kills < scaled(12, 120) or any(p.poll() is None for p in pubs):
            time.sleep(rng.uniform(0.2, 0.8))
            victim = rng.choice(sorted(running))
            running[victim].send_signal(signal.SIGKILL)
            running[victim].wait()
            kills += 1
            running[victim] = roles[victim]()
        for pub in pubs:
            assert pub.wait(120) == 0
        returned = read_ids(sorted(ledgers.glob("returned-*")))
        attempted = read_ids(sorted(ledgers.glob("attempted-*")))

        def delivered() -> list[str]:
            return read_ids(sorted(ledgers.glob("svc-*")))

        wait_until(lambda: set(returned) <= set(delivered()), 120, list(running.values()))
    finally:
        stop_all(list(running.values()))
    verdict = check(attempted, returned, delivered())
    print(verdict.line(f"SIGKILL x{kills}"))
    assert kills >= 10
    assert verdict.ok, verdict.line("sigkill")
