"""The dispatcher's archive connector: what it stores, what it refuses, its retention, its failures."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest

from tests.conftest import embedded_config
from tidings.archive import Query
from tidings.archive.sink import ArchiveSink
from tidings.archive.sqlite import SqliteArchive
from tidings.config import ArchiveSection, Config
from tidings.errors import TransportError
from tidings.event import Event
from tidings.format import load_format
from tidings.formats.bugzilla import bugzilla_event
from tidings.transport import Outcome, WireMessage


def config(tmp_path: Path, **archive: object) -> Config:
    return msgspec.structs.replace(embedded_config(tmp_path / "home"), archive=ArchiveSection(**archive))  # type: ignore[arg-type]


def test_stores_refuses_what_it_cannot_read_and_purges_by_retention(tmp_path: Path) -> None:
    sink = ArchiveSink(config(tmp_path, retention=3600))
    native = load_format("tidings")
    old = Event.create("a.old", {}, time=datetime.now(UTC) - timedelta(hours=2))
    bug = bugzilla_event("bug", "create", {"id": 1, "product": "Fedora"}, user={"login": "d"}, bug_id=1)
    garbage = WireMessage("a.bad", b"not json")

    async def run() -> list[Outcome]:
        results = await sink.send("tidings", [native.encode(old), native.encode(bug), garbage])
        await sink.close()
        return [r.outcome for r in results]

    assert asyncio.run(run()) == [Outcome.DELIVERED, Outcome.DELIVERED, Outcome.REFUSED]
    archive = SqliteArchive(tmp_path / "home" / "archive.db")
    found = archive.search(Query())
    assert [a.event.topic for a in found.items] == ["bug.create"]  # the old one purged at once
    assert found.items[0].fields.packages == ("Fedora",)
    archive.close()


def test_an_archive_that_cannot_be_opened_is_a_transport_error(tmp_path: Path) -> None:
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "archive.db").mkdir()  # a folder where the file should be
    sink = ArchiveSink(config(tmp_path))
    with pytest.raises(TransportError, match="archive"):
        asyncio.run(sink.connect())
