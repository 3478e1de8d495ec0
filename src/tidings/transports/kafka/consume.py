"""Consuming from Kafka: a queue is a consumer group; offsets are committed for the finished prefix.

A queue's group reads the topics its bindings name (a template with routing key words may
make that a pattern of topics) and keeps what its patterns select — Kafka routes by topic
only, so the rest is read and skipped. Each partition's position is committed only up to the
first message whose handler has not finished (:mod:`.offsets`), so a consumer that dies loses
nothing; what it had not finished comes to the next member again.

Retries do not block a partition: a retried message is written to the queue's retry topic for
that delay (``<queue>.retry.<n>s``, with ``x-tidings-attempts``, ``x-tidings-last-error`` and
the time it is due) and its original counts as finished. The group reads its retry topics too;
a message read before it is due pauses its partition until then (every message of one retry
topic waits equally long, its topic's delay, so the first is always due first). A wish to wait
longer than the longest retry topic goes round that topic again until the time it names
(``x-tidings-not-before``), so it never holds up the messages behind it. Dead letters go to
``<queue>.dead`` with the reason, the attempts and the queue.

When partitions move to another member (a rebalance), the member giving them up waits a
moment for the handlers running on them and commits what they finished, so in the normal case
no message is handled twice by two members.

A released message keeps the position before it. While the member runs, it hands the message
out again after a backoff (:class:`~tidings.retry.HandBack`: a settle the broker refused, a
failure before the handlers), as a broker with acknowledgements redelivers; if the partition
moves meanwhile, or the consumer stops, the partition's next reader gets it instead.

Kafka cannot say whether a message was handed out before. A message in a partition between
the group's committed position and the partition's end at the time the partition was assigned
*may* have been (``redelivered`` is true for it), so the consumer runtime's journal can count
a consumer that died on it; messages published after the assignment are new.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from tidings.errors import TransportError
from tidings.retry import HandBack
from tidings.topics import TopicMatcher
from tidings.transport import (
    ATTEMPTS_HEADER,
    LAST_ERROR_HEADER,
    QueueSpec,
    WireMessage,
)
from tidings.transports.kafka.delivery import KafkaDelivery
from tidings.transports.kafka.groups import subscriptions
from tidings.transports.kafka.offsets import Offsets
from tidings.transports.kafka.records import (
    DUE_HEADER,
    NOT_BEFORE_HEADER,
    from_record,
    is_queue_topic,
)
from tidings.transports.kafka.transport import KafkaTransport, end_offsets

log = logging.getLogger(__name__)

Partition = tuple[str, int]
#: how long ``poll`` waits for a first message; then it takes what is already fetched
POLL_WAIT = 0.05
#: how often positions that moved are committed while running (always at revoke and stop), also
#: while no poll runs (the handlers of a batch read at once may take long)
COMMIT_EVERY = 0.2
#: seconds without a single partition before a member says so (at least 6 session timeouts)
IDLE_WARNING = 60.0


async def consume(transport: KafkaTransport, queue: QueueSpec, prefetch: int) -> AsyncIterator[KafkaDelivery]:
    group = GroupConsumer(transport, queue, max(1, prefetch))
    await group.start()
    try:
        while True:
            if group.stopped:
                return
            want = group.prefetch - group.in_flight
            group.clear_settles()
            ready = group.take_again(want)
            ready += await group.in_thread(group.poll, want - len(ready))
            if want <= 0 and group.prefetch - group.in_flight <= 0:
                await group.wait_for_a_settle(0.2)  # stay in the group meanwhile: poll again after
            for item in ready:
                delivery = group.delivery(item)
                if item.not_before is None:
                    yield delivery
                else:
                    await delivery.wait_longer(item.not_before)
    finally:
        await group.stop()


@dataclass(slots=True)
class Ready:
    """A record read for the queue, before it becomes a delivery."""

    topic: str
    partition: int
    offset: int
    message: WireMessage
    attempt: int
    redelivered: bool
    #: a retry due again on its topic that wished to wait longer (epoch ms): round again
    not_before: int | None = None
    last_error: str = ""
    #: the assignment of its partition it was read under (:class:`Offsets`)
    epoch: int = 0


class GroupConsumer:
    """One member of a queue's consumer group. Every call into librdkafka's consumer is made on
    one thread of its own (rebalance callbacks come on it too); settling happens on the event
    loop and reaches that thread through :class:`Offsets`, under a lock."""

    def __init__(self, transport: KafkaTransport, queue: QueueSpec, prefetch: int) -> None:
        self.transport, self.queue, self.prefetch = transport, queue, prefetch
        self.reads_dead_letters = not queue.bindings
        self.exact, self.patterns = subscriptions(transport, queue)
        self.retry_topics = set() if self.reads_dead_letters else set(transport.queue_topics(queue.name)[:-1])
        self.matchers = self._matchers()
        self.offsets = Offsets()
        self.lock = threading.Lock()
        #: deliveries handed out and not settled (the loop's count, for prefetch)
        self.in_flight = 0
        self.stopped = False
        self._consumer: Consumer | None = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix=f"tidings-kafka-{queue.name}")
        self._maybe_seen: dict[Partition, int] = {}
        self._due_paused: dict[Partition, int] = {}
        self._full_paused: set[Partition] = set()
        self._assigned: set[Partition] = set()
        #: partitions revoked or lost during the current poll (their records read are not ours)
        self._given_up: set[Partition] = set()
        #: since when this member has had no partition at all (None: it has some)
        self._idle_since: float | None = time.monotonic()
        self._told_idle = False
        self._committing: asyncio.Task[None] | None = None
        self._settle_event = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        #: released messages due to be handed out again (the loop's side), and their backoff
        self._again: list[Ready] = []
        self._hand_back = HandBack()

    def _matchers(self) -> list[tuple[str | re.Pattern[str], TopicMatcher[bool]]]:
        """For each topic (or pattern of topics) read, the binding patterns that select in it."""
        found: dict[str, tuple[str | re.Pattern[str], TopicMatcher[bool]]] = {}
        for binding in self.queue.bindings:
            name = self.transport.template.subscription(binding.exchange, binding.pattern)
            where: str | re.Pattern[str] = re.compile(name) if name.startswith("^") else name
            found.setdefault(name, (where, TopicMatcher()))[1].add(binding.pattern, True)
        return list(found.values())

    async def in_thread(self, fn: Any, *args: Any) -> Any:
        return await self._loop.run_in_executor(self._thread, fn, *args)

    async def start(self) -> None:
        config = self.transport.consumer_config(
            self.queue.name,
            **{
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "fetch.wait.max.ms": 10,
                "topic.metadata.refresh.interval.ms": 5000,
            },
        )
        await self.transport.ensure_topics(
            self.retry_topics | (self.exact if self.reads_dead_letters else set())
        )
        topics = sorted(self.exact | self.retry_topics) + [p.pattern for p in self.patterns]

        def subscribe() -> Consumer:
            consumer = Consumer(config)
            consumer.subscribe(
                topics, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
            )
            return consumer

        try:
            self._consumer = await self.in_thread(subscribe)
        except KafkaException as exc:
            raise TransportError(
                f"Kafka at {self.transport.url}: cannot consume {self.queue.name!r}: {exc}"
            ) from None
        self.transport.consumers.add(self)
        self._committing = asyncio.create_task(self._commit_regularly(), name=f"commit {self.queue.name}")

    async def stop(self) -> None:
        """Commit what was finished and leave the group (its partitions go to the others at once)."""
        if self.stopped:
            return
        self.stopped = True
        self.transport.consumers.discard(self)
        if self._committing is not None:
            self._committing.cancel()
            await asyncio.gather(self._committing, return_exceptions=True)
        if self._consumer is not None:
            try:
                await self.in_thread(self._leave)
            except RuntimeError:
                pass  # the thread pool is gone (the interpreter is exiting)
        self._thread.shutdown(wait=False)

    async def _commit_regularly(self) -> None:
        """Commit the positions that moved, every :data:`COMMIT_EVERY` s. The consume loop polls
        only between the batches it reads: a member killed while a batch's handlers took long
        would otherwise hand everything they finished to the next reader again."""
        while not self.stopped:
            await asyncio.sleep(COMMIT_EVERY)
            if self.offsets_to_commit():
                try:
                    await self.in_thread(self._commit_moved)
                except RuntimeError:
                    return  # the thread pool is gone (the interpreter is exiting)

    def _commit_moved(self) -> None:
        consumer = self._consumer
        if consumer is not None:
            self._commit(consumer, self.offsets_to_commit(), sync=False)

    def _leave(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is None:
            return
        self._commit(consumer, self.offsets_to_commit(), sync=True)
        consumer.close()

    # -- the consumer's thread -----------------------------------------------------------

    def poll(self, want: int) -> list[Ready]:
        """Read up to ``want`` records for the queue (none, but stay in the group, when 0)."""
        consumer = self._consumer
        if consumer is None:
            return []
        self._tell_if_idle_long()
        self._resume_due(consumer, time.time())
        if want <= 0:
            self._pause_all(consumer)
            stray = consumer.poll(0)  # rebalances and heartbeats go on while the queue is full
            if stray is not None and stray.error() is None:
                self._put_back(consumer, stray)
            return []
        self._resume_full(consumer)
        self._given_up.clear()  # the partitions a revoke inside this poll takes away
        first = consumer.poll(POLL_WAIT)
        if first is None:
            return []
        records = [first, *(consumer.consume(want - 1, 0) if want > 1 else [])]
        return self._triage(consumer, records)

    def _triage(self, consumer: Consumer, records: list[Any]) -> list[Ready]:
        ready: list[Ready] = []
        moved_back: set[Partition] = set()
        now_ms = self.transport.now_ms()
        dropped: set[Partition] = set()
        for record in records:
            # read before its partition was revoked (the revoke ran inside this poll): not ours to
            # hand out; whoever has the partition now reads it again from the committed position
            if (record.topic(), record.partition()) in self._given_up:
                dropped.add((record.topic(), record.partition()))
                continue
            error = record.error()
            if error is not None:
                if error.code() not in (KafkaError._PARTITION_EOF, KafkaError.UNKNOWN_TOPIC_OR_PART):
                    log.warning("Kafka consumer of %r: %s", self.queue.name, error.str())
                continue
            where = (record.topic(), record.partition())
            if where in moved_back:
                continue  # its partition was sent back to an earlier record: read again later
            found = self._ready(record, now_ms)
            if found is None:
                self._put_back(consumer, record)
                moved_back.add(where)
            elif found is not False:
                ready.append(found)
        self._read_again_from_the_start(consumer, dropped & self._assigned)
        with self.lock:
            for item in ready:
                epoch = self.offsets.delivered(item.topic, item.partition, item.offset)
                item.epoch = -1 if epoch is None else epoch
        return [item for item in ready if item.epoch >= 0]  # (-1: its partition is not assigned)

    def _read_again_from_the_start(self, consumer: Consumer, partitions: set[Partition]) -> None:
        """Partitions given back to this member in the poll that revoked them, records of which
        were dropped: read from the new assignment's start (where librdkafka starts anyway), so
        that none read after the reassignment is passed over."""
        for topic, partition in partitions:
            with self.lock:
                start = self.offsets.partitions[(topic, partition)].next
            try:
                consumer.seek(TopicPartition(topic, partition, start))
            except KafkaException as exc:  # not fetching yet: it will start there
                log.debug("Kafka consumer of %r: no seek to %s:%d (%s)", self.queue.name, topic, start, exc)

    def _ready(self, record: Any, now_ms: int) -> Ready | bool | None:
        """The record as a delivery; None when it is a retry not yet due; False when not selected."""
        topic, partition, offset = record.topic(), record.partition(), record.offset()
        message, own = from_record(record.headers(), record.value(), record.timestamp()[1])
        retried = topic in self.retry_topics
        if retried:
            due = own.get(DUE_HEADER)
            if isinstance(due, int) and due > now_ms:
                self._due_paused[(topic, partition)] = due
                return None
        elif not self.reads_dead_letters and not self._selected(topic, message):
            with self.lock:
                self.offsets.skipped(topic, partition, offset)
            return False
        tries, error = 0, None
        if not self.reads_dead_letters:  # a dead letter keeps its count and error for its reader
            raw = message.headers.pop(ATTEMPTS_HEADER, 0)
            error = message.headers.pop(LAST_ERROR_HEADER, None)
            tries = raw if isinstance(raw, int) and not isinstance(raw, bool) and raw > 0 else 0
        seen_until = self._maybe_seen.get((topic, partition), -1)
        found = Ready(topic, partition, offset, message, tries + 1, offset < seen_until)
        later = own.get(NOT_BEFORE_HEADER)
        if retried and isinstance(later, int) and later > now_ms:
            found.not_before, found.last_error = later, str(error or "")
        return found

    def _selected(self, topic: str, message: WireMessage) -> bool:
        keys = [message.routing_key, *message.cc]
        for where, matcher in self.matchers:
            if isinstance(where, str):
                found = where == topic
            else:  # a pattern also matches queues' retries and dead letters: never events to read
                found = where.match(topic) is not None and not is_queue_topic(topic)
            if found and any(matcher.match(key) for key in keys):
                return True
        return False

    def _put_back(self, consumer: Consumer, record: Any) -> None:
        """Read again later: seek the partition back to this record and pause it."""
        tp = TopicPartition(record.topic(), record.partition(), record.offset())
        try:
            consumer.seek(tp)
            consumer.pause([TopicPartition(record.topic(), record.partition())])
        except KafkaException as exc:
            log.debug("Kafka consumer of %r: cannot seek back (%s)", self.queue.name, exc)
            return
        where = (record.topic(), record.partition())
        if where not in self._due_paused:
            self._full_paused.add(where)

    def _pause_all(self, consumer: Consumer) -> None:
        running = self._assigned - self._full_paused - set(self._due_paused)
        if running:
            consumer.pause([TopicPartition(t, p) for t, p in running])
            self._full_paused |= running

    def _resume_full(self, consumer: Consumer) -> None:
        waiting = self._full_paused - set(self._due_paused)
        if waiting:
            consumer.resume([TopicPartition(t, p) for t, p in waiting])
        self._full_paused.clear()

    def _resume_due(self, consumer: Consumer, now: float) -> None:
        due = [where for where, at in self._due_paused.items() if at <= now * 1000]
        for where in due:
            del self._due_paused[where]
        if due:
            consumer.resume([TopicPartition(t, p) for t, p in due])

    def offsets_to_commit(self, only: set[Partition] | None = None) -> dict[Partition, int]:
        with self.lock:
            return self.offsets.to_commit(only)

    def _commit(self, consumer: Consumer, positions: dict[Partition, int], *, sync: bool) -> None:
        if not positions:
            return
        try:
            consumer.commit(
                offsets=[TopicPartition(t, p, o) for (t, p), o in positions.items()], asynchronous=not sync
            )
        except KafkaException as exc:
            log.warning("Kafka consumer of %r could not commit its positions: %s", self.queue.name, exc)
            return
        with self.lock:
            self.offsets.committed(positions)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        timeout = self.transport.connect_timeout
        try:
            committed = consumer.committed(partitions, timeout=timeout)
            ends = end_offsets(self.transport.consumer_config(self.queue.name), partitions, timeout)
        except KafkaException as exc:
            log.warning("Kafka consumer of %r: reading positions failed (%s)", self.queue.name, exc)
            committed, ends = partitions, {}
        with self.lock:
            for tp in committed:
                position = tp.offset if tp.offset >= 0 else 0
                self.offsets.assigned(tp.topic, tp.partition, position)
        for tp in partitions:
            where = (tp.topic, tp.partition)
            self._assigned.add(where)
            self._maybe_seen[where] = ends.get(where, 0)
        log.debug("Kafka consumer of %r was assigned %s", self.queue.name, partitions)
        if self._assigned:
            self._idle_since, self._told_idle = None, False

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Give partitions up: wait a moment for their handlers, commit what they finished."""
        leaving = {(tp.topic, tp.partition) for tp in partitions}
        deadline = time.monotonic() + min(5.0, self.transport.session_timeout / 2)
        while time.monotonic() < deadline:
            with self.lock:
                if not any(self.offsets.unsettled(t, p) for t, p in leaving):
                    break
            time.sleep(0.01)
        self._commit(consumer, self.offsets_to_commit(leaving), sync=True)
        self._resume_given_up(consumer, leaving)
        self._forget(leaving)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Partitions taken away without a revoke (the session timed out): nothing is ours to commit."""
        leaving = {(tp.topic, tp.partition) for tp in partitions}
        self._resume_given_up(consumer, leaving)
        self._forget(leaving)

    def _resume_given_up(self, consumer: Consumer, leaving: set[Partition]) -> None:
        """librdkafka keeps a partition paused through an unassign, and this member forgets that it
        paused it: one that comes back to it would never be read again."""
        try:
            consumer.resume([TopicPartition(t, p) for t, p in leaving])
        except KafkaException as exc:
            log.debug("Kafka consumer of %r: cannot resume %s (%s)", self.queue.name, leaving, exc)

    def _forget(self, partitions: set[Partition]) -> None:
        with self.lock:
            for topic, partition in partitions:
                self.offsets.revoked(topic, partition)
        self._given_up |= partitions
        for where in partitions:
            self._assigned.discard(where)
            self._due_paused.pop(where, None)
            self._full_paused.discard(where)
            self._maybe_seen.pop(where, None)
        if not self._assigned and self._idle_since is None:
            self._idle_since = time.monotonic()

    def _tell_if_idle_long(self) -> None:
        """Once, when this member has had nothing to read for long: a consumer that only waits
        looks the same as one whose group the broker no longer balances (seen on Tansu after
        members left mid-join), and its messages wait meanwhile, committed nowhere."""
        limit = max(IDLE_WARNING, 6 * self.transport.session_timeout)
        if self._told_idle or self._idle_since is None or time.monotonic() - self._idle_since < limit:
            return
        self._told_idle = True
        log.warning(
            "Kafka consumer of %r has had no partition for %.0fs: the group %r has more members "
            "than its topics have partitions, or the broker does not balance it (see its "
            "consumer-group state); its messages wait in Kafka meanwhile",
            self.queue.name,
            time.monotonic() - self._idle_since,
            self.queue.name,
        )

    # -- the event loop's side ------------------------------------------------------------

    def delivery(self, ready: Ready) -> KafkaDelivery:
        self.in_flight += 1
        return KafkaDelivery(
            ready.message,
            ready.attempt,
            ready.redelivered,
            self.queue.name,
            ready.topic,
            ready.partition,
            ready.offset,
            self,
            last_error=ready.last_error,
            epoch=ready.epoch,
            not_before=ready.not_before,
        )

    def settled(self, delivery: KafkaDelivery) -> None:
        self.in_flight -= 1
        self._settle_event.set()
        self._hand_back.succeeded()
        with self.lock:
            self.offsets.settled(delivery.topic, delivery.partition, delivery.offset, delivery.epoch)

    def hand_back(self, delivery: KafkaDelivery) -> None:
        """Released: its position stays before it, and this member hands it out again after a
        backoff (at once, a handler whose settle the broker refuses would run in a loop). If its
        partition moves meanwhile, or the consumer stops, the partition's next reader gets it."""
        self.in_flight -= 1
        with self.lock:
            self.offsets.release(delivery.topic, delivery.partition, delivery.offset, delivery.epoch)
        self._settle_event.set()
        if not self.stopped:
            again = Ready(
                delivery.topic,
                delivery.partition,
                delivery.offset,
                delivery.message,
                delivery.attempt,
                True,
                delivery.not_before,
                delivery.last_error,
                delivery.epoch,
            )
            self._loop.call_later(self._hand_back.next_wait(), self._again.append, again)

    def take_again(self, want: int) -> list[Ready]:
        """Up to ``want`` released messages due again, of partitions still assigned as they were."""
        if want <= 0 or not self._again:
            return []
        due, self._again = self._again[:want], self._again[want:]
        now_ms = self.transport.now_ms()
        with self.lock:
            taken = [r for r in due if self.offsets.taken_again(r.topic, r.partition, r.offset, r.epoch)]
        for ready in taken:
            if ready.not_before is not None and ready.not_before <= now_ms:
                ready.not_before = None  # its wait is over meanwhile
        return taken

    def clear_settles(self) -> None:
        self._settle_event.clear()

    async def wait_for_a_settle(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._settle_event.wait(), timeout)
        except TimeoutError:
            pass
