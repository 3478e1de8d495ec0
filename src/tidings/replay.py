"""Replays: read past events (a JSON-lines file, the outbox, the archive), choose, send again.

Two ways. A transform (``same``, CKI's ``cki-needs-triage``) makes *new* events (new ids) that
are published through the outbox, so every connector delivers them with the usual guarantees.
Or, from the archive, :func:`send_again` sends the *same* events — their ids kept, so an inbox
drops what its consumer already handled, and a header saying when they were replayed — straight
to the connectors (the outbox stores an id once, so it could not take them again). Sources:

* a JSON-lines file whose lines are tidings events (``Event.to_json``), as
  ``tidings tail --json`` writes them;
* the outbox's own history (what it still holds, see ``[outbox] retention``);
* the archive (:func:`from_archive`: by ids, or everything a query finds).

Transforms turn a stream of past events into the events to send, e.g.
:func:`tidings.formats.cki.needs_triage` for CKI's "re-triage the last two weeks".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from tidings.archive import Archive, Query
from tidings.bus import Bus
from tidings.connector import Connector
from tidings.errors import ConfigError, InvalidEvent, NotFound
from tidings.event import REPLAY_HEADER, Event, the_events_own, utcnow
from tidings.plugins import Registry
from tidings.topics import topic_matches
from tidings.transport import Outcome

BATCH = 500
#: transforms by name: ``same`` here, more from the ``tidings.transforms`` entry points (the CKI
#: DataWarehouse's ``cki-needs-triage`` comes with its format's package)
TRANSFORMS = Registry("tidings.transforms", {"same": "tidings.replay:same_again"}, "replay transform")


#: room for an event's envelope (id, topic, headers) around its body on a JSON line
ENVELOPE_ROOM = 64 * 1024


def line_limit(bus: Bus) -> int:
    """The longest JSON line worth reading for this bus: its largest body, twice over (JSON escapes
    can double a body's bytes), and the envelope. A longer line is refused before it is read whole."""
    return 2 * bus.config.bus.max_body_bytes + ENVELOPE_ROOM


def read_jsonl(path: Path, max_line: int) -> Iterator[Event]:
    """Events from a JSON-lines file; a bad line, or one longer than ``max_line`` bytes, is an
    error naming its number."""
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise InvalidEvent(f"cannot read {str(path)!r}: {exc.strerror}") from None
    with handle:
        number = 0
        while line := handle.readline(max_line + 1):
            number += 1
            if len(line) > max_line:
                raise InvalidEvent(
                    f"{path.name} line {number} is longer than {max_line} bytes "
                    "(twice [bus] max_body_bytes and the envelope)"
                )
            if not line.strip():
                continue
            try:
                yield Event.from_json(line)
            except InvalidEvent as exc:
                raise InvalidEvent(f"{path.name} line {number}: {exc}") from None


def window(events: Iterable[Event], *, since: datetime, pattern: str = "#") -> Iterator[Event]:
    for event in events:
        if event.time >= since and topic_matches(pattern, event.topic):
            yield event


def same_again(events: Iterable[Event]) -> Iterator[Event]:
    """The identity transform: each event again, with a new id and time, and without the headers
    a transport put on it (a dead letter's attempts would count against the new event)."""
    for event in events:
        yield Event.create(
            event.topic,
            event.body,
            source=event.source,
            type=event.type,
            headers=the_events_own(event.headers),
            visibility=event.visibility,
        )


def replay(
    bus: Bus, events: Iterable[Event], *, dry_run: bool = False, progress: Callable[[int], None] | None = None
) -> int:
    """Publish events in batches (each batch one commit); returns how many."""
    batch: list[Event] = []
    count = 0
    for event in events:
        batch.append(event)
        if len(batch) >= BATCH:
            count += _flush(bus, batch, dry_run, progress)
    return count + _flush(bus, batch, dry_run, progress)


def _flush(bus: Bus, batch: list[Event], dry_run: bool, progress: Callable[[int], None] | None) -> int:
    if not batch:
        return 0
    if dry_run:
        for event in batch:
            bus.check(event)
    else:
        bus.publish_many(batch)
    done = len(batch)
    batch.clear()
    if progress is not None:
        progress(done)
    return done


def since_days(days: float) -> datetime:
    return utcnow() - timedelta(days=days)


# -- from the archive, keeping ids ---------------------------------------------------------------


def from_archive(archive: Archive, query: Query, ids: Sequence[str] = ()) -> Iterator[Event]:
    """The archived events with these ids, or every one ``query`` finds, oldest first."""
    if ids:
        for event_id in ids:
            found = archive.get(event_id, include_private=True)
            if found is None:
                raise NotFound(f"no event {event_id!r} in the archive")
            yield found.event
        return
    cursor: str | None = None
    while True:
        page = archive.search(query, limit=BATCH, cursor=cursor, order="asc")
        yield from (archived.event for archived in page.items)
        if page.next_cursor is None:
            return
        cursor = page.next_cursor


def marked(event: Event, at: datetime | None = None) -> Event:
    """``event`` as a replay: the same id (an inbox drops what it already handled), one header more."""
    moment = (at or utcnow()).isoformat()
    return dataclasses.replace(event, headers={**the_events_own(event.headers), REPLAY_HEADER: moment})


async def send_again(
    bus: Bus,
    events: Iterable[Event],
    connectors: Sequence[str] | None = None,
    *,
    progress: Callable[[int], None] | None = None,
) -> dict[str, tuple[int, int]]:
    """Send ``events`` straight to connectors (not through the outbox: its ids are stored once),
    each where its topics take it; (delivered, not delivered) per connector."""
    chosen = bus.connectors(connectors)
    counts = {c.name: (0, 0) for c in chosen}
    for transport in {id(c.transport): c.transport for c in chosen}.values():
        await transport.connect()
    try:
        batch: list[Event] = []
        for event in events:
            batch.append(event)
            if len(batch) >= BATCH:
                await _send_batch(chosen, batch, counts, progress)
        await _send_batch(chosen, batch, counts, progress)
    finally:
        for transport in {id(c.transport): c.transport for c in chosen}.values():
            await transport.close()
    return counts


async def _send_batch(
    connectors: Sequence[Connector],
    batch: list[Event],
    counts: dict[str, tuple[int, int]],
    progress: Callable[[int], None] | None,
) -> None:
    for connector in connectors:
        wanted = [event for event in batch if connector.takes_event(event)]
        if not wanted:
            continue
        results = await connector.transport.send(
            connector.config.exchange, [connector.format.encode(event) for event in wanted]
        )
        delivered = sum(result.outcome is Outcome.DELIVERED for result in results)
        sent, failed = counts[connector.name]
        counts[connector.name] = (sent + delivered, failed + len(wanted) - delivered)
    if progress is not None:
        progress(len(batch))
    batch.clear()


async def send_to_queue(
    bus: Bus,
    events: Iterable[Event],
    transport_name: str,
    queue: str,
    format_name: str = "tidings",
    *,
    format_options: dict[str, Any] | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[int, int]:
    """Put ``events`` on one consumer's queue alone, in its format (name and options);
    (delivered, not delivered).

    Only a transport that can address one queue offers ``enqueue`` (the embedded broker and
    RabbitMQ); on Kafka a queue is its consumer group's reading of shared topics.
    """
    transport = bus.make_transport(transport_name)
    enqueue = getattr(transport, "enqueue", None)  # optional in the transport protocol
    if enqueue is None:
        raise ConfigError(
            f"the {transport.kind} transport cannot put events on one queue; replay --to a connector"
        )
    fmt = bus.make_format(format_name, format_options)
    delivered = failed = 0
    await transport.connect()
    try:
        batch = list(events)
        for start in range(0, len(batch), BATCH):
            chunk = batch[start : start + BATCH]
            results = await enqueue(queue, [fmt.encode(event) for event in chunk])
            ok = sum(result.outcome is Outcome.DELIVERED for result in results)
            delivered, failed = delivered + ok, failed + len(chunk) - ok
            if progress is not None:
                progress(len(chunk))
    finally:
        await transport.close()
    return delivered, failed
