"""A queue's group and the topics it reads: subscriptions from bindings, and a new group's start.

A queue's bindings name topics, or patterns of topics when the topic template takes words of
the routing key. A group new to Kafka starts at the end of what it reads (a new queue gets what
is published from now on); one that was declared before keeps every position it has.
"""

from __future__ import annotations

import asyncio
import re
import time

from confluent_kafka import Consumer, KafkaException, TopicPartition

from tidings.errors import TransportError
from tidings.transport import QueueSpec
from tidings.transports.kafka.records import is_queue_topic
from tidings.transports.kafka.transport import KafkaTransport, end_offsets

#: pauses (s) before each look at the starts other new members of a group may have set
SECOND_LOOK = (0.0, 0.5)


async def start_at_the_end(transport: KafkaTransport, queue: QueueSpec) -> None:
    """A new queue gets what is published from now on: its group starts at each partition's end.

    Only a new group: one with no position anywhere (neither in what it reads nor in its own
    retry topics, where this leaves a position as the mark that it was declared). A group that
    has one keeps every position it has, and reads a partition it has none for — a topic made
    later for a routing key word, a partition added — from its beginning, which is after the
    queue was declared: declaring it again, as every start of a consumer does, never skips what
    was published while no member ran.
    """
    retry_topics = set(transport.queue_topics(queue.name)[:-1])
    topics = await subscribed_topics(transport, queue) | retry_topics
    config = transport.consumer_config(queue.name)

    def commit_ends() -> None:
        reader = Consumer(config)
        try:
            partitions = _partitions(reader, topics, retry_topics, transport.connect_timeout)
            if not partitions:
                return
            committed = reader.committed(partitions, timeout=transport.connect_timeout)
            if any(tp.offset >= 0 for tp in committed):
                return  # a group declared before: its positions stand, the rest from the beginning
            ends = end_offsets(config, committed, transport.connect_timeout)
            at_ends = [TopicPartition(t.topic, t.partition, ends[(t.topic, t.partition)]) for t in committed]
            # a second member starting at the same time may have set them meanwhile: its start stands
            if any(tp.offset >= 0 for tp in reader.committed(partitions, timeout=transport.connect_timeout)):
                return
            reader.commit(offsets=at_ends, asynchronous=False)
            for pause in SECOND_LOOK:
                time.sleep(pause)
                keep_the_earliest_start(reader, at_ends, transport.connect_timeout)
        finally:
            reader.close()

    try:
        await asyncio.get_running_loop().run_in_executor(None, commit_ends)
    except KafkaException as exc:
        raise TransportError(f"Kafka at {transport.url}: cannot set up group {queue.name!r}: {exc}") from None


def keep_the_earliest_start(reader: Consumer, ours: list[TopicPartition], timeout: float) -> None:
    """Lower every start of the group that another member set later than ``ours``.

    Two brand-new members can both find no position and commit the ends each read: the later
    commit would start the group after what was published between the two reads, which the
    first member's queue already owns. Kafka has no compare-and-set, so each member looks again
    after its commit (twice: :data:`SECOND_LOOK`) and puts back its own earlier end; the group
    starts at the earliest end any of them read. At worst a message is read twice (a member
    that already committed past it is moved back), never skipped.
    """
    earliest = {(tp.topic, tp.partition): tp.offset for tp in ours}
    later = [
        TopicPartition(tp.topic, tp.partition, earliest[(tp.topic, tp.partition)])
        for tp in reader.committed(ours, timeout=timeout)
        if tp.offset > earliest[(tp.topic, tp.partition)]
    ]
    if later:
        reader.commit(offsets=later, asynchronous=False)


def _partitions(reader: Consumer, topics: set[str], needed: set[str], timeout: float) -> list[TopicPartition]:
    """The partitions of ``topics`` that exist, waiting (up to ``timeout``) for those of ``needed``:
    a topic just created may take a moment to show in the broker's metadata."""
    deadline = time.monotonic() + timeout
    while True:
        metadata = reader.list_topics(timeout=timeout)
        found = {t: list(metadata.topics[t].partitions) for t in topics if t in metadata.topics}
        if all(found.get(t) for t in needed) or time.monotonic() > deadline:
            return [TopicPartition(t, p) for t, numbers in found.items() for p in numbers]
        time.sleep(0.1)


async def subscribed_topics(transport: KafkaTransport, queue: QueueSpec) -> set[str]:
    """The existing topics a queue's bindings read."""
    exact, patterns = subscriptions(transport, queue)
    if not patterns:
        return exact
    existing = await transport.topic_names(refresh=True)
    # (a pattern matches queues' retry and dead-letter topics too: never events to read)
    return exact | {t for t in existing if any(p.match(t) for p in patterns) and not is_queue_topic(t)}


def subscriptions(transport: KafkaTransport, queue: QueueSpec) -> tuple[set[str], list[re.Pattern[str]]]:
    """Topic names and patterns of topic names a queue reads (not its own retry topics)."""
    if not queue.bindings:  # a queue of tidings' own (dead letters): the topic of that name
        return {queue.name}, []
    exact: set[str] = set()
    patterns: dict[str, re.Pattern[str]] = {}  # once each: librdkafka refuses a subscription twice
    for binding in queue.bindings:
        name = transport.template.subscription(binding.exchange, binding.pattern)
        if name.startswith("^"):
            patterns.setdefault(name, re.compile(name))
        else:
            exact.add(name)
    return exact, list(patterns.values())
