"""The embedded SQLite broker passes the shared transport conformance suite."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.transports.conformance import MakeTransport, TransportConformance
from tidings.transports.embedded import EmbeddedTransport


class TestEmbeddedConformance(TransportConformance):
    @pytest.fixture
    async def make_transport(self, tmp_path: Path) -> AsyncIterator[MakeTransport]:
        made: list[EmbeddedTransport] = []

        async def make() -> EmbeddedTransport:
            transport = EmbeddedTransport(path=str(tmp_path / "broker.db"), lease=1.0, poll=0.005)
            await transport.connect()
            made.append(transport)
            return transport

        yield make
        for transport in made:
            await transport.close()

    @pytest.fixture
    def exchange(self) -> str:
        return f"ex-{uuid.uuid4().hex[:8]}"
