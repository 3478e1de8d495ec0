"""The consumer-runtime suite (tests/transports/runtime_conformance.py) on each transport that acks."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import delete_amqp_topology
from tests.transports.runtime_conformance import RuntimeConformance
from tidings import Bus
from tidings.transport import TRANSPORTS, transport_plugin


class TestEmbeddedRuntime(RuntimeConformance):
    @pytest.fixture
    def runtime_config(self, tmp_path: Path) -> Path:
        config = tmp_path / "tidings.toml"
        config.write_text(
            '[bus]\nhome = "home"\n[transports.t]\nkind = "embedded"\npath = "broker.db"\nlease = 1.0\n'
            f'[connectors.t]\ntransport = "t"\nexchange = "rt.{uuid.uuid4().hex[:8]}"\n'
        )
        return config


@pytest.mark.rabbitmq
class TestAmqpRuntime(RuntimeConformance):
    @pytest.fixture
    def runtime_config(self, tmp_path: Path, rabbitmq: str) -> Path:
        config = tmp_path / "tidings.toml"
        config.write_text(
            f'[bus]\nhome = "home"\n[transports.t]\nkind = "amqp"\nurl = "{rabbitmq}"\nheartbeat = 5\n'
            "retry_delays = [1, 5]\n"
            f'[connectors.t]\ntransport = "t"\nexchange = "rt.{uuid.uuid4().hex[:8]}"\n'
        )
        return config

    @pytest.fixture
    def queue(self, bus: Bus, rabbitmq: str) -> Iterator[str]:
        name = f"{self.exchange(bus)}.svc-{uuid.uuid4().hex[:6]}"
        yield name
        asyncio.run(delete_amqp_topology(rabbitmq, [name], [self.exchange(bus)]))


@pytest.mark.stomp
class TestStompRuntime(RuntimeConformance):
    @pytest.fixture
    def runtime_config(self, tmp_path: Path, stomp: str) -> Path:
        config = tmp_path / "tidings.toml"
        config.write_text(
            f'[bus]\nhome = "home"\n[transports.t]\nkind = "stomp"\nurl = "{stomp}"\nheartbeat = 2\n'
            "retry_delays = [1, 5]\n"
            f'[connectors.t]\ntransport = "t"\nexchange = "rt.{uuid.uuid4().hex[:8]}"\n'
        )
        return config

    @pytest.fixture
    def queue(self, bus: Bus, rabbitmq: str) -> Iterator[str]:
        name = f"{self.exchange(bus)}.svc-{uuid.uuid4().hex[:6]}"
        yield name
        asyncio.run(delete_amqp_topology(rabbitmq, [name], [self.exchange(bus)]))


@pytest.mark.kafka
class TestKafkaRuntime(RuntimeConformance):
    probe_seconds = 4.0  # a consumer joins its group in about a second on Tansu

    @pytest.fixture
    def runtime_config(self, tmp_path: Path, kafka: str) -> Path:
        config = tmp_path / "tidings.toml"
        config.write_text(
            f'[bus]\nhome = "home"\n[transports.t]\nkind = "kafka"\nurl = "{kafka}"\n'
            "partitions = 1\nsession_timeout = 2.0\nretry_delays = [1, 5]\n"
            f'[connectors.t]\ntransport = "t"\nexchange = "rt.{uuid.uuid4().hex[:8]}"\n'
        )
        return config


#: every transport, and why it does or does not run the suite: a new transport must say which
RUNS_THE_SUITE = {
    "embedded": TestEmbeddedRuntime,
    "amqp": TestAmqpRuntime,
    "kafka": TestKafkaRuntime,
    "stomp": TestStompRuntime,
}
DOES_NOT = {
    "zeromq": "no acknowledgements: a message is gone once published",
    "file": "write-only: nothing consumes from it",
}


def test_every_transport_that_acknowledges_runs_the_runtime_suite() -> None:
    for kind in TRANSPORTS.names():
        if kind in RUNS_THE_SUITE:
            continue
        assert kind in DOES_NOT, f"transport {kind!r}: subclass RuntimeConformance for it, or say why not"
        cls = transport_plugin(kind).load("transport")
        assert not cls.acknowledged or kind == "file", f"transport {kind!r} acknowledges: run the suite"
