"""Calls that arrive while a write runs are written together by the next one (asyncio side).

The asyncio twin of :mod:`tidings.groupcommit`: coroutines submit items and await
their results; one writer task at a time takes everything waiting, runs one write
(in a thread, through ``run``) and answers each caller. The embedded broker's sends
and settles, the consumer's handling journal and ``Bus.apublish`` all batch this way:
what queues behind one commit goes in the next, one commit (and one fsync) for all.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class AsyncBatcher(Generic[Item, Result]):
    """Batches ``submit(item)`` calls into ``write(items) -> results`` (one result per item).

    ``run(write, items)`` runs the write, usually in a thread of the caller's; ``after()`` runs
    on the loop once a batch is written (a wake-up). With ``gather_turns`` the first batch waits
    that many turns of the loop for callers arriving together.
    """

    def __init__(
        self,
        run: Callable[..., Awaitable[list[Result]]],
        write: Callable[[list[Item]], list[Result]],
        after: Callable[[], None] = lambda: None,
        *,
        gather_turns: int = 0,
    ) -> None:
        self._run, self._write, self._after = run, write, after
        self._gather_turns = gather_turns
        self._waiting: list[tuple[Item, asyncio.Future[Result]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def submit(self, item: Item) -> Result:
        done: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_waiting())
        return await done

    async def idle(self) -> None:
        """Return once everything submitted so far is written (or failed)."""
        if self._writer is not None:
            await self._writer

    async def _write_waiting(self) -> None:
        for _ in range(self._gather_turns):
            await asyncio.sleep(0)
        while self._waiting:
            batch, self._waiting = self._waiting, []
            try:
                results = await self._run(self._write, [item for item, _ in batch])
            except Exception as exc:
                for _, done in batch:
                    if not done.done():
                        done.set_exception(exc)
                continue
            for (_, done), result in zip(batch, results, strict=True):
                if not done.done():
                    done.set_result(result)
            self._after()
