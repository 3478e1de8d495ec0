"""Kafka's dead letters, for an operator (``tidings dead``): the topic ``<queue>.dead``.

A topic is a log: nothing can be taken out of it. What an operator dealt with (requeued or
dropped) is written down instead, in two places, and ``list`` shows what neither mentions:

* the committed position of the consumer group ``<queue>.dead`` — the group a consumer of the
  queue ``<queue>.dead`` uses too: every record before it was dealt with;
* the topic ``<queue>.dead.handled``, for dead letters dealt with out of order (the group's
  position cannot skip one record): one record each, keyed ``<partition>:<offset>``, its value
  saying what was done, when, and to which message. It is also an audit log.

After each change the group's position moves past every record dealt with at the front of each
partition, so ``<queue>.dead.handled`` matters only for what lies beyond it. Should the group be
in use (a consumer of ``<queue>.dead`` runs), Kafka refuses the commit and every dead letter
dealt with goes into ``<queue>.dead.handled``. Such a consumer knows nothing of those records.

A requeued dead letter is written to the queue's first retry topic (``<queue>.retry.<n>s``),
due at once and with no attempts: only the queue's own group reads that topic, where the topic
the message first came from is read by every queue bound to it. It is written down as dealt
with only once the copy's delivery report is in: should tidings stop between the two, the dead
letter is still listed, and requeuing it again hands it over twice — never zero times.

A dead letter's id is ``<partition>:<offset>``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from tidings.errors import NotFound, TransportError
from tidings.event import dumps, format_time
from tidings.transport import DeadLetter, Outcome
from tidings.transports.kafka.records import DUE_HEADER, Record, from_record, key_of, to_record
from tidings.transports.kafka.transport import end_offsets

if TYPE_CHECKING:
    from tidings.transports.kafka.transport import KafkaTransport

log = logging.getLogger(__name__)

#: the most dead letters one look reads (``--all`` goes round by round)
SCAN_LIMIT = 10_000
#: how long reading a topic to its end may take
READ_TIMEOUT = 60.0
#: the group the markers are read with (it never commits)
MARKS_READER = "tidings-dead-letters"
Where = tuple[int, int]  # partition, offset


def handled_topic(queue: str) -> str:
    return f"{queue}.dead.handled"


@dataclass
class _Log:
    """What one read of a topic found: its records, and how far it got in each partition."""

    records: list[Any] = field(default_factory=list)  # confluent_kafka.Message
    #: where reading began in each partition: the group's position, else the partition's start
    start: dict[int, int] = field(default_factory=dict)
    ends: dict[int, int] = field(default_factory=dict)
    #: the offsets read, in order, dealt with or not (to move the group's position past)
    read: dict[int, list[int]] = field(default_factory=dict)
    #: partitions read to their end
    finished: set[int] = field(default_factory=set)


@dataclass
class _Scan:
    """The dead letters of a queue not yet dealt with, and what is needed to write one down."""

    dead: str
    log: _Log
    handled: set[Where]
    letters: list[tuple[Where, DeadLetter]]

    def chosen(self, ids: Sequence[str] | None) -> list[tuple[Where, DeadLetter]]:
        if ids is None:
            return self.letters
        missing = [wanted for wanted in ids if not any(letter.matches(wanted) for _, letter in self.letters)]
        if missing:
            looked = "" if len(self.log.finished) == len(self.log.start) else f" (the first {SCAN_LIMIT})"
            names = ", ".join(map(repr, missing))
            raise NotFound(f"no dead letter {names} among those not yet dealt with in {self.dead!r}{looked}")
        return [(w, letter) for w, letter in self.letters if any(letter.matches(i) for i in ids)]

    def positions(self, handled: set[Where]) -> dict[int, int]:
        """The group's new position in each partition where the front was dealt with."""
        moved = {}
        for partition, start in self.log.start.items():
            position = start
            for offset in self.log.read.get(partition, []):
                if (partition, offset) not in handled:
                    break
                position = offset + 1
            else:
                if partition in self.log.finished:
                    position = self.log.ends[partition]
            if position > start:
                moved[partition] = position
        return moved


class KafkaDeadLetters:
    """:class:`~tidings.transport.DeadLetters` on Kafka, with the transport's producer."""

    def __init__(self, transport: KafkaTransport) -> None:
        self.transport = transport

    async def list(self, queue: str, limit: int) -> list[DeadLetter]:
        scan = await self._scan(queue)
        return [letter for _, letter in scan.letters[:limit]]

    async def count(self, queue: str, limit: int) -> int:
        return len(await self.list(queue, limit))  # a topic is read, never taken from

    async def get(self, queue: str, id: str) -> DeadLetter | None:  # noqa: A002
        scan = await self._scan(queue)
        return next((letter for _, letter in scan.letters if letter.matches(id)), None)

    async def requeue(self, queue: str, ids: Sequence[str] | None) -> int:
        return await self._rounds(queue, ids, lambda scan, chosen: self._requeue(queue, scan, chosen))

    async def drop(self, queue: str, ids: Sequence[str] | None) -> int:
        return await self._rounds(queue, ids, lambda scan, chosen: self._dealt_with(scan, chosen, "dropped"))

    async def _rounds(self, queue: str, ids: Sequence[str] | None, act: Callable[..., Any]) -> int:
        """``act(scan, chosen)`` on what ``ids`` name, or on all there were when it began, SCAN_LIMIT
        at a time."""
        scan = await self._scan(queue)
        until = dict(scan.log.ends)  # what comes in meanwhile is not part of "all"
        done = 0
        while True:
            chosen = scan.chosen(ids)
            if chosen:
                done += await act(scan, chosen)
            if ids is not None or len(scan.log.finished) == len(scan.log.start):
                return done
            scan = await self._scan(queue, until)

    async def _requeue(self, queue: str, scan: _Scan, chosen: list[tuple[Where, DeadLetter]]) -> int:
        """Copies into the queue's first retry topic, confirmed; then those confirmed written down."""
        transport = self.transport
        retry, _ = transport.retry_topic(queue, 0)
        await transport.connect()
        await transport.ensure_topics({retry})
        due = {DUE_HEADER: transport.now_ms()}  # no attempts: its handler gets it as a first
        results = await transport.produce([_copy(letter, retry, transport.key, due) for _, letter in chosen])
        taken = [c for c, result in zip(chosen, results, strict=True) if result.outcome is Outcome.DELIVERED]
        await self._dealt_with(scan, taken, "requeued")
        refused = [result.reason for result in results if result.outcome is not Outcome.DELIVERED]
        if refused:
            raise TransportError(
                f"Kafka did not take {len(refused)} requeued message(s) for {retry} ({refused[0]}); "
                f"they stay in {scan.dead}"
            )
        return len(taken)

    async def _dealt_with(self, scan: _Scan, done: list[tuple[Where, DeadLetter]], action: str) -> int:
        """Write ``done`` down: the group's position past the front, a marker for each beyond it."""
        handled = scan.handled | {where for where, _ in done}
        positions = scan.positions(handled)
        if not await self._commit(scan.dead, positions):
            positions = {}
        beyond = [(w, letter) for w, letter in done if w[1] >= positions.get(w[0], 0)]
        if beyond:
            await self._mark(scan.dead, beyond, action)
        return len(done)

    async def _commit(self, dead: str, positions: dict[int, int]) -> bool:
        if not positions:
            return True
        config = self.transport.consumer_config(dead)

        def commit() -> None:
            writer = Consumer(config)
            try:
                offsets = [TopicPartition(dead, p, o) for p, o in positions.items()]
                writer.commit(offsets=offsets, asynchronous=False)
            finally:
                writer.close()

        try:
            await asyncio.get_running_loop().run_in_executor(None, commit)
        except KafkaException as exc:  # the group is in use: the markers say it all
            log.warning("Kafka refused to move group %r (%s); marking each dead letter instead", dead, exc)
            return False
        return True

    async def _mark(self, dead: str, done: list[tuple[Where, DeadLetter]], action: str) -> None:
        topic = handled_topic(dead.removesuffix(".dead"))
        await self.transport.connect()
        await self.transport.ensure_topics({topic})
        now = format_time(datetime.now(UTC))
        marks = [
            Record(
                topic,
                f"{partition}:{offset}".encode(),
                dumps({"action": action, "at": now, "message_id": letter.message.message_id}),
                [],
                0,
            )
            for (partition, offset), letter in done
        ]
        results = await self.transport.produce(marks)
        if any(result.outcome is not Outcome.DELIVERED for result in results):
            raise TransportError(
                f"Kafka did not take the record of what was {action} in {topic}: "
                f"those dead letters are still listed in {dead}"
            )

    async def _scan(self, queue: str, until: dict[int, int] | None = None) -> _Scan:
        """The dead letters not dealt with yet: from the group's position, not marked."""
        dead = f"{queue}.dead"
        existing = await self.transport.topic_names(refresh=True)
        if dead not in existing:
            raise NotFound(f"Kafka at {self.transport.url} has no topic {dead!r}")
        handled: set[Where] = set()
        if handled_topic(queue) in existing:
            marks = await self._read(handled_topic(queue), MARKS_READER, None, set(), None)
            handled = {_where(record.key()) for record in marks.records}
        found = await self._read(dead, dead, until, handled, SCAN_LIMIT)
        letters = [
            ((record.partition(), record.offset()), _letter(record))
            for record in found.records
            if (record.partition(), record.offset()) not in handled
        ]
        letters.sort(key=lambda item: (_when(item[1]), item[0]))
        return _Scan(dead, found, handled, letters)

    async def _read(
        self, topic: str, group: str, until: dict[int, int] | None, skip: set[Where], limit: int | None
    ) -> _Log:
        reader = _Reader(self.transport, topic, group)
        return await asyncio.get_running_loop().run_in_executor(None, reader.read, until, skip, limit)


class _Reader:
    """Reads a topic from a group's position (else its start) to its end, on a thread of its own:
    assigned partitions, no group to join, nothing committed."""

    def __init__(self, transport: KafkaTransport, topic: str, group: str) -> None:
        self.transport, self.topic = transport, topic
        self.config = transport.consumer_config(group, **{"enable.partition.eof": True})

    def read(self, until: dict[int, int] | None, skip: set[Where], limit: int | None) -> _Log:
        """Records up to ``until`` (else the end), stopping after ``limit`` that are not in ``skip``."""
        consumer = Consumer(self.config)
        try:
            found = self._bounds(consumer, until)
            todo = {p for p, start in found.start.items() if start < found.ends[p]}
            found.finished = set(found.start) - todo
            consumer.assign([TopicPartition(self.topic, p, found.start[p]) for p in todo])
            kept, deadline = 0, time.monotonic() + READ_TIMEOUT
            while todo and (limit is None or kept < limit):
                if time.monotonic() > deadline:
                    raise TransportError(f"reading {self.topic} did not finish within {READ_TIMEOUT:g}s")
                for record in consumer.consume(500, 0.1):
                    kept += self._take(record, found, todo, skip)
            found.finished |= set(found.start) - todo
            return found
        except KafkaException as exc:
            raise TransportError(f"Kafka at {self.transport.url}: cannot read {self.topic}: {exc}") from None
        finally:
            consumer.close()

    def _bounds(self, consumer: Consumer, until: dict[int, int] | None) -> _Log:
        timeout = self.transport.connect_timeout
        metadata = consumer.list_topics(self.topic, timeout=timeout)
        partitions = [TopicPartition(self.topic, p) for p in sorted(metadata.topics[self.topic].partitions)]
        committed = {tp.partition: tp.offset for tp in consumer.committed(partitions, timeout=timeout)}
        ends = until or {p: e for (_, p), e in end_offsets(self.config, partitions, timeout).items()}
        found = _Log(ends=dict(ends))
        for tp in partitions:
            low, _ = consumer.get_watermark_offsets(tp, timeout=timeout, cached=False)
            found.start[tp.partition] = max(committed[tp.partition], low)  # no position: -1001
            found.ends.setdefault(tp.partition, found.start[tp.partition])
        return found

    def _take(self, record: Any, found: _Log, todo: set[int], skip: set[Where]) -> int:
        """Keep one record (1 if it counts towards the limit); a partition at its end is done."""
        partition, error = record.partition(), record.error()
        if partition not in todo:
            return 0
        if error is not None:
            if error.code() == KafkaError._PARTITION_EOF:
                todo.discard(partition)
            return 0
        offset = record.offset()
        if offset >= found.ends[partition]:
            todo.discard(partition)
            return 0
        found.records.append(record)
        found.read.setdefault(partition, []).append(offset)
        if offset + 1 >= found.ends[partition]:
            todo.discard(partition)
        return 0 if (partition, offset) in skip else 1


def _copy(letter: DeadLetter, topic: str, key: str, extra: dict[str, Any]) -> Record:
    fresh = letter.fresh()
    return to_record(fresh, topic, key_of(fresh, key), extra)


def _letter(record: Any) -> DeadLetter:
    message, _ = from_record(record.headers(), record.value(), record.timestamp()[1])
    return DeadLetter.read(f"{record.partition()}:{record.offset()}", message)


def _when(letter: DeadLetter) -> datetime:
    return letter.dead_at or letter.message.timestamp or datetime.min.replace(tzinfo=UTC)


def _where(key: bytes | None) -> Where:
    partition, _, offset = (key or b"").decode(errors="replace").partition(":")
    return (int(partition), int(offset)) if partition.isdigit() and offset.isdigit() else (-1, -1)
