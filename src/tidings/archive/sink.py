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

from tidings.archive import Archive, Archived, Query
from tidings.archive.fields import FieldsFinder
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
        await self.connect()
        assert self.archive is not None
        results: list[SendResult] = []
        batch: list[tuple[int, Archived]] = []  # (its place in results, the event)
        for message in messages:
            try:
                batch.append((len(results), self.finder(self.format.decode(message))))
                results.append(DELIVERED)
            except TidingsError as exc:  # cannot be read back: never storable, a dead letter
                results.append(SendResult(Outcome.REFUSED, f"archive cannot read it: {exc}"))
        try:
            await asyncio.to_thread(self.archive.ingest, [item for _, item in batch])
        except StorageError as exc:
            await self._one_by_one(batch, results, exc)
        await self._purge_when_due()
        return results

    async def _one_by_one(
        self, batch: list[tuple[int, Archived]], results: list[SendResult], failed: StorageError
    ) -> None:
        """A batch the store refused: each event alone. One the store refuses while it answers
        a search can never be stored (PostgreSQL holds no NUL character in text): a dead letter
        with the reason, instead of holding the archive's cursor for ever. A store that does not
        answer is away: the batch is sent again when it is back."""
        assert self.archive is not None
        refused: list[tuple[int, StorageError]] = []
        for place, item in batch:
            try:
                await asyncio.to_thread(self.archive.ingest, [item])
            except StorageError as exc:
                refused.append((place, exc))
        if refused and not await self._answers():
            raise TransportError(str(failed)) from None  # the cursor stays
        for place, exc in refused:
            results[place] = SendResult(Outcome.REFUSED, f"the archive cannot store it: {exc}")

    async def _answers(self) -> bool:
        assert self.archive is not None
        try:
            await asyncio.to_thread(self.archive.search, Query(), limit=1)
        except StorageError:
            return False
        return True

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
