"""The dispatcher's archive connector: what it stores, what it refuses, its retention, its failures."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest

from tests.conftest import embedded_config
from tidings.archive import Archived, Query
from tidings.archive.sink import ArchiveSink
from tidings.archive.sqlite import SqliteArchive
from tidings.config import ArchiveSection, Config
from tidings.errors import StorageError, TransportError
from tidings.event import Event
from tidings.format import load_format
from tidings.formats.bugzilla import bugzilla_event
from tidings.transport import Outcome, SendResult, WireMessage


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


def test_an_event_the_store_can_never_hold_is_a_dead_letter_not_a_stall(
    tmp_path: Path, pg_schema: str
) -> None:
    """PostgreSQL holds no NUL character in text: such an event is refused with the store's reason,
    alone in its batch or not, and what comes after it is archived."""
    from tests.archive.conftest import PG_URL
    from tidings.archive.postgres import PostgresArchive

    sink = ArchiveSink(config(tmp_path))
    sink.archive = PostgresArchive(PG_URL, schema=pg_schema)
    native = load_format("tidings")
    nul, after = Event.create("nul.body", {"s": "a\u0000b"}), Event.create("after", {"ok": 1})

    async def run() -> list[list[Outcome]]:
        alone = await sink.send("tidings", [native.encode(nul)])
        mixed = await sink.send("tidings", [native.encode(nul), native.encode(after)])
        return [[r.outcome for r in alone], [r.outcome for r in mixed]]

    assert asyncio.run(run()) == [[Outcome.REFUSED], [Outcome.REFUSED, Outcome.DELIVERED]]
    assert [a.event.id for a in sink.archive.search(Query()).items] == [after.id]
    asyncio.run(sink.close())


def test_a_bug_on_one_event_inside_a_postgresql_transaction_is_its_dead_letter(
    tmp_path: Path, pg_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not only a database error: whatever fails inside a transaction (December 9999's month end
    was a ValueError) is rolled back and becomes a StorageError, so the event at fault is refused
    with the reason instead of stopping the dispatcher, and the others are archived."""
    from tests.archive.conftest import PG_URL
    from tidings.archive import postgres

    real_row = postgres._row

    def row(seq: int, archived: Archived) -> tuple[object, ...]:
        if archived.event.topic == "bad.value":
            raise OverflowError("a value no one expected")
        return real_row(seq, archived)

    monkeypatch.setattr(postgres, "_row", row)
    sink = ArchiveSink(config(tmp_path))
    sink.archive = postgres.PostgresArchive(PG_URL, schema=pg_schema)
    native = load_format("tidings")
    far = Event.create("far.december", {}, time=datetime(9999, 12, 15, tzinfo=UTC))
    bad, after = Event.create("bad.value", {}), Event.create("after", {})
    results = asyncio.run(sink.send("tidings", [native.encode(e) for e in (far, bad, after)]))
    assert [r.outcome for r in results] == [Outcome.DELIVERED, Outcome.REFUSED, Outcome.DELIVERED]
    assert results[1].reason == (
        "the archive cannot store it: archive (PostgreSQL): OverflowError: a value no one expected"
    )
    assert {a.event.id for a in sink.archive.search(Query()).items} == {far.id, after.id}
    asyncio.run(sink.close())


def test_a_postgresql_connection_that_broke_is_opened_again(tmp_path: Path, pg_schema: str) -> None:
    """A terminated backend (a server restart, an operator's pg_terminate_backend) left the
    archive's lock held: the archive stored nothing more, and every search and close waited
    for ever. The batch it broke is now stored on a new connection."""
    import psycopg

    from tests.archive.conftest import PG_URL
    from tidings.archive import postgres

    sink = ArchiveSink(config(tmp_path))
    archive = sink.archive = postgres.PostgresArchive(PG_URL, schema=pg_schema)
    native = load_format("tidings")
    before, after = Event.create("before", {}), Event.create("after", {})
    assert [r.outcome for r in asyncio.run(sink.send("tidings", [native.encode(before)]))] == [
        Outcome.DELIVERED
    ]
    with psycopg.connect(PG_URL, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (archive._db.info.backend_pid,))

    async def send_after() -> list[SendResult]:
        return await asyncio.wait_for(sink.send("tidings", [native.encode(after)]), 30)

    assert [r.outcome for r in asyncio.run(send_after())] == [Outcome.DELIVERED]
    assert {a.event.id for a in archive.search(Query()).items} == {before.id, after.id}
    asyncio.run(asyncio.wait_for(sink.close(), 30))


def test_a_bug_on_one_event_inside_a_sqlite_transaction_is_rolled_back_and_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same on SQLite: left open, the failed transaction made every later BEGIN fail."""
    from tidings.archive import sqlite

    real_rows = sqlite._rows

    def rows(fresh: list[Archived], last: int) -> tuple[list[tuple[object, ...]], list[tuple[int, str, int]]]:
        if any(a.event.topic == "bad.value" for a in fresh):
            raise OverflowError("a value no one expected")
        return real_rows(fresh, last)  # type: ignore[arg-type]

    monkeypatch.setattr(sqlite, "_rows", rows)
    sink = ArchiveSink(config(tmp_path))
    sink.archive = SqliteArchive(tmp_path / "archive.db")
    native = load_format("tidings")
    before, bad, after = Event.create("before", {}), Event.create("bad.value", {}), Event.create("after", {})
    results = asyncio.run(sink.send("tidings", [native.encode(e) for e in (before, bad, after)]))
    assert [r.outcome for r in results] == [Outcome.DELIVERED, Outcome.REFUSED, Outcome.DELIVERED]
    assert results[1].reason.endswith("OverflowError: a value no one expected")
    assert {a.event.id for a in sink.archive.search(Query()).items} == {before.id, after.id}
    asyncio.run(sink.close())


class BuggyFormat:
    """A format plug-in with a bug: its decode raises what no format should (an OverflowError)."""

    name = "buggy"

    def __init__(self) -> None:
        self.native = load_format("tidings")

    def decode(self, message: WireMessage) -> Event:
        if message.routing_key == "bad.format":
            raise OverflowError("int too large to convert")
        return self.native.decode(message)


def test_a_format_that_fails_otherwise_than_it_should_refuses_that_message_alone(tmp_path: Path) -> None:
    sink = ArchiveSink(config(tmp_path))
    sink.format = BuggyFormat()  # type: ignore[assignment]
    native = load_format("tidings")
    bad, after = Event.create("bad.format", {}), Event.create("after", {})

    async def run() -> list[SendResult]:
        try:
            return await sink.send("tidings", [native.encode(bad), native.encode(after)])
        finally:
            await sink.close()

    results = asyncio.run(run())
    assert [r.outcome for r in results] == [Outcome.REFUSED, Outcome.DELIVERED]
    assert results[0].reason == (
        "archive cannot read it: the buggy format failed on it: OverflowError: int too large to convert"
    )
    archive = SqliteArchive(tmp_path / "home" / "archive.db")
    assert [a.event.id for a in archive.search(Query()).items] == [after.id]
    archive.close()


class AwayStore:
    """A store that answers nothing (its server is down)."""

    def ingest(self, items: object) -> None:
        raise StorageError("server closed the connection")

    def search(self, *args: object, **kwargs: object) -> None:
        raise StorageError("server closed the connection")

    def close(self) -> None:
        pass


def test_a_store_that_answers_nothing_keeps_the_batch_for_later(tmp_path: Path) -> None:
    sink = ArchiveSink(config(tmp_path))
    sink.archive = AwayStore()  # type: ignore[assignment]
    message = load_format("tidings").encode(Event.create("a.b", {}))
    with pytest.raises(TransportError, match="server closed"):
        asyncio.run(sink.send("tidings", [message]))


def test_the_archive_s_seqs_follow_the_outbox_with_batches_in_flight(tmp_path: Path) -> None:
    """Four batches on the wire, each stored by a thread of its own: the archive gave a later
    batch the earlier seqs now and then (the live stream showed k=27 before k=26)."""
    from tidings.bus import Bus
    from tidings.config import load_config

    (tmp_path / "tidings.toml").write_text('[bus]\nhome = "home"\n[archive]\nbatch_size = 7\n')
    bus = Bus(load_config(tmp_path / "tidings.toml"))
    try:
        bus.publish_many([bus.event("k.n", {"k": k}) for k in range(1500)])

        async def dispatch() -> None:
            dispatcher = bus.dispatcher(["archive"])
            stop = asyncio.Event()
            running = asyncio.create_task(dispatcher.run(stop))
            while dispatcher.connectors[0].stats.delivered < 1500:
                await asyncio.sleep(0.05)
            stop.set()
            await running

        asyncio.run(dispatch())
        archive = SqliteArchive(bus.config.archive_path())
        try:
            order = [a.event.body["k"] for a in archive.since(0, Query(), limit=2000)]
        finally:
            archive.close()
        assert order == list(range(1500))
    finally:
        bus.close()
