"""A message read from Kafka, as a consumer settles it: an ack counts it finished, a retry or a
dead letter is a confirmed copy on the queue's retry or dead-letter topic first.

Its offsets are the group member's to commit (:class:`~tidings.transports.kafka.consume.GroupConsumer`):
a settle tells the member, which commits the finished prefix of each partition.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tidings.errors import TransportError
from tidings.retry import backoff
from tidings.transport import ATTEMPTS_HEADER, LAST_ERROR_HEADER, REASON_HEADER, WireMessage, death_headers
from tidings.transports.kafka.records import DUE_HEADER, NOT_BEFORE_HEADER, Record, key_of, to_record
from tidings.transports.kafka.transport import RefusedRecord

if TYPE_CHECKING:
    from tidings.transports.kafka.consume import GroupConsumer

log = logging.getLogger(__name__)

#: a retry's or a dead letter's copy that Kafka does not take is tried again, with backoff, this
#: often and for this long at most (one try can take delivery_timeout: a stop must not wait minutes)
FORWARD_TRIES, FORWARD_BASE, FORWARD_CAP, FORWARD_PATIENCE = 5, 0.5, 4.0, 10.0


@dataclass
class KafkaDelivery:
    message: WireMessage
    attempt: int
    redelivered: bool
    queue: str
    topic: str
    partition: int
    offset: int
    group: GroupConsumer = field(repr=False)
    settled: bool = False
    last_error: str = ""
    epoch: int = 0
    #: a retry that wished to wait longer than its topic (epoch ms): kept if it is handed back
    not_before: int | None = None

    async def ack(self) -> None:
        self._mark_settled()
        self.group.settled(self)

    async def retry(self, delay: float, reason: str = "", *, attempts: int | None = None) -> None:
        tries = self.attempt if attempts is None else attempts
        await self._retry_in(max(delay, 0.0), tries, reason[:1000])

    async def wait_longer(self, not_before: int) -> None:
        """Round the longest retry topic again, uncounted: its handler has not seen it yet."""
        try:
            remaining = (not_before - self.group.transport.now_ms()) / 1000
            # once only: this runs in the consume loop, which polls no more meanwhile
            await self._retry_in(max(remaining, 0.0), self.attempt - 1, self.last_error, tries=1)
        except TransportError as exc:  # it stays where it is; the next reader of it goes on
            log.warning("Kafka consumer of %r: cannot park a retry again (%s)", self.queue, exc)
            if not self.settled:
                await self.release()

    async def _retry_in(self, delay: float, attempts: int, error: str, *, tries: int | None = None) -> None:
        transport = self.group.transport
        target, waits = transport.retry_topic(self.queue, delay)
        now = transport.now_ms()
        # due after the topic's own delay, whatever was wished: then a retry topic's partition is
        # in the order its messages fall due, and none waits behind a later one
        headers = {ATTEMPTS_HEADER: attempts, LAST_ERROR_HEADER: error, DUE_HEADER: now + waits * 1000}
        if delay > waits:
            headers[NOT_BEFORE_HEADER] = now + int(delay * 1000)
        await self._forward(target, headers, tries=tries)

    async def reject(self, reason: str, *, attempts: int | None = None) -> None:
        tries = self.attempt if attempts is None else attempts
        await self._forward(f"{self.queue}.dead", death_headers(reason, tries, self.queue))

    async def release(self) -> None:
        self._mark_settled()
        self.group.hand_back(self)

    async def _forward(self, topic: str, headers: dict[str, Any], *, tries: int | None = None) -> None:
        """Write a confirmed copy to ``topic``, then count the original as finished (trying
        ``tries`` times at most, :data:`FORWARD_TRIES` if None)."""
        if self.settled:
            raise TransportError(f"message {self.message.message_id} was already settled")
        key = key_of(self.message, self.group.transport.key)
        try:
            await self._copy(to_record(self.message, topic, key, headers), tries)
        except RefusedRecord as exc:
            # Kafka takes no copy of it, ever (a record another producer wrote over this
            # transport's max_message_bytes): its partition would stand still behind it. Its dead
            # letter says why and where the record is, without its body.
            dead = to_record(self._without_body(), f"{self.queue}.dead", key, self._too_large(headers, exc))
            try:
                await self._copy(dead, tries)
            except RefusedRecord:
                await self.release()
                raise
        await self.ack()

    def _without_body(self) -> WireMessage:
        return dataclasses.replace(self.message, body=b"", frames=None)

    def _too_large(self, headers: dict[str, Any], refused: RefusedRecord) -> dict[str, Any]:
        """The dead-letter headers of a message no copy of which Kafka takes, from the copy's."""
        wanted = headers.get(REASON_HEADER) or f"could not be retried: {headers.get(LAST_ERROR_HEADER, '')}"
        where = f"{self.topic} partition {self.partition} offset {self.offset}"
        reason = (
            f"Kafka takes no copy of it ({refused}); this dead letter holds no body, the record "
            f"({len(self.message.body):,} bytes) is at {where}. {wanted}"
        )
        return death_headers(reason, int(headers.get(ATTEMPTS_HEADER, self.attempt)), self.queue)

    async def _copy(self, record: Record, tries: int | None) -> None:
        """Produce ``record``, confirmed, trying ``tries`` times at most (:data:`FORWARD_TRIES` if
        None); given up, the message is handed back. A record Kafka refuses for good raises
        RefusedRecord at once, the message still unsettled."""
        transport = self.group.transport
        topic = record.topic
        started, limit = time.monotonic(), FORWARD_TRIES if tries is None else tries
        for attempt in range(1, limit + 1):
            try:
                await transport.forward(record)
                return
            except RefusedRecord:
                raise
            except TransportError as exc:
                patience = time.monotonic() - started < FORWARD_PATIENCE and not self.group.stopped
                if attempt == limit or not patience:
                    # handed back (and handed out again after a backoff): left unsettled, it would
                    # keep its prefetch place, and its partition's commits, for good
                    await self.release()
                    raise
                delay = backoff(attempt, FORWARD_BASE, FORWARD_CAP)
                log.warning(
                    "Kafka consumer of %r: the copy for %s was not taken (%s); trying again in %.1fs",
                    self.queue,
                    topic,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)

    def _mark_settled(self) -> None:
        if self.settled:
            raise TransportError(f"message {self.message.message_id} was already settled")
        self.settled = True
