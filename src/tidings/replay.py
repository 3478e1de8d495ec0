"""Replays: read past events (a JSON-lines file or the outbox), choose, transform, publish again.

A replay publishes *new* events (new ids) through the outbox, so every
connector delivers them with the usual guarantees. Sources:

* a JSON-lines file whose lines are tidings events (``Event.to_json``), as
  ``tidings tail --json`` and the archive write them;
* the outbox's own history (what it still holds, see ``[outbox] retention``).

Transforms turn a stream of past events into the events to send, e.g.
:func:`tidings.formats.cki.needs_triage` for CKI's "re-triage the last two weeks".
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta
from pathlib import Path

from tidings.bus import Bus
from tidings.errors import InvalidEvent
from tidings.event import Event, utcnow
from tidings.plugins import Registry
from tidings.topics import topic_matches

BATCH = 500
#: transforms by name: ``same`` here, more from the ``tidings.transforms`` entry points (the CKI
#: DataWarehouse's ``cki-needs-triage`` comes with its format's package)
TRANSFORMS = Registry("tidings.transforms", {"same": "tidings.replay:same_again"}, "replay transform")


def read_jsonl(path: Path) -> Iterator[Event]:
    """Events from a JSON-lines file; a bad line is an error naming its number."""
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise InvalidEvent(f"cannot read {str(path)!r}: {exc.strerror}") from None
    with handle:
        for number, line in enumerate(handle, 1):
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
    """The identity transform: each event again, with a new id and time."""
    for event in events:
        yield Event.create(
            event.topic,
            event.body,
            source=event.source,
            type=event.type,
            headers=event.headers,
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
