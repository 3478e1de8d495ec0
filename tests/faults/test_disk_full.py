"""The outbox on a small filesystem that fills up: a clear error, no corruption, nothing lost.

The filesystem is a 3 MB tmpfs the test mounts (root only; in CI a failure to mount fails the
test rather than skipping it). A filler file takes part of it so that space can be freed later.
"""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.clirun import tidings
from tests.conftest import IN_CI
from tests.ledger import check
from tidings import App, Bus, Event
from tidings.config import load_config
from tidings.errors import OutboxError

pytestmark = pytest.mark.slow


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if done.returncode != 0:
        reason = f"cannot mount a small tmpfs for the disk-full test: {done.stderr.strip()}"
        if IN_CI:
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, check=False)


def config_on(disk: Path, root: Path) -> Path:
    config = root / "tidings.toml"
    config.write_text(
        f'[bus]\nhome = "{disk}"\n\n'
        f'[transports.local]\nkind = "embedded"\npath = "{root / "broker.db"}"\n\n'
        '[connectors.local]\ntransport = "local"\n'
    )
    return config


def test_full_disk_refuses_clearly_and_loses_nothing(small_disk: Path, tmp_path: Path) -> None:
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * 700_000)
    config = config_on(small_disk, tmp_path)
    bus = Bus(load_config(config))
    attempted: list[str] = []
    returned: list[str] = []
    with pytest.raises(OutboxError) as full:
        publish_until_full(bus, attempted, returned)
    message = str(full.value)
    assert "\n" not in message and "full" in message and "nothing of this call was stored" in message
    assert len(returned) > 50

    # the CLI says the same in one line, with exit code 5
    cli = tidings(
        tmp_path, "--config", str(config), "publish", "disk.cli", "--body", '{"pad": "' + "y" * 9000 + '"}'
    )
    assert cli.returncode == 5, cli.stderr
    assert len(cli.stderr.strip().splitlines()) == 1 and "Traceback" not in cli.stderr

    outbox_file = bus.config.outbox_path()
    with sqlite3.connect(f"file:{outbox_file}?mode=ro", uri=True) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

    filler.unlink()  # space again: publishing works, and everything stored is delivered
    for n in range(20):
        event = bus.event("disk.after", {"n": n})
        attempted.append(event.id)
        bus.publish(event)
        returned.append(event.id)
    delivered = asyncio.run(deliver_everything(bus, len(returned)))
    bus.close()
    verdict = check(attempted, returned, delivered)
    print(verdict.line("disk full, then freed"))
    assert verdict.ok


def publish_until_full(bus: Bus, attempted: list[str], returned: list[str]) -> None:
    for n in range(10_000):
        event = bus.event("disk.fill", {"pad": "x" * 8_000, "n": n})
        attempted.append(event.id)
        bus.publish(event)
        returned.append(event.id)


async def deliver_everything(bus: Bus, count: int) -> list[str]:
    app = App("disk.consumer", prefetch=500, concurrency=16)
    delivered: list[str] = []
    stop = asyncio.Event()

    @app.subscribe("#")
    async def record(event: Event) -> None:
        delivered.append(event.id)
        if len(set(delivered)) >= count:
            stop.set()

    await app.declare(bus)
    dispatching = asyncio.create_task(bus.dispatcher().run(stop))
    consuming = asyncio.create_task(app.run(bus, stop))
    await asyncio.wait_for(stop.wait(), 60)
    await asyncio.gather(dispatching, consuming)
    return delivered


def test_a_broker_whose_disk_fills_says_so_and_delivers_after_space_is_freed(
    small_disk: Path, tmp_path: Path
) -> None:
    """The embedded broker on the full disk (the outbox elsewhere): the connector reports the full
    disk itself — not a failed ROLLBACK that SQLite had already done — and catches up afterwards."""
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * 2_000_000)  # when it goes, there is room for the log and the database both
    config = tmp_path / "tidings.toml"
    config.write_text(
        '[bus]\nhome = "home"\n\n'
        f'[transports.local]\nkind = "embedded"\npath = "{small_disk / "broker.db"}"\n\n'
        '[connectors.local]\ntransport = "local"\nretry_schedule = [0.2]\nmax_attempts = 1000\n'
    )
    bus = Bus(load_config(config))
    published = asyncio.run(fill_the_broker(bus))
    errors = bus.last_connector_errors
    assert errors, "the broker's disk never filled"
    assert all("cannot rollback" not in error for error in errors), errors
    assert any("disk is full" in error and "free disk space" in error for error in errors), errors
    filler.unlink()
    delivered = asyncio.run(deliver_everything(bus, len(published)))
    bus.close()
    verdict = check(published, published, delivered)
    print(verdict.line("embedded broker's disk full, then freed"))
    assert verdict.ok


async def fill_the_broker(bus: Bus) -> list[str]:
    app = App("disk.consumer")
    app.subscribe("#")(lambda event: None)
    await app.declare(bus)
    dispatcher = bus.dispatcher()
    stop = asyncio.Event()
    running = asyncio.create_task(dispatcher.run(stop))
    published: list[str] = []
    errors: list[str] = []
    stats = dispatcher.connectors[0].stats
    for n in range(160):  # 8 KB each: more than the 1 MB left on the disk
        published.append((await bus.apublish("disk.fill", {"pad": "x" * 8_000, "n": n})).id)
        if stats.last_error and stats.last_error not in errors:
            errors.append(stats.last_error)
        await asyncio.sleep(0.002)
    for _ in range(100):  # what is still being sent meets the full disk too
        if stats.last_error and stats.last_error not in errors:
            errors.append(stats.last_error)
        await asyncio.sleep(0.05)
    stop.set()
    await running
    bus.last_connector_errors = errors  # type: ignore[attr-defined]
    return published
