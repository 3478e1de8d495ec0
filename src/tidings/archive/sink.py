"""The archive as the destination of the dispatcher's ``archive`` connector (``from = "outbox"``).

Why a connector and not a reader of its own: the dispatcher already gives a connector what the
archive needs — a cursor over the outbox that moves only once a batch is committed (here: in the
archive), retries with backoff while the archive cannot be written, dead letters for what can
never be stored, ``tidings backlog list`` — and the outbox's purge waits for every connector's
cursor, so no event leaves the outbox before the archive has it. The sink has the transport's
shape, but is no broker and no plug-in: the Bus builds it for that one connector.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta

from tidings.archive import Archive, Archived
from tidings.archive.fields import FieldsFinder
from tidings.archive.storing import read_message, store_batch
from tidings.config import Config
from tidings.errors import StorageError, TidingsError, TransportError
from tidings.format import load_format
from tidings.transport import DELIVERED, Delivery, Outcome, QueueSpec, SendResult, Topology, WireMessage

log = logging.getLogger(__name__)
#: seconds between two retention purges
PURGE_EVERY = 60.0


class ArchiveSink:
    kind = "archive"
    acknowledged = True

    def __init__(self, config: Config) -> None:
        self.config = config
        section = config.archive
        self.retention = section.retention if section else 0.0
        self.finder = FieldsFinder(section.fields if section else {})
        # the connector's format: the dispatcher encodes with it, the sink reads the event back
        self.format = load_format("tidings")
        self.archive: Archive | None = None
        self._purged_at = 0.0
        #: events stored, and those the archive had already (sent again after a crash between
        #: the archive's commit and the outbox cursor's)
        self.new = self.already_there = 0
        self._storing = asyncio.Lock()

    async def connect(self) -> None:
        if self.archive is None:
            from tidings.archive.stores import open_archive

            try:
                self.archive = await asyncio.to_thread(open_archive, self.config)
            except StorageError as exc:  # the connector pauses and retries, as for a broker that is down
                raise TransportError(str(exc)) from None

    async def close(self) -> None:
        if self.archive is not None:
            archive, self.archive = self.archive, None
            await asyncio.to_thread(archive.close)

    async def declare(self, topology: Topology) -> None:
        """Nothing to declare: the archive's tables are made when it is opened."""

    async def send(self, exchange: str, messages: Sequence[WireMessage]) -> list[SendResult]:
        # batches in flight (the dispatcher pipelines them) are stored one after the other in the
        # order they were sent, so that the archive's seqs, and its live stream, follow the outbox
        # (asyncio's lock wakes its waiters first come, first served)
        async with self._storing:
            return await self._store(messages)

    async def _store(self, messages: Sequence[WireMessage]) -> list[SendResult]:
        await self.connect()
        assert self.archive is not None
        results: list[SendResult] = []
        places: list[int] = []  # each readable event's place in results
        batch: list[Archived] = []
        for message in messages:
            try:
                batch.append(read_message(self.format, self.finder, message))
            except TidingsError as exc:  # cannot be read back: never storable, a dead letter
                results.append(SendResult(Outcome.REFUSED, f"archive cannot read it: {exc}"))
            else:
                places.append(len(results))
                results.append(DELIVERED)
        stored = await store_batch(self.archive, batch)  # a store that is away: the cursor stays
        for index, reason in stored.refused.items():
            results[places[index]] = SendResult(Outcome.REFUSED, reason)
        self.new += stored.new
        self.already_there += len(batch) - len(stored.refused) - stored.new
        await self._purge_when_due()
        return results

    async def _purge_when_due(self) -> None:
        if not self.retention or time.monotonic() - self._purged_at < PURGE_EVERY:
            return
        self._purged_at = time.monotonic()
        assert self.archive is not None
        cutoff = datetime.now(UTC) - timedelta(seconds=self.retention)
        purged = await asyncio.to_thread(self.archive.purge, cutoff)
        if purged:
            log.info(
                "archive: purged %d event(s) older than %s", purged, cutoff.isoformat(timespec="seconds")
            )

    def consume(self, queue: QueueSpec, *, prefetch: int) -> AsyncIterator[Delivery]:
        raise TransportError("the archive is no queue: read it with tidings.archive's search")
