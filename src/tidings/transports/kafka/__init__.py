"""Transport ``kafka``: Apache Kafka (and Kafka-protocol brokers), on confluent-kafka (librdkafka).

The package's parts: :mod:`.transport` (connecting, topics, the idempotent producer),
:mod:`.consume` (consumer groups, commits of the finished prefix, retry and dead-letter
topics), :mod:`.groups` (what a queue's group reads, and where a new one starts),
:mod:`.offsets` (which offset may be committed), :mod:`.records` (messages as records: topics,
keys, headers), :mod:`.doctor` (what ``tidings doctor`` checks). This module describes the
plug-in and its options and imports none of the Kafka library.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from tidings.plugins import Plugin, Settings, Timeout
from tidings.transports.kafka.records import Servers, TopicTemplate, key_problem

DEFAULT_URL = "kafka://127.0.0.1:9092"
#: what a retry's or a dead letter's copy may add to a record sent within the limit: the last
#: error and the reason (1,000 characters each, up to 4 bytes a character) and the counts
FORWARD_ROOM = 16_384
#: librdkafka's largest message.max.bytes and session.timeout.ms
LIBRDKAFKA_MAX_BYTES, LIBRDKAFKA_MAX_SESSION = 1_000_000_000, 3600
#: librdkafka's default max.poll.interval.ms: a consumer that polls no more for this long leaves its group
LIBRDKAFKA_POLL_INTERVAL = 300_000
Count = Annotated[int, Meta(ge=1)]


#: librdkafka settings tidings makes itself, and from what (one in ``librdkafka`` would be ignored,
#: or would undo what the transport promises)
SET_BY_TIDINGS = {
    "bootstrap.servers": "set url instead",
    "metadata.broker.list": "set url instead",  # librdkafka's own name for bootstrap.servers
    "enable.idempotence": "always true (no duplicates, no reordering on retries)",
    "acks": "always all (a delivery report means the in-sync replicas have it)",
    "enable.auto.commit": "always false (positions are committed after the handlers)",
    "group.id": "the consumer's queue name",
    "message.max.bytes": "set max_message_bytes instead",
    "message.timeout.ms": "set delivery_timeout instead",
    "linger.ms": "set linger instead",
    "session.timeout.ms": "set session_timeout instead",
}


def poll_interval_ms(librdkafka: Mapping[str, Any]) -> float | None:
    """The ``max.poll.interval.ms`` in force (librdkafka's default unless set), or None when the
    setting is not a number (librdkafka refuses it, naming it)."""
    try:
        return float(librdkafka.get("max.poll.interval.ms", LIBRDKAFKA_POLL_INTERVAL))
    except ValueError:
        return None


class KafkaSettings(Settings):
    #: ``kafka://host:port[,host:port...]``; ``kafkas://`` for TLS; ``user:password@`` for SASL
    url: str = DEFAULT_URL
    #: the topic a message goes to: ``{exchange}`` (one topic per connector) or words of the
    #: routing key, ``bugzilla.{0}``
    topic: str = "{exchange}"
    #: the record key, which keeps one object's messages in order: ``subject`` (the routing key),
    #: ``id``, ``none``, ``header:NAME`` or ``body:PATH`` (``body:event.bug_id``)
    key: str = "subject"
    #: partitions and replicas of the topics tidings creates (production: replication_factor >= 3)
    partitions: Annotated[int, Meta(ge=1, le=100_000)] = 4
    replication_factor: Count = 1
    #: whole seconds of the retry topics (``<queue>.retry.<n>s``) consumers retry through
    retry_delays: Annotated[list[Count], Meta(min_length=1)] = msgspec.field(
        default_factory=lambda: [1, 5, 25, 125, 625]
    )
    #: the largest record (Kafka's own default ``message.max.bytes``); larger ones are dead letters
    max_message_bytes: Annotated[int, Meta(ge=1000, le=LIBRDKAFKA_MAX_BYTES - FORWARD_ROOM)] = 1_000_000
    #: how long the producer keeps trying one record before it counts as not delivered
    delivery_timeout: Timeout = 30.0
    #: how long the producer waits to fill a batch
    linger: Annotated[float, Meta(ge=0, le=900)] = 0.005  # librdkafka's linger.ms goes to 900 s
    #: how soon a dead consumer's partitions go to another member of its group
    session_timeout: Annotated[float, Meta(ge=1, le=LIBRDKAFKA_MAX_SESSION)] = 10.0
    connect_timeout: Timeout = 10.0
    #: SASL mechanism, when the URL has a user
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    #: TLS (kafkas://): the CA, a client certificate and key
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    key_password: str | None = None
    #: any further librdkafka setting, as librdkafka names it (secrets belong in the fields above)
    librdkafka: dict[str, str | int | float | bool] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        Servers.parse(self.url)  # a ValueError names what is wrong
        own = sorted(set(self.librdkafka) & set(SET_BY_TIDINGS))
        if own:
            raise ValueError(f"librdkafka: {own[0]!r} is tidings' own: {SET_BY_TIDINGS[own[0]]}")
        poll_interval = poll_interval_ms(self.librdkafka)
        if poll_interval is not None and poll_interval < self.session_timeout * 1000:
            raise ValueError(  # librdkafka refuses the consumer otherwise
                f"librdkafka: 'max.poll.interval.ms' ({poll_interval:g}) must be at least "
                f"session_timeout ({self.session_timeout * 1000:g} ms)"
            )
        if self.linger >= self.delivery_timeout:  # librdkafka refuses the producer otherwise
            raise ValueError(f"linger ({self.linger:g} s) must be shorter than delivery_timeout")
        for problem in (TopicTemplate(self.topic).problem(), key_problem(self.key)):
            if problem:
                raise ValueError(problem)


PLUGIN = Plugin(
    "kafka",
    "tidings.transports.kafka.transport:KafkaTransport",
    KafkaSettings,
    "kafka",
    ("confluent_kafka",),
)


def __getattr__(name: str) -> Any:
    if name == "KafkaTransport":
        from tidings.transports.kafka.transport import KafkaTransport

        return KafkaTransport
    raise AttributeError(name)
