"""What ``tidings doctor`` checks on Kafka beyond connecting: the topics a configuration needs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tidings.errors import TransportError
from tidings.transport import Findings, Topology
from tidings.transports.kafka.records import names

if TYPE_CHECKING:
    from tidings.transports.kafka.transport import KafkaTransport


async def verify(transport: KafkaTransport, topology: Topology) -> Findings:
    """Missing topics (the exchanges', and each queue's retry and dead-letter topics)."""
    found = Findings()
    try:
        existing = await transport.topic_names(refresh=True)
    except TransportError as exc:
        found.problems.append(str(exc))
        return found
    needed: set[str] = set()
    if transport.template.uses_words:
        found.notes.append(
            f"topics are named by routing key words ({transport.template.template}): "
            "they are created with their first message"
        )
    else:
        needed |= {transport.template.topic(e.name, "") for e in topology.exchanges}
    for queue in topology.queues:
        needed |= set(transport.queue_topics(queue.name))
    missing = needed - existing
    if missing:
        found.problems.append(
            f"Kafka at {transport.url} has no topic {names(missing)} "
            "(tidings dispatch and consume create them; a passive exchange's topic must exist)"
        )
    return found
