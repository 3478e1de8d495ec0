"""The consuming side of the embedded broker: leases, their renewal, and settles.

Consumers take messages with a lease (a visibility timeout): a leased message is
invisible until it is acked, retried or rejected, or until the lease runs out because
its consumer died — then it comes back, marked ``redelivered``. Leases are renewed
while handlers run; settles of handlers that finish together share one commit.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from tidings.batching import AsyncBatcher
from tidings.doorbell import Doorbell
from tidings.errors import TransportError
from tidings.transport import QueueSpec, WireMessage, death_headers
from tidings.transports.embedded import store


class BrokerFile(Protocol):
    """What consuming needs of the broker (:class:`~.transport.EmbeddedTransport`)."""

    lease: float
    poll: float
    token: str
    doorbell: Doorbell

    @property
    def connected(self) -> bool: ...

    async def commit(self, work: Callable[[sqlite3.Connection], Any], *, durable: bool = True) -> Any: ...


@dataclass(slots=True)
class EmbeddedDelivery:
    """A leased message; settling it is batched with its neighbours into one commit."""

    message: WireMessage
    attempt: int
    redelivered: bool
    row_id: int
    queue: str
    _settle: Callable[[str, EmbeddedDelivery, float, str, int], Any] = field(repr=False)
    settled: bool = False

    async def ack(self) -> None:
        await self._settle("ack", self, 0.0, "", self.attempt)

    async def retry(self, delay: float, reason: str = "", *, attempts: int | None = None) -> None:
        await self._settle("retry", self, delay, reason, self.attempt if attempts is None else attempts)

    async def reject(self, reason: str, *, attempts: int | None = None) -> None:
        await self._settle("reject", self, 0.0, reason, self.attempt if attempts is None else attempts)

    async def release(self) -> None:
        await self._settle("release", self, 0.0, "", self.attempt)


#: (action, delivery, delay, reason, attempts made): one settle waiting for its commit
Settle = tuple[str, EmbeddedDelivery, float, str, int]


class Consuming:
    """The leases and settles of one embedded transport (it makes one of these)."""

    def __init__(self, broker: BrokerFile) -> None:
        self.broker = broker
        #: a settle or a send here, a ring of the doorbell there: look for messages now
        self.wake = asyncio.Event()
        # handlers that finish in the same turn of the loop settle in the same commit
        self._settles: AsyncBatcher[Settle, None] = AsyncBatcher(
            self._commit_settles, self._apply, self.wake.set, gather_turns=2
        )

    async def idle(self) -> None:
        await self._settles.idle()

    async def stream(self, queue: QueueSpec, prefetch: int) -> AsyncIterator[EmbeddedDelivery]:
        """Lease up to ``prefetch`` messages at a time; extend leases while they are held.

        While the queue has more than a lease took, the next lease is taken as the last
        batch is being handled, so a busy consumer does not wait for the broker between
        batches; a consumer that has caught up waits for a send instead.
        """
        held: dict[int, EmbeddedDelivery] = {}
        self.broker.doorbell.listen(self.wake.set)  # a send in any process wakes this stream
        renewer = asyncio.create_task(self._renew_leases(held))
        ahead: asyncio.Future[list[store.Leased]] | None = None
        try:
            while True:
                if ahead is None:
                    ahead, wanted = self._lease_ahead(queue.name, held, prefetch)
                    if ahead is None:  # full: wait for handlers to settle some
                        await self._nap()
                        continue
                batch = await ahead
                ahead = None
                if not batch:
                    await self._nap()
                    continue
                deliveries = [self._delivery(row, queue.name) for row in batch]
                held.update((d.row_id, d) for d in deliveries)
                if len(batch) == wanted:  # there may be more waiting: lease it meanwhile
                    ahead, wanted = self._lease_ahead(queue.name, held, prefetch)
                for delivery in deliveries:
                    yield delivery
        finally:
            renewer.cancel()
            if ahead is not None:  # a lease under way: hand back what it takes
                ahead.cancel()
                taken = (await asyncio.gather(ahead, return_exceptions=True))[0]
                if isinstance(taken, list):  # it had finished: those never reached the consumer
                    held.update((d.row_id, d) for d in (self._delivery(row, queue.name) for row in taken))
            unsettled = [d for d in held.values() if not d.settled]
            if unsettled and self.broker.connected:  # hand them back at once, not at lease expiry
                await asyncio.gather(*(d.release() for d in unsettled), return_exceptions=True)

    def _lease_ahead(
        self, queue: str, held: dict[int, EmbeddedDelivery], prefetch: int
    ) -> tuple[asyncio.Future[list[store.Leased]] | None, int]:
        """Start leasing as many as there is room for (and say how many); None if too little room."""
        self.wake.clear()  # before looking: a wake-up during the lease is not lost
        for row_id in [r for r, d in held.items() if d.settled]:
            del held[row_id]
        room = prefetch - len(held)
        # refill in chunks, not one message per settle: each lease is a transaction
        if held and room < max(1, prefetch // 4):
            return None, 0
        return asyncio.ensure_future(self._lease_safely(queue, room)), room

    def _delivery(self, row: store.Leased, queue: str) -> EmbeddedDelivery:
        row_id, tries, leases, _, meta, body = row
        return EmbeddedDelivery(
            store.decode_meta(meta, body), tries + 1, leases > 1, row_id, queue, self._settle
        )

    async def _nap(self) -> None:
        """Wait for a settle here or a send anywhere (the doorbell), or ``poll`` seconds at most."""
        # asyncio.wait, not wait_for: on 3.11 wait_for can swallow a cancellation that
        # races with the wake-up, and a consumer being shut down would then never stop
        waiter = asyncio.ensure_future(self.wake.wait())
        try:
            await asyncio.wait({waiter}, timeout=self.broker.poll)
        finally:
            waiter.cancel()

    async def _lease_safely(self, queue: str, limit: int) -> list[store.Leased]:
        """Lease in the worker thread; if we are cancelled meanwhile, hand back what it took.

        The thread cannot be stopped half-way: without this, messages leased by a
        consumer that is shutting down would stay invisible until their lease ran out.
        """
        job = asyncio.ensure_future(self._lease(queue, limit))
        try:
            return await asyncio.shield(job)
        except asyncio.CancelledError:
            taken = await job
            ids = [(time.time(), row_id, self.broker.token) for row_id, *_ in taken]
            if ids:
                await self.broker.commit(lambda db: db.executemany(store.RELEASE, ids), durable=False)
            raise

    async def _lease(self, queue: str, limit: int) -> list[store.Leased]:
        now, broker = time.time(), self.broker
        taken: list[store.Leased] = await broker.commit(
            lambda db: store.lease(db, queue, broker.token, now, now + broker.lease, limit), durable=False
        )
        return taken

    async def _renew_leases(self, held: dict[int, EmbeddedDelivery]) -> None:
        while True:
            await asyncio.sleep(self.broker.lease / 3)
            ids = [
                (time.time() + self.broker.lease, row_id, self.broker.token)
                for row_id, d in held.items()
                if not d.settled
            ]
            if not ids:
                continue
            try:
                await self.broker.commit(lambda db, ids=ids: db.executemany(store.RENEW, ids), durable=False)
            except TransportError:
                return  # closed under us: the leases run out and the messages come back

    async def _settle(
        self, action: str, delivery: EmbeddedDelivery, delay: float, reason: str, attempts: int
    ) -> None:
        if delivery.settled:
            raise TransportError(f"message {delivery.message.message_id} was already settled")
        delivery.settled = True
        await self._settles.submit((action, delivery, delay, reason, attempts))

    async def _commit_settles(
        self, apply: Callable[[sqlite3.Connection, list[Settle]], None], batch: list[Settle]
    ) -> list[None]:
        await self.broker.commit(lambda db: apply(db, batch), durable=False)
        return [None] * len(batch)

    def _apply(self, db: sqlite3.Connection, batch: list[Settle]) -> None:
        now = time.time()
        store.remove(db, [d.row_id for action, d, *_ in batch if action == "ack"], self.broker.token)
        for action, delivery, delay, reason, attempts in batch:
            if action == "release":
                db.execute(store.RELEASE, (now, delivery.row_id, self.broker.token))
            elif action == "retry":
                # to the back of the queue, after the delay, with the tries made so far
                store.requeue(db, delivery.row_id, self.broker.token, now + max(delay, 0.0), attempts)
            elif action == "reject":
                self._dead_letter(db, delivery, reason, attempts, now)

    def _dead_letter(
        self, db: sqlite3.Connection, delivery: EmbeddedDelivery, reason: str, attempts: int, now: float
    ) -> None:
        message = delivery.message
        message.headers = {**message.headers, **death_headers(reason, attempts, delivery.queue)}
        meta = store.encode_meta(message, message.exchange or "")
        store.dead_letter(
            db, delivery.row_id, self.broker.token, f"{delivery.queue}.dead", now, meta, message.body
        )
