"""The live stream: server-sent events read from the archive, in seq order, never skipping one.

A stream does not keep a queue of its own that could overflow: it remembers the seq of the
last event it sent and asks the archive for what came after (``Archive.since``), a batch at a
time. An event is therefore sent once it is archived, exactly once, in order, however fast
events come; a slow client only falls behind. ``Last-Event-ID`` (which a browser sends when it
reconnects) is that seq, so a stream resumes where it stopped. Streams look a few times a
second (:data:`POLL`); :meth:`Live.wake` makes them look at once (:meth:`Live.close` uses it).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator

from starlette.concurrency import run_in_threadpool

from tidings.archive import Archive, Archived, Query
from tidings.errors import StorageError
from tidings.event import dumps
from tidings.web.query import PAGE_BYTES, budgeted_page, envelope

log = logging.getLogger(__name__)
#: seconds between looks at the archive when nothing woke the stream
POLL = 0.2
#: events read (and sent) at a time, at most: a batch also ends at PAGE_BYTES of bodies
BATCH = 500
#: seconds of silence before a comment line keeps proxies from closing the connection
KEEPALIVE = 15.0
#: what the browser waits before reconnecting, in milliseconds
RECONNECT_MS = 1000


class Live:
    """Wakes the streams of one app; :meth:`wake` may be called from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        #: the server is stopping: streams end, so that open connections do not hold the exit
        self.closed = False

    def close(self) -> None:
        self.closed = True
        self.wake()

    def wake(self) -> None:
        with self._lock:
            waiting = list(self._waiting)
        for loop, event in waiting:
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # that loop closed: its stream is gone
                pass

    async def wait(self, timeout: float) -> None:
        entry = (asyncio.get_running_loop(), asyncio.Event())
        with self._lock:
            self._waiting.add(entry)
        try:
            await asyncio.wait_for(entry[1].wait(), timeout)
        except TimeoutError:
            pass
        finally:
            with self._lock:
                self._waiting.discard(entry)


def frame(item: Archived) -> bytes:
    return b"id: %d\ndata: %s\n\n" % (item.seq, dumps(envelope(item)))


async def backlog(archive: Archive, query: Query, count: int) -> tuple[int, list[bytes]]:
    """The frames of the newest ``count`` matching events (as many as PAGE_BYTES holds) in seq
    order, and the seq the tail starts after.

    The seq is read first: an event archived meanwhile is left to the tail, not sent twice.
    """
    start = await run_in_threadpool(archive.last_seq)
    if count <= 0:
        return start, []
    newest, _, _ = await budgeted_page(archive, query, frame, limit=count)
    in_order = sorted((item.seq, data) for item, data in newest if item.seq <= start)
    return start, [data for _, data in in_order]


async def sse(
    archive: Archive, live: Live, query: Query, after: int | None, count: int
) -> AsyncIterator[bytes]:
    """The stream's bytes: the backlog (if no resume point), then everything after, forever.
    A store that cannot answer ends the stream: the browser comes back with its Last-Event-ID."""
    try:
        async for chunk in _frames(archive, live, query, after, count):
            yield chunk
    except StorageError as exc:
        log.warning("web: a /stream ended: %s", exc)


async def _frames(
    archive: Archive, live: Live, query: Query, after: int | None, count: int
) -> AsyncIterator[bytes]:
    yield b"retry: %d\n\n" % RECONNECT_MS
    if after is None:
        after, first = await backlog(archive, query, count)
        if first:
            yield b"".join(first)
    else:
        # a position past the newest event is another archive's (this one made anew since the
        # page last saw it): from now on, rather than nothing until its seqs catch up
        after = min(after, await run_in_threadpool(archive.last_seq))
    quiet_since = time.monotonic()
    while not live.closed:
        # read before the look: every event up to it was archived when the look began
        head = await run_in_threadpool(archive.last_seq)
        batch = await run_in_threadpool(
            lambda seq=after: archive.since(seq, query, limit=BATCH, max_bytes=PAGE_BYTES)
        )
        if batch:
            yield b"".join(frame(item) for item in batch)
            after, quiet_since = batch[-1].seq, time.monotonic()
            continue  # more may follow at once (a batch ends by count or by bytes)
        # nothing matched up to head: the next look starts there, not where the last match was
        # (a filter that rarely matches would scan ever more events each time)
        after = max(after, head)
        if time.monotonic() - quiet_since > KEEPALIVE:
            yield b": keepalive\n\n"
            quiet_since = time.monotonic()
        await live.wait(POLL)
