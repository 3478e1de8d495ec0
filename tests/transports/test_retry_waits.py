"""How long a retry really waits on brokers with fixed retry queues (what the consumer logs)."""

from __future__ import annotations

from tidings.transports.amqp import AmqpTransport
from tidings.transports.kafka import KafkaTransport
from tidings.transports.stomp import StompTransport


def test_a_retry_waits_for_the_nearest_retry_queue_at_least_as_long() -> None:
    for transport in (
        AmqpTransport("amqp://guest:guest@broker:5672/", retry_delays=[1, 5, 25]),
        StompTransport(url="stomp://guest:guest@broker:61613/", retry_delays=[1, 5, 25]),
    ):
        # past the longest, the longest: the message comes back sooner than asked
        assert [transport.retry_wait(d) for d in (0, 1, 2, 25, 30)] == [1, 1, 5, 25, 25]


def test_on_kafka_a_wait_past_the_longest_retry_topic_is_waited_in_full() -> None:
    transport = KafkaTransport(url="kafka://broker:9092", retry_delays=[1, 5, 25])
    assert [transport.retry_wait(d) for d in (0, 2, 25, 30, 3600)] == [1, 5, 25, 30, 3600]
