"""Archiving what ``[archive] from`` names: the outbox (through the dispatcher) or broker queues.

From a broker, each source is a durable queue of the archive's own, bound by its patterns.
Deliveries are gathered into batches (``batch_size`` at most, or what arrived within
``GATHER`` seconds), written in one transaction, and acked only after that commit: a crash in
between delivers them again, and the archive, idempotent on event ids, stores them once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from tidings.activity import Activity
from tidings.archive import Archive, Archived
from tidings.archive.fields import FieldsFinder
from tidings.archive.sink import ArchiveSink
from tidings.archive.stores import open_archive
from tidings.archive.storing import read_message, store_batch
from tidings.bus import Bus
from tidings.config import ARCHIVE_CONNECTOR, ArchiveSection, ArchiveSource
from tidings.errors import ConfigError, TidingsError, TransportError
from tidings.format import load_format, wire_pattern
from tidings.retry import backoff
from tidings.transport import Binding, Delivery, ExchangeSpec, QueueSpec, Topology

log = logging.getLogger(__name__)
#: seconds a batch waits for more deliveries after its first
GATHER = 0.05
#: seconds between retention purges, and between activity lines
PURGE_EVERY, REPORT_EVERY = 60.0, 1.0


@dataclass(slots=True)
class Counts:
    archived: int = 0
    duplicates: int = 0
    rejected: int = 0


def section_of(bus: Bus) -> ArchiveSection:
    if bus.config.archive is None:
        raise ConfigError("no [archive] section in the config: add one (see docs/archive.md)")
    return bus.config.archive


async def run_archive(bus: Bus, stop: asyncio.Event, *, once: bool = False) -> Counts:
    """Archive until ``stop`` (``once``: what is there now); how many events were archived."""
    section = section_of(bus)
    if section.from_outbox():
        return await _from_outbox(bus, stop, once=once)
    return await run_sources(bus, stop, once=once)


async def _from_outbox(bus: Bus, stop: asyncio.Event, *, once: bool) -> Counts:
    dispatcher = bus.dispatcher([ARCHIVE_CONNECTOR])
    if once:
        await dispatcher.deliver_due()
    else:
        await dispatcher.run(stop)
    connector = dispatcher.connectors[0]
    sink = connector.transport
    assert isinstance(sink, ArchiveSink)
    return Counts(archived=sink.new, duplicates=sink.already_there, rejected=connector.stats.dead)


async def run_sources(bus: Bus, stop: asyncio.Event, *, once: bool = False) -> Counts:
    """Every broker source of ``[archive] from``, into one archive, with its retention."""
    section = section_of(bus)
    sources = [] if section.from_outbox() else section.sources
    archive = await asyncio.to_thread(open_archive, bus.config)
    counts = Counts()
    try:
        ingests = [SourceIngest(bus, source, archive, section, counts) for source in sources]
        tasks = [asyncio.create_task(i.run(stop, once=once)) for i in ingests]
        if not once:
            tasks.append(asyncio.create_task(_purge_loop(archive, section.retention, stop)))
        try:
            await asyncio.gather(*tasks[: len(ingests)])
        finally:
            for task in tasks:  # one ended (stopped, or failed): the others must not outlive the call
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        await asyncio.to_thread(archive.close)
    return counts


async def _purge_loop(archive: Archive, retention: float, stop: asyncio.Event) -> None:
    while retention and not await _stopped_within(stop, PURGE_EVERY):
        cutoff = datetime.now(UTC) - timedelta(seconds=retention)
        purged = await asyncio.to_thread(archive.purge, cutoff)
        if purged:
            log.info(
                "archive: purged %d event(s) older than %s", purged, cutoff.isoformat(timespec="seconds")
            )


class SourceIngest:
    """One broker queue into the archive: batched writes, acks after the commit."""

    def __init__(
        self, bus: Bus, source: ArchiveSource, archive: Archive, section: ArchiveSection, counts: Counts
    ) -> None:
        self.source, self.archive, self.counts = source, archive, counts
        self.batch_size = section.batch_size
        self.transport = bus.make_transport(source.transport)
        self.format = load_format(source.format, source.format_options, "[archive] from format_options")
        self.finder = FieldsFinder(section.fields, fixed=self.format)
        self.activity = Activity(
            f"archive {source.queue}",
            lambda: {
                "archived": counts.archived,
                "duplicates": counts.duplicates,
                "rejected": counts.rejected,
            },
            latency_label="batches stored in",
        )

    def queue(self) -> QueueSpec:
        s = self.source
        return QueueSpec(s.queue, [Binding(s.exchange, wire_pattern(self.format, p)) for p in s.bindings])

    async def run(self, stop: asyncio.Event, *, once: bool = False) -> None:
        failures = 0
        report = asyncio.create_task(self.activity.report_every(REPORT_EVERY, stop))
        try:
            while not stop.is_set():
                try:
                    await self._consume(stop, once=once)
                    return
                except TransportError as exc:
                    failures += 1
                    log.warning("archive: source %s is down: %s; retrying", self.source.queue, exc)
                    await self.transport.close()
                    await _stopped_within(stop, backoff(failures, 0.5, 30.0))
        finally:
            report.cancel()
            await asyncio.gather(report, return_exceptions=True)
            self.activity.flush()
            await self.transport.close()

    async def _consume(self, stop: asyncio.Event, *, once: bool) -> None:
        await self.transport.connect()
        queue = self.queue()
        await self.transport.declare(Topology([ExchangeSpec(self.source.exchange)], [queue]))
        waiting: asyncio.Queue[Delivery] = asyncio.Queue()
        reader = asyncio.create_task(self._read(queue, waiting))
        idle_since = time.monotonic()
        try:
            while not stop.is_set():
                batch = await self._gather(waiting, stop, reader)
                if batch:
                    await self._store(batch)
                    idle_since = time.monotonic()
                elif once and time.monotonic() - idle_since > 1.0:
                    return  # --once: nothing came for a second, the queue is drained
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)

    async def _read(self, queue: QueueSpec, waiting: asyncio.Queue[Delivery]) -> None:
        async for delivery in self.transport.consume(
            queue, prefetch=max(self.source.prefetch, self.batch_size)
        ):
            waiting.put_nowait(delivery)

    async def _gather(
        self, waiting: asyncio.Queue[Delivery], stop: asyncio.Event, reader: asyncio.Task[None]
    ) -> list[Delivery]:
        if reader.done() and waiting.empty():
            reader.result()  # a consume that failed raises its TransportError here
            raise TransportError("the broker ended the consume")
        try:
            first = await asyncio.wait_for(waiting.get(), timeout=0.2)
        except TimeoutError:
            return []
        batch = [first]
        deadline = time.monotonic() + GATHER
        while len(batch) < self.batch_size and time.monotonic() < deadline and not stop.is_set():
            while not waiting.empty() and len(batch) < self.batch_size:
                batch.append(waiting.get_nowait())
            if len(batch) < self.batch_size:
                await asyncio.sleep(0.005)
        return batch

    async def _store(self, batch: list[Delivery]) -> None:
        started = time.monotonic()
        readable: list[tuple[Delivery, Archived]] = []
        for delivery in batch:
            try:
                readable.append((delivery, read_message(self.format, self.finder, delivery.message)))
            except TidingsError as exc:  # never storable: the source queue's dead letters keep it
                self.counts.rejected += 1
                await delivery.reject(f"the archive cannot read it: {exc}")
        try:
            stored = await store_batch(self.archive, [archived for _, archived in readable])
        except TransportError:  # the store is away: back on the queue, untouched, for the next try
            for delivery, _ in readable:
                await delivery.release()
            raise
        for place, (delivery, _) in enumerate(readable):  # settled only now that the archive committed
            await self._settle(delivery, stored.refused.get(place))
        self.counts.archived += stored.new
        self.counts.duplicates += len(readable) - len(stored.refused) - stored.new
        self.activity.note(time.monotonic() - started)

    async def _settle(self, delivery: Delivery, refused: str | None) -> None:
        """Ack a stored event; reject one the store can never hold, to the queue's dead letters."""
        if refused is None:
            await delivery.ack()
            return
        self.counts.rejected += 1
        log.warning(
            "archive: source %s: dead-lettering message %s: %s",
            self.source.queue,
            delivery.message.message_id,
            refused,
        )
        await delivery.reject(refused)


async def _stopped_within(stop: asyncio.Event, seconds: float) -> bool:
    waiter = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({waiter}, timeout=seconds)
    finally:
        waiter.cancel()
    return stop.is_set()
