"""The AMQP transport passes the shared conformance suite against the real RabbitMQ."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from tests.conftest import delete_amqp_topology
from tests.transports.conformance import MakeTransport, TransportConformance
from tidings.transports.amqp import AmqpTransport

pytestmark = pytest.mark.rabbitmq


class TestAmqpConformance(TransportConformance):
    # AMQP 0-9-1 cannot tell a requeue from a crash: a released message counts as an attempt

    @pytest.fixture
    async def make_transport(self, rabbitmq: str) -> AsyncIterator[MakeTransport]:
        made: list[AmqpTransport] = []

        async def make() -> AmqpTransport:
            transport = AmqpTransport(url=rabbitmq, retry_delays=[1, 5])
            await transport.connect()
            made.append(transport)
            return transport

        yield make
        queues = {q.name for t in made for q in t.declared.queues}
        exchanges = {e.name for t in made for e in t.declared.exchanges}
        for transport in made:
            await transport.close()
        await delete_amqp_topology(rabbitmq, sorted(queues), sorted(exchanges))

    @pytest.fixture
    def exchange(self) -> str:
        return f"conf.{uuid.uuid4().hex[:8]}"
