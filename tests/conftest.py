"""Shared fixtures: a Bus on a temporary embedded default, and service checks."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from tidings.bus import Bus
from tidings.config import Config, default_config

IN_CI = os.environ.get("CI", "").lower() == "true"


def service_up(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def require_service(host: str, port: int, name: str) -> None:
    """Fail in CI when a needed service is missing (never skip silently there); skip elsewhere."""
    if service_up(host, port):
        return
    message = f"{name} is not reachable on {host}:{port}"
    if IN_CI:
        pytest.fail(f"{message} (CI=true: a test that needs a service must not skip)")
    pytest.skip(message)


@pytest.fixture
def rabbitmq() -> str:
    require_service("127.0.0.1", 5672, "RabbitMQ")
    return "amqp://guest:guest@127.0.0.1:5672/"


@pytest.fixture
def kafka() -> str:
    """A Kafka-protocol broker (Tansu, started by scripts/services)."""
    require_service("127.0.0.1", 9092, "Kafka (Tansu)")
    return "kafka://127.0.0.1:9092"


@pytest.fixture
def stomp() -> str:
    """RabbitMQ's STOMP plugin (enabled by scripts/services)."""
    require_service("127.0.0.1", 61613, "RabbitMQ's STOMP plugin")
    return "stomp://guest:guest@127.0.0.1:61613/"


def embedded_config(home: Path, **bus: object) -> Config:
    config = default_config(home.parent)
    return msgspec.structs.replace(config, bus=msgspec.structs.replace(config.bus, home=home.name, **bus))


@pytest.fixture
def bus(tmp_path: Path) -> Iterator[Bus]:
    b = Bus(embedded_config(tmp_path / "home", source="test"))
    yield b
    b.close()


async def delete_amqp_topology(url: str, queues: list[str], exchanges: list[str]) -> None:
    """Remove what a test declared on the shared RabbitMQ (queues with their retry and dead queues)."""
    import aiormq

    connection = await aiormq.connect(url)
    try:
        channel = await connection.channel()
        for name in queues:
            for suffix in ("", ".dead", *(f".retry.{d}s" for d in (1, 5, 25, 125, 625))):
                await channel.queue_delete(name + suffix)
        for name in exchanges:
            await channel.exchange_delete(name)
    finally:
        await connection.close()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Every fault scenario's ledger (events, lost, duplicated), shown even without ``-s``."""
    from tests.ledger import LINES

    if LINES:
        terminalreporter.section("ledgers")
        for line in LINES:
            terminalreporter.write_line(line)
