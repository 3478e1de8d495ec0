"""Broker sources (``[archive] from = [...]``): what one message the archive cannot take does to
its queue. A real broker (the embedded one, and RabbitMQ) and a real PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import msgspec
import pytest

from tests.archive.conftest import PG_URL
from tests.archive.test_sink import BuggyFormat
from tests.conftest import delete_amqp_topology, embedded_config, require_service
from tests.faults.rig import RABBIT
from tidings.archive import Query
from tidings.archive.ingest import Counts, SourceIngest
from tidings.bus import Bus
from tidings.config import ArchiveSection, ArchiveSource
from tidings.event import Event
from tidings.format import load_format
from tidings.transport import ExchangeSpec, Topology, dead_letters


def transports(kind: str) -> dict[str, dict[str, object]]:
    if kind == "amqp":
        require_service("127.0.0.1", 5672, "RabbitMQ")
        return {"q": {"kind": "amqp", "url": RABBIT}}
    return {"q": {"kind": "embedded", "path": "broker.db"}}


@pytest.mark.parametrize("kind", ["embedded", pytest.param("amqp", marks=pytest.mark.rabbitmq)])
async def test_a_message_the_archive_cannot_take_is_a_dead_letter_not_a_stalled_queue(
    tmp_path: Path, pg_schema: str, kind: str
) -> None:
    """PostgreSQL holds no NUL character in text: that event is refused alone, while the store
    answers, and rejected to the queue's dead letters with the store's reason; a format that fails
    with anything but a DecodeError dead-letters its message too. The rest is archived and acked.
    (Before: the whole batch went back to the queue and came again, for ever, "source ... is down".)"""
    from tidings.archive.postgres import PostgresArchive

    tag = uuid.uuid4().hex[:8]
    source = ArchiveSource(transport="q", queue=f"archive-{tag}", exchange=f"archive-{tag}")
    section = ArchiveSection(sources=[source])
    config = embedded_config(tmp_path / "home")
    bus = Bus(msgspec.structs.replace(config, transports=transports(kind), archive=section))
    archive = PostgresArchive(PG_URL, schema=pg_schema)
    counts = Counts()
    ingest = SourceIngest(bus, source, archive, section, counts)
    ingest.format = BuggyFormat()  # type: ignore[assignment]
    nul, bad = Event.create("nul.body", {"s": "a\u0000b"}), Event.create("bad.format", {})
    good = Event.create("ok", {})
    publisher = bus.make_transport("q")
    try:
        await publisher.connect()
        await publisher.declare(Topology([ExchangeSpec(source.exchange)], [ingest.queue()]))
        native = load_format("tidings")
        await publisher.send(source.exchange, [native.encode(e) for e in (nul, bad, good)])
        await asyncio.wait_for(ingest.run(asyncio.Event(), once=True), 30)
        assert (counts.archived, counts.rejected, counts.duplicates) == (1, 2, 0)
        assert [a.event.id for a in archive.search(Query()).items] == [good.id]
        dead = {d.message.message_id: d.reason for d in await dead_letters(publisher).list(source.queue, 10)}
        assert dead[nul.id].startswith("the archive cannot store it: archive (PostgreSQL): ")
        assert "0x00" in dead[nul.id] or "\\u0000" in dead[nul.id], dead[nul.id]
        assert dead[bad.id] == (
            "the archive cannot read it: the buggy format failed on it: "
            "OverflowError: int too large to convert"
        )
        assert len(dead) == 2
        if kind == "embedded":  # all settled: nothing left to come again
            assert await publisher.queue_depth(source.queue) == 0  # type: ignore[attr-defined]
    finally:
        await publisher.close()
        archive.close()
        bus.close()
        if kind == "amqp":
            await delete_amqp_topology(RABBIT, [source.queue], [source.exchange])
