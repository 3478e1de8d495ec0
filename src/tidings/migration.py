"""The migration view: which applications publish on the old bus, the new one, or both.

Fedora moved 30+ applications from fedmsg to fedora-messaging and tracked each in a wiki table
typed by hand (todo, in dev, ... production). A relay between an old and a new bus sees the old
side's traffic anyway; with ``watch`` set it also watches the new bus, where an application that
moved publishes natively (its events carry no relay mark). Each side's sightings — application,
count, first and last seen — go to ``migration.db`` under ``[bus] home``, and
``tidings migration status`` shows the table, measured:

- *old only*: seen on the old bus, never natively on the new one (still to move);
- *both*: on both (moving: publishing twice, or the relay's copies and its own);
- *new only*: natively on the new bus, no longer on the old one (moved).

The application is the one that published: the word after ``org.fedoraproject.<env>`` in a
Fedora topic (``bodhi``), else the event's ``source`` when it says something, else the topic's
first word.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tidings.event import Event
from tidings.sqlite import connect

SCHEMA = """
CREATE TABLE IF NOT EXISTS sightings (
    relay TEXT NOT NULL, side TEXT NOT NULL, app TEXT NOT NULL,
    count INTEGER NOT NULL, first REAL NOT NULL, last REAL NOT NULL,
    PRIMARY KEY (relay, side, app)
) WITHOUT ROWID;
"""
#: seconds sightings are kept in memory before they are written (one small transaction a second)
FLUSH_EVERY = 1.0
FEDORA_PREFIXES = ("org.fedoraproject.", "org.centos.")


def app_of(event: Event) -> str:
    """The application that published ``event`` (see the module's doc)."""
    words = event.topic.split(".")
    if event.topic.startswith(FEDORA_PREFIXES) and len(words) > 3:
        return words[3]
    if event.source and event.source != "tidings":
        return event.source
    return words[0]


@dataclass(frozen=True, slots=True)
class Row:
    app: str
    old: int
    new: int
    first: float
    last: float

    @property
    def status(self) -> str:
        if self.old and self.new:
            return "both"
        return "new only" if self.new else "old only"


class Sightings:
    """Counts per (relay, side, application), kept in memory and written once a second."""

    def __init__(self, path: str | Path, clock: object = time.time) -> None:
        self.path = Path(path)
        self._db = connect(self.path, schema=SCHEMA, sync_commits=False)
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: dict[tuple[str, str, str], list[float]] = {}
        self._flushed = time.monotonic()

    def seen(self, relay: str, side: str, event: Event) -> None:
        now: float = self._clock()  # type: ignore[operator]
        key = (relay, side, app_of(event))
        with self._lock:
            entry = self._pending.get(key)
            if entry is None:
                self._pending[key] = [1, now, now]
            else:
                entry[0] += 1
                entry[2] = now
        if time.monotonic() - self._flushed >= FLUSH_EVERY:
            self.flush()

    def flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
            self._flushed = time.monotonic()
            if not pending:
                return
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(
                "INSERT INTO sightings VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (relay, side, app) DO UPDATE "
                "SET count = count + excluded.count, first = min(first, excluded.first), "
                "last = max(last, excluded.last)",
                [(*key, int(count), first, last) for key, (count, first, last) in pending.items()],
            )
            self._db.execute("COMMIT")

    def table(self, relays: Iterable[str] | None = None) -> list[tuple[str, Row]]:
        """(relay, row) per application seen, old side "in" and new side "native"."""
        self.flush()
        wanted = set(relays) if relays is not None else None
        rows: dict[tuple[str, str], dict[str, float]] = {}
        with self._lock:
            found = self._db.execute("SELECT relay, side, app, count, first, last FROM sightings").fetchall()
        for relay, side, app, count, first, last in found:
            if wanted is not None and relay not in wanted:
                continue
            entry = rows.setdefault((relay, app), {"old": 0, "new": 0, "first": first, "last": last})
            entry["old" if side == "old" else "new"] += count
            entry["first"], entry["last"] = min(entry["first"], first), max(entry["last"], last)
        return [
            (relay, Row(app, int(e["old"]), int(e["new"]), e["first"], e["last"]))
            for (relay, app), e in sorted(rows.items())
        ]

    def close(self) -> None:
        self.flush()
        self._db.close()


@dataclass
class MissingCheck:
    """Ids seen on each side of a bridge or relay; those seen on one side only after a grace period."""

    grace: float = 30.0
    seen: dict[str, dict[str, float]] = field(default_factory=lambda: {"a": {}, "b": {}})

    def saw(self, side: str, event_id: str, at: float) -> None:
        self.seen[side].setdefault(event_id, at)

    def missing(self, now: float) -> dict[str, list[str]]:
        """{"a": ids only side a has had for longer than the grace, "b": likewise}."""
        a, b = self.seen["a"], self.seen["b"]
        return {
            "a": sorted(i for i, t in a.items() if i not in b and now - t > self.grace),
            "b": sorted(i for i, t in b.items() if i not in a and now - t > self.grace),
        }

    async def watch(self, duration: float, stopped: asyncio.Event | None = None) -> float:
        """Wait ``duration`` seconds, or until ``stopped`` is set (SIGTERM, Ctrl-C); the moment
        to pass to :meth:`missing` then: after the whole time every id counts as past its grace,
        after an early stop only those really past it (the others may still be on their way)."""
        try:
            await asyncio.wait_for((stopped or asyncio.Event()).wait(), duration)
        except TimeoutError:
            return time.monotonic() + self.grace
        return time.monotonic()

    def saw_all(self, side: str, ids: Iterable[str], at: float) -> None:
        for event_id in ids:
            self.saw(side, event_id, at)
