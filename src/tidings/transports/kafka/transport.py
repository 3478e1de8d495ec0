"""The Kafka transport: topics, the idempotent producer, and what consuming needs of them.

Sending: an idempotent producer (``enable.idempotence``, ``acks=all``): librdkafka retries
on its own without duplicating or reordering, and a record counts as delivered when its
delivery report says the in-sync replicas have it. A whole batch is handed to librdkafka at
once and its reports awaited together — many in flight, never a flush per message. A record
that can never go (too large, a topic name Kafka refuses) is ``REFUSED`` on its own; one that
did not go in time is ``RETRY``; when the broker cannot be reached at all the batch fails as
a whole (``TransportError``) and nothing of it counts as delivered.

Kafka has no "unroutable": a record is kept in its topic whether or not a group reads it yet,
so a send is DELIVERED once the broker has it. A queue is a consumer group; declaring it
creates its retry and dead-letter topics and makes it start at the topics' current end, as a
queue bound now gets what is published from now on (see :mod:`.consume`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TYPE_CHECKING, Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from tidings.errors import ConfigError, InvalidEvent, TransportError
from tidings.redact import mask_url
from tidings.transport import (
    DELIVERED,
    Delivery,
    Findings,
    Outcome,
    QueueSpec,
    SendResult,
    Topology,
    WireMessage,
)
from tidings.transports.kafka import DEFAULT_URL, FORWARD_ROOM, poll_interval_ms
from tidings.transports.kafka.records import (
    Record,
    Servers,
    TopicTemplate,
    is_queue_topic,
    key_of,
    names,
    to_record,
    topic_problem,
)

if TYPE_CHECKING:
    from tidings.transports.kafka.dead import KafkaDeadLetters

log = logging.getLogger(__name__)
#: librdkafka's own log lines, through Python logging (never printed to stderr by the library)
library_log = logging.getLogger("confluent_kafka")

#: report errors that mean "this record can never go"
_NEVER = {
    KafkaError.MSG_SIZE_TOO_LARGE,
    KafkaError.INVALID_MSG_SIZE,
    KafkaError.RECORD_LIST_TOO_LARGE,
    KafkaError.TOPIC_AUTHORIZATION_FAILED,
    KafkaError.TOPIC_EXCEPTION,
    KafkaError._INVALID_ARG,
}
#: report errors that mean the broker was not reached
_UNREACHED = {KafkaError._MSG_TIMED_OUT, KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN}
#: librdkafka's queue was full: try the same record again once reports have drained it
_QUEUE_FULL = SendResult(Outcome.RETRY, "librdkafka's queue is full")


class KafkaTransport:
    """Transport ``kafka``; its options are :class:`~tidings.transports.kafka.KafkaSettings`."""

    kind = "kafka"
    acknowledged = True
    #: Kafka cannot tell a message handed out before from one that was not: ``redelivered`` is a
    #: guess that errs on the side of yes, and a dead member's messages come back only after its
    #: session timed out (the consumer runtime's journal may then look less often)
    guesses_redelivery = True

    def __init__(
        self,
        url: str = DEFAULT_URL,
        topic: str = "{exchange}",
        key: str = "subject",
        partitions: int = 4,
        replication_factor: int = 1,
        retry_delays: Sequence[int] = (1, 5, 25, 125, 625),
        max_message_bytes: int = 1_000_000,
        delivery_timeout: float = 30.0,
        linger: float = 0.005,
        session_timeout: float = 10.0,
        connect_timeout: float = 10.0,
        sasl_mechanism: str = "PLAIN",
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        key_password: str | None = None,
        librdkafka: dict[str, Any] | None = None,
    ) -> None:
        try:
            self.servers = Servers.parse(url)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        self.url = mask_url(url)  # what may be shown
        self.template = TopicTemplate(topic)
        self.key = key
        self.partitions, self.replication_factor = partitions, replication_factor
        self.retry_delays = sorted({int(d) for d in retry_delays}) or [1]
        self.max_message_bytes = max_message_bytes
        self._too_large = SendResult(
            Outcome.REFUSED, f"larger than the transport's max_message_bytes ({max_message_bytes})"
        )
        self.delivery_timeout = delivery_timeout
        self.session_timeout = session_timeout
        self.connect_timeout = connect_timeout
        self._client = self.servers.client_config(sasl_mechanism)
        for name, value in (
            ("ssl.ca.location", ca_file),
            ("ssl.certificate.location", cert_file),
            ("ssl.key.location", key_file),
            ("ssl.key.password", key_password),
        ):
            if value is not None:
                self._client[name] = value
        self._client.update(check_librdkafka(librdkafka or {}))
        self._linger = linger
        self._producer: Producer | None = None
        self._producer_broken = False
        self._poller: threading.Thread | None = None
        self._stop_polling = threading.Event()
        self._admin: AdminClient | None = None
        self._slow = ThreadPoolExecutor(1, thread_name_prefix="tidings-kafka-admin")
        self._known_topics: set[str] = set()
        self.declared = Topology()
        #: consumers this transport started, closed with it (see :mod:`.consume`)
        self.consumers: set[Any] = set()

    # -- clients ------------------------------------------------------------------------

    def client_config(self, **more: Any) -> dict[str, Any]:
        """Settings every client of this transport shares, with ``more`` (librdkafka's names)."""
        return {**self._client, "logger": library_log, "error_cb": self._on_error, **more}

    def consumer_config(self, group: str, **more: Any) -> dict[str, Any]:
        """A consumer's settings, in group ``group``: positions are committed by tidings only, and
        its timeouts agree (librdkafka refuses a poll interval shorter than the session timeout,
        whose own default is 45 s)."""
        session = int(self.session_timeout * 1000)
        timeouts: dict[str, Any] = {
            "session.timeout.ms": session,
            "heartbeat.interval.ms": max(100, session // 10),
        }
        poll_interval = poll_interval_ms(self._client)
        if poll_interval is not None:
            timeouts["max.poll.interval.ms"] = int(max(session, poll_interval))
        return self.client_config(**{"group.id": group, "enable.auto.commit": False, **timeouts, **more})

    def _on_error(self, error: KafkaError) -> None:
        if error.fatal():
            self._producer_broken = True
        library_log.debug("librdkafka: %s", error)

    async def connect(self) -> None:
        if self._producer is not None and not self._producer_broken:
            return
        await self._close_producer(timeout=0)
        settings = {
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": self._linger * 1000,
            "message.timeout.ms": int(self.delivery_timeout * 1000),
            # the room a retry's or a dead letter's headers take: what was sent within
            # the limit can always be forwarded (the limit itself is checked in _record)
            "message.max.bytes": self.max_message_bytes + FORWARD_ROOM,
        }
        try:
            producer = Producer(self.client_config(**settings))
        except KafkaException as exc:  # settings that librdkafka takes one by one, not together
            raise ConfigError(f"kafka transport: librdkafka: {exc.args[0].str()}") from None
        await self._reachable(producer)
        self._producer, self._producer_broken = producer, False
        self._stop_polling = threading.Event()
        self._poller = threading.Thread(
            target=_serve_reports,
            args=(producer, self._stop_polling),
            name="tidings-kafka-reports",
            daemon=True,
        )
        self._poller.start()

    async def _reachable(self, client: Producer | AdminClient) -> None:
        """Fail with one line when no broker answers (librdkafka would wait and queue quietly)."""
        loop = asyncio.get_running_loop()
        try:
            metadata = await loop.run_in_executor(
                self._slow, lambda: client.list_topics(timeout=self.connect_timeout)
            )
        except KafkaException as exc:
            raise TransportError(f"no Kafka broker answered at {self.url}: {_reason(exc)}") from None
        self._known_topics = set(metadata.topics)

    def admin(self) -> AdminClient:
        if self._admin is None:
            self._admin = AdminClient(self.client_config())
        return self._admin

    async def close(self) -> None:
        for consumer in list(self.consumers):
            await consumer.stop()
        await self._close_producer(timeout=self.delivery_timeout)
        self._admin = None
        self._slow.shutdown(wait=False)
        self._slow = ThreadPoolExecutor(1, thread_name_prefix="tidings-kafka-admin")

    async def _close_producer(self, timeout: float) -> None:
        producer, self._producer = self._producer, None
        if producer is None:
            return
        self._stop_polling.set()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._slow, producer.flush, timeout)
        if self._poller is not None:
            await loop.run_in_executor(None, self._poller.join, 5)

    # -- topics -------------------------------------------------------------------------

    def retry_topic(self, queue: str, delay: float) -> tuple[str, int]:
        """The retry topic for a wish to wait ``delay`` s: the smallest delay at least that long."""
        chosen = next((d for d in self.retry_delays if d >= delay), self.retry_delays[-1])
        return f"{queue}.retry.{chosen}s", chosen

    def retry_wait(self, delay: float) -> float:
        """How long a retry asked to wait ``delay`` s really waits: its retry topic's delay, or
        ``delay`` itself past the longest (it goes round that topic until then)."""
        return self.retry_topic("", delay)[1] if delay <= self.retry_delays[-1] else delay

    def queue_topics(self, queue: str) -> list[str]:
        """The topics a queue owns: its retry topics and its dead letters."""
        return [f"{queue}.retry.{d}s" for d in self.retry_delays] + [f"{queue}.dead"]

    def exchange_problem(self, exchange: str) -> str | None:
        """Why an ``exchange`` can make no Kafka topic here, or None (``config check``, declare)."""
        if self.template.uses_words:
            return None  # the topic comes from each routing key: checked per message
        try:
            topic = self.template.topic(exchange, "")
        except InvalidEvent as exc:
            return str(exc)
        if is_queue_topic(topic):  # its events would land among a queue's retries or dead letters
            return f"{topic!r} is a topic name kept for queues (….dead, ….dead.handled, ….retry.<n>s)"
        return topic_problem(topic) or None

    async def declare(self, topology: Topology) -> None:
        """Create the exchanges' topics (or check them, when passive) and each queue's own topics,
        and start each new queue's group at the current end of what it reads."""
        named = {e.name for e in topology.exchanges} | {
            b.exchange for q in topology.queues for b in q.bindings
        }
        for name in sorted(named):
            problem = self.exchange_problem(name)
            if problem:
                raise ConfigError(f"exchange {name!r} cannot be used on Kafka: {problem}")
        wanted, checked = set(), set()
        for exchange in topology.exchanges:
            if self.template.uses_words:
                continue  # topics per routing key word: created as messages need them
            topic = self.template.topic(exchange.name, "")
            (checked if exchange.passive else wanted).add(topic)
        for queue in topology.queues:
            for topic in self.queue_topics(queue.name):
                if topic_problem(topic):
                    raise ConfigError(f"queue {queue.name!r} cannot be a Kafka group: {topic_problem(topic)}")
                wanted.add(topic)
        await self.ensure_topics(wanted)
        await self._check_exist(checked)
        for queue in topology.queues:
            if queue.bindings:
                from tidings.transports.kafka.groups import start_at_the_end

                await start_at_the_end(self, queue)
        self.declared = Topology(
            [*self.declared.exchanges, *(e for e in topology.exchanges if e not in self.declared.exchanges)],
            [*self.declared.queues, *(q for q in topology.queues if q not in self.declared.queues)],
        )

    async def ensure_topics(self, topics: set[str]) -> None:
        missing = topics - self._known_topics
        if not missing:
            return
        admin = self.admin()
        # a topic's own limit leaves the room forwarded copies need (Kafka's default is 1 MiB)
        room = {"max.message.bytes": str(max(self.max_message_bytes + FORWARD_ROOM, 1_048_588))}
        new = [NewTopic(t, self.partitions, self.replication_factor, config=room) for t in sorted(missing)]

        def create() -> list[str]:
            failed = []
            for topic, future in admin.create_topics(new, operation_timeout=self.connect_timeout).items():
                try:
                    future.result(self.connect_timeout + 5)
                except KafkaException as exc:
                    if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                        failed.append(f"{topic} ({_reason(exc)})")
            return failed

        failed = await asyncio.get_running_loop().run_in_executor(self._slow, create)
        if failed:
            raise TransportError(f"Kafka at {self.url} did not create topic(s): {', '.join(failed)}")
        self._known_topics |= missing

    async def _check_exist(self, topics: set[str]) -> None:
        if not topics:
            return
        existing = await self.topic_names(refresh=True)
        missing = topics - existing
        if missing:
            raise TransportError(
                f"Kafka at {self.url} has no topic {names(missing)} (the exchange is passive)"
            )

    async def topic_names(self, refresh: bool = False) -> set[str]:
        if refresh or not self._known_topics:
            admin = self.admin()
            try:
                metadata = await asyncio.get_running_loop().run_in_executor(
                    self._slow, lambda: admin.list_topics(timeout=self.connect_timeout)
                )
            except KafkaException as exc:
                raise TransportError(f"no Kafka broker answered at {self.url}: {_reason(exc)}") from None
            self._known_topics = set(metadata.topics)
        return set(self._known_topics)

    # -- sending ------------------------------------------------------------------------

    async def send(self, exchange: str, messages: Sequence[WireMessage]) -> list[SendResult]:
        if self._producer is None or self._producer_broken:
            await self.connect()
        records: list[Record | SendResult] = [self._record(exchange, m) for m in messages]
        await self._topics_for(records)
        return await self.produce(records)

    def _record(self, exchange: str, message: WireMessage) -> Record | SendResult:
        try:
            topic = self.template.topic(message.exchange or exchange, message.routing_key)
        except InvalidEvent as exc:
            return SendResult(Outcome.REFUSED, f"no Kafka topic for it: {exc}")
        record = to_record(message, topic, key_of(message, self.key))
        # measured in full only when the value comes near the limit (a record's headers are a
        # few hundred bytes; summing them for every record costs more than the rest of the check)
        near = len(record.value) + FORWARD_ROOM > self.max_message_bytes
        if near and record.size() > self.max_message_bytes:
            return self._too_large
        return record

    async def _topics_for(self, records: Sequence[Record | SendResult]) -> None:
        """Topics named by routing key words come into being with their first message."""
        needed = {r.topic for r in records if isinstance(r, Record)} - self._known_topics
        if needed:
            await self.ensure_topics(needed)

    async def produce(self, records: Sequence[Record | SendResult]) -> list[SendResult]:
        """Hand every record to librdkafka, then await all their delivery reports together."""
        producer = self._producer
        assert producer is not None
        reports = Reports(asyncio.get_running_loop(), len(records))
        produced = 0
        for index, record in enumerate(records):
            if isinstance(record, SendResult):
                reports.results[index] = record
                continue
            report = partial(reports.report, index)
            refused = self._try_produce(producer, record, report)
            while refused is _QUEUE_FULL:  # librdkafka's queue is full: let reports drain it
                await asyncio.sleep(0.005)
                refused = self._try_produce(producer, record, report)
            if refused is None:
                produced += 1
            else:
                reports.results[index] = refused
        reports.expect(produced)
        try:
            await asyncio.wait_for(asyncio.shield(reports.done), self.delivery_timeout + 10)
        except TimeoutError:
            pass  # librdkafka reports every record by its delivery timeout; this is a backstop
        final = [
            r if r is not None else SendResult(Outcome.RETRY, "unreached: no delivery report")
            for r in reports.results
        ]
        self._fail_if_unreached(final)
        return final

    def _try_produce(
        self, producer: Producer, record: Record, report: Callable[[KafkaError | None, Any], None]
    ) -> SendResult | None:
        """Hand one record over: None, :data:`_QUEUE_FULL`, or why librdkafka refused it at once.
        (Not a coroutine: it runs once per record, and almost always succeeds at once.)"""
        try:
            producer.produce(
                record.topic,
                value=record.value,
                key=record.key,
                headers=record.headers,
                timestamp=record.timestamp,
                on_delivery=report,
            )
            return None
        except BufferError:
            return _QUEUE_FULL
        except KafkaException as exc:
            error = exc.args[0]
            if error.code() == KafkaError.MSG_SIZE_TOO_LARGE:
                return self._too_large
            outcome = Outcome.REFUSED if error.code() in _NEVER else Outcome.RETRY
            return SendResult(outcome, _reason(exc))

    def _fail_if_unreached(self, results: list[SendResult]) -> None:
        """A batch none of which reached the broker: the broker is away, not these messages."""
        failed = [r for r in results if r.outcome is Outcome.RETRY]
        if failed and len(failed) == len(results) and all(r.reason.startswith("unreached") for r in failed):
            # an idempotent producer that lost its broker may never recover its sequence: start anew
            self._producer_broken = True
            raise TransportError(
                f"Kafka at {self.url} took none of {len(results)} messages: {failed[0].reason}"
            )

    # -- consuming and the doctor --------------------------------------------------------

    def consume(self, queue: QueueSpec, *, prefetch: int) -> AsyncIterator[Delivery]:
        from tidings.transports.kafka.consume import consume

        return consume(self, queue, prefetch)

    async def verify(self, topology: Topology) -> Findings:
        from tidings.transports.kafka.doctor import verify

        return await verify(self, topology)

    def dead_letters(self) -> KafkaDeadLetters:
        """Consumers' dead letters for an operator (``tidings dead``; :mod:`.dead`)."""
        from tidings.transports.kafka.dead import KafkaDeadLetters

        return KafkaDeadLetters(self)

    async def forward(self, record: Record) -> None:
        """Produce one record of the consuming side (a retry, a dead letter), confirmed, or raise."""
        if self._producer is None or self._producer_broken:
            await self.connect()
        await self._topics_for([record])
        (result,) = await self.produce([record])
        if result.outcome is Outcome.REFUSED:
            raise RefusedRecord(f"Kafka never takes this record for {record.topic}: {result.reason}")
        if result.outcome is not Outcome.DELIVERED:
            raise TransportError(f"Kafka did not take the message for {record.topic}: {result.reason}")

    def now_ms(self) -> int:
        return int(time.time() * 1000)


class RefusedRecord(TransportError):
    """Kafka will never take this record (too large, a topic it may not write): no use trying again."""


def check_librdkafka(settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` if librdkafka knows each one and takes its value, else a ConfigError naming it
    (asked of a client with no broker to reach: it connects nowhere)."""
    if settings:
        try:
            Producer({**settings, "log_level": 0})
        except KafkaException as exc:
            raise ConfigError(f"librdkafka: {exc.args[0].str()}") from None
    return settings


def _serve_reports(producer: Producer, stop: threading.Event) -> None:
    """The thread that hands librdkafka's delivery reports back (each resolves a future)."""
    while not stop.is_set():
        producer.poll(0.05)
    producer.poll(0)


class Reports:
    """The delivery reports of one batch: collected on the reports thread, handed to the event
    loop once, when the last one is in (not one wake-up per record)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, count: int) -> None:
        self.loop = loop
        self.results: list[SendResult | None] = [None] * count
        self.done: asyncio.Future[None] = loop.create_future()
        self._lock = threading.Lock()
        self._reported = 0
        self._expected: int | None = None

    def report(self, index: int, error: KafkaError | None, _: Any) -> None:
        self.results[index] = _outcome(error)
        with self._lock:
            self._reported += 1
            finished = self._reported == self._expected
        if finished:
            self.loop.call_soon_threadsafe(_finish, self.done)

    def expect(self, produced: int) -> None:
        """All records are handed over: ``produced`` reports will come."""
        with self._lock:
            self._expected = produced
            finished = self._reported == produced
        if finished:
            _finish(self.done)


def _finish(done: asyncio.Future[None]) -> None:
    if not done.done():
        done.set_result(None)


def _outcome(error: KafkaError | None) -> SendResult:
    if error is None:
        return DELIVERED
    if error.code() in _NEVER:
        return SendResult(Outcome.REFUSED, f"Kafka refused it: {error.str()}")
    if error.code() in _UNREACHED:
        return SendResult(Outcome.RETRY, f"unreached: {error.str()}")
    return SendResult(Outcome.RETRY, f"Kafka did not take it: {error.str()}")


def _reason(exc: KafkaException) -> str:
    error = exc.args[0] if exc.args else None
    return error.str() if isinstance(error, KafkaError) else str(exc)


def end_offsets(
    config: dict[str, Any], partitions: list[TopicPartition], timeout: float
) -> dict[tuple[str, int], int]:
    """The true end of each partition: one past its last record.

    The high watermark should say it, but some Kafka-protocol brokers (Tansu) answer with the
    start of the last batch; reading on from there to the end of the partition settles it.
    """
    reader = Consumer({**config, "group.id": "tidings-end-offsets", "enable.partition.eof": True})
    try:
        ends: dict[tuple[str, int], int] = {}
        start = []
        for tp in partitions:
            _, high = reader.get_watermark_offsets(tp, timeout=timeout, cached=False)
            ends[(tp.topic, tp.partition)] = high
            start.append(TopicPartition(tp.topic, tp.partition, high))
        reader.assign(start)
        pending = set(ends)
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            for message in reader.consume(500, 0.05):
                key = (message.topic(), message.partition())
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        pending.discard(key)
                    continue
                ends[key] = max(ends[key], message.offset() + 1)
        return ends
    finally:
        reader.close()
