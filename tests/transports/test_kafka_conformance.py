"""The Kafka transport passes the shared conformance suite against a real Kafka-protocol broker."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from tests.transports.conformance import MakeTransport, TransportConformance
from tidings.transports.kafka import KafkaTransport

pytestmark = pytest.mark.kafka


class TestKafkaConformance(TransportConformance):
    # a topic keeps every message for whoever reads it later: nothing is "unroutable"
    knows_unroutable = False
    # Kafka cannot tell a first delivery from a second: "maybe" for what came before the consumer
    exact_redelivery = False

    @pytest.fixture
    async def make_transport(self, kafka: str) -> AsyncIterator[MakeTransport]:
        made: list[KafkaTransport] = []

        async def make() -> KafkaTransport:
            # one partition: the suite checks order across different keys, which Kafka keeps per
            # partition; a short session so that a member that is gone is noticed within a second
            transport = KafkaTransport(url=kafka, partitions=1, retry_delays=[1, 5], session_timeout=2.0)
            await transport.connect()
            made.append(transport)
            return transport

        yield make
        for transport in made:
            await transport.close()

    @pytest.fixture
    def exchange(self) -> str:
        return f"conf.{uuid.uuid4().hex[:8]}"
