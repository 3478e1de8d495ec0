"""The archive: every event tidings carried, kept and searchable.

This module is the contract between the archive's storage (``tidings.archive.sqlite``, the
default under ``[bus] home``, and ``tidings.archive.postgres``) and what reads it: the query API
and the web page (``tidings.web``), ``tidings replay`` from the archive. It imports no database
library; ``[archive]`` in the config chooses the store.

Two orders exist. An archived event has its own ``seq``, a number the archive gives in the
order events arrived; a live stream resumes from a seq (SSE's ``Last-Event-ID``), and a keyset
cursor is (time, seq) of the last row a page showed. Events are found by ``time`` (the event's
own, as datagrepper sorts) with ``seq`` breaking ties.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol

from tidings.event import Event

Order = Literal["asc", "desc"]


@dataclass(frozen=True, slots=True)
class SearchFields:
    """What a format knows about an event beyond its envelope: datagrepper's search keys.

    Fedora messages name users, packages, containers and an agent; Bugzilla's have the bug's
    product and component (as packages) and its assignee/reporter (as users); Taskcluster's the
    taskGroupId (as containers); LAVA's the device type (as packages). A format that knows none
    leaves them empty.
    """

    users: tuple[str, ...] = ()
    packages: tuple[str, ...] = ()
    containers: tuple[str, ...] = ()
    agent: str | None = None


@dataclass(frozen=True, slots=True)
class Archived:
    """One archived event: the event itself, the archive's seq, and its search fields."""

    seq: int
    event: Event
    fields: SearchFields = SearchFields()

    @property
    def category(self) -> str:
        """datagrepper's category: the topic's word after the ``org.fedoraproject.<env>`` prefix,
        else its first word (``datawarehouse.checkout.new`` → ``datawarehouse``)."""
        words = self.event.topic.split(".")
        if len(words) > 3 and words[0] in ("org", "io", "com") and words[1] in ("fedoraproject", "centos"):
            return words[3]
        return words[0]


@dataclass(frozen=True, slots=True)
class Query:
    """A search, as datagrepper's /raw and the /v2/search API express it.

    Within one list the values are alternatives (any may match); the lists combine with AND,
    as in datagrepper. ``topics`` are AMQP patterns (``org.fedoraproject.*.bodhi.#``; a topic
    without ``*``/``#`` is an exact match); ``contains`` are substrings of the body's JSON text.
    Private events are left out unless ``include_private``.
    """

    topics: Sequence[str] = ()
    not_topics: Sequence[str] = ()
    categories: Sequence[str] = ()
    users: Sequence[str] = ()
    packages: Sequence[str] = ()
    containers: Sequence[str] = ()
    agents: Sequence[str] = ()
    sources: Sequence[str] = ()
    contains: Sequence[str] = ()
    start: datetime | None = None
    end: datetime | None = None
    include_private: bool = False


@dataclass(frozen=True, slots=True)
class Page:
    """A keyset page: its events, the cursor of the next page (None: the last page), and an
    estimate of how many match in all (never a count(*): None when the store cannot guess)."""

    items: list[Archived]
    next_cursor: str | None
    estimated_total: int | None = None


@dataclass(frozen=True, slots=True)
class NumberedPage:
    """A page as datagrepper numbers them (page n of rows_per_page), with the exact total."""

    items: list[Archived]
    total: int
    pages: int


class Archive(Protocol):
    """What every archive store does. Every method may raise :class:`tidings.errors.StorageError`."""

    def ingest(self, events: Sequence[Archived | Event]) -> int:
        """Store events not stored yet (by event id), in one transaction; how many were new."""
        ...

    def get(self, event_id: str, *, include_private: bool = False) -> Archived | None: ...

    def search(
        self, query: Query, *, limit: int = 100, cursor: str | None = None, order: Order = "desc"
    ) -> Page:
        """Events matching ``query`` by time (then seq), ``limit`` at most, after ``cursor``."""
        ...

    def numbered(
        self, query: Query, *, page: int = 1, rows_per_page: int = 25, order: Order = "desc"
    ) -> NumberedPage:
        """datagrepper's paging (OFFSET and an exact count): for its URLs to work unchanged."""
        ...

    def since(
        self, seq: int, query: Query, *, limit: int = 500, max_bytes: int | None = None
    ) -> list[Archived]:
        """Events archived after ``seq``, in seq order: a live stream resuming (Last-Event-ID).
        ``max_bytes``: stop before an event that would start past that many bytes of bodies
        read (the first is always read), so that a batch of large events costs what it says."""
        ...

    def last_seq(self) -> int: ...

    def purge(self, older_than: datetime) -> int:
        """Forget events whose time is before ``older_than`` (the retention), in batches."""
        ...

    def close(self) -> None: ...
