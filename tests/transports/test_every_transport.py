"""Every registered transport runs the transport suite (tests/transports/conformance.py).

A new transport plug-in fails this test until its test module subclasses
:class:`TransportConformance` and is named here.
"""

from __future__ import annotations

# modules, not classes: a test class imported here would be collected and run twice
from tests.transports import (
    test_amqp_conformance,
    test_embedded_conformance,
    test_file,
    test_kafka_conformance,
    test_stomp_conformance,
    test_zeromq,
)
from tests.transports.conformance import TransportConformance
from tidings.transport import TRANSPORTS

RUNS_THE_SUITE = {
    "embedded": test_embedded_conformance.TestEmbeddedConformance,
    "amqp": test_amqp_conformance.TestAmqpConformance,
    "kafka": test_kafka_conformance.TestKafkaConformance,
    "stomp": test_stomp_conformance.TestStompConformance,
    "zeromq": test_zeromq.TestZeroMQConformance,
    "file": test_file.TestFileConformance,
}


def test_every_registered_transport_runs_the_transport_suite() -> None:
    missing = set(TRANSPORTS.names()) - set(RUNS_THE_SUITE)
    assert not missing, f"transports without the conformance suite: {', '.join(sorted(missing))}"
    assert all(issubclass(cls, TransportConformance) for cls in RUNS_THE_SUITE.values())
