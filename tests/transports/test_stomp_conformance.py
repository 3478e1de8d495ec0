"""The STOMP transport passes the shared conformance suite against RabbitMQ's STOMP plugin."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from tests.conftest import delete_amqp_topology
from tests.transports.conformance import MakeTransport, TransportConformance
from tidings.transports.stomp import StompTransport

pytestmark = [pytest.mark.stomp, pytest.mark.rabbitmq]


class TestStompConformance(TransportConformance):
    # RabbitMQ's STOMP adapter publishes without "mandatory": an unroutable message is confirmed
    knows_unroutable = False
    # a SEND has one destination: no CC keys
    routes_cc = False

    @pytest.fixture
    async def make_transport(self, stomp: str, rabbitmq: str) -> AsyncIterator[MakeTransport]:
        made: list[StompTransport] = []

        async def make() -> StompTransport:
            transport = StompTransport(url=stomp, retry_delays=[1, 5], heartbeat=2.0)
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
        return f"stomp.{uuid.uuid4().hex[:8]}"
