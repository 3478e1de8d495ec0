"""The write-only file transport, alone and as one connector among several."""

from __future__ import annotations

import base64
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import orjson
import pytest

from tests.transports.conformance import MakeTransport, TransportConformance
from tidings import Bus
from tidings.config import load_config
from tidings.errors import ConfigError, TransportError
from tidings.transport import QueueSpec, WireMessage
from tidings.transports.file import FileTransport


async def test_jsonl_lines_are_appended_and_fsynced(tmp_path: Path) -> None:
    transport = FileTransport(str(tmp_path / "out" / "push.jsonl"))
    await transport.connect()
    results = await transport.send(
        "x",
        [
            WireMessage("bug.modify", b'{"a": 1}', headers={"h": 1}, message_id="m1"),
            WireMessage("raw", b"\xff\x00", message_id="m2"),
        ],
    )
    await transport.close()
    assert [r.outcome.value for r in results] == ["delivered", "delivered"]
    lines = [orjson.loads(line) for line in (tmp_path / "out" / "push.jsonl").read_bytes().splitlines()]
    assert lines[0] == {
        "routing_key": "bug.modify",
        "message_id": "m1",
        "headers": {"h": 1},
        "content_type": "application/json",
        "body": {"a": 1},
    }
    assert lines[1]["body_base64"] == "/wA="


async def test_bugzilla_blocks_prepared_by_the_bugzilla_format_written_raw(tmp_path: Path) -> None:
    # the block shape of bmo's File connector: "[localtime]\n" + pretty JSON + "\n\n"
    # (mozilla-bteam/bmo, extensions/Push/lib/Connector/File.pm, sub send)
    from tidings import Event
    from tidings.formats.bugzilla import BugzillaFormat

    transport = FileTransport(str(tmp_path / "push.log"), style="raw")
    await transport.connect()
    event = Event.create("comment.create", {"event": {"target": "comment"}})
    await transport.send("x", [BugzillaFormat(file_block=True).encode(event)])
    await transport.close()
    text = (tmp_path / "push.log").read_text()
    stamp, rest = text.split("\n", 1)
    assert stamp.startswith("[") and stamp.endswith("]")
    assert rest.endswith("\n\n")
    assert orjson.loads(rest) == {"event": {"target": "comment"}}


async def test_errors_are_ours(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="style must be one of"):
        FileTransport("x", style="xml")
    with pytest.raises(ConfigError, match=re.escape('style = "raw", format_options = {file_block = true}')):
        FileTransport("x", style="bugzilla")  # tidings 0.1's style: the error says where it went
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("")
    transport = FileTransport(str(blocked / "push.jsonl"))
    with pytest.raises(TransportError, match="cannot open"):
        await transport.connect()
    with pytest.raises(TransportError, match="only writes"):
        FileTransport("x").consume(QueueSpec("q"), prefetch=1)


async def test_a_file_connector_beside_the_embedded_one(tmp_path: Path) -> None:
    (tmp_path / "tidings.toml").write_text(
        '[transports.local]\nkind = "embedded"\npath = "broker.db"\n'
        '[transports.log]\nkind = "file"\npath = "push.jsonl"\n'
        '[connectors.local]\ntransport = "local"\n'
        '[connectors.log]\ntransport = "log"\ntopics = ["bug.#"]\n'
    )
    bus = Bus(load_config(tmp_path / "tidings.toml"))
    for topic in ("bug.create", "comment.create", "bug.modify"):
        bus.publish(topic, {"t": topic})
    await bus.dispatcher().drain()
    lines = [orjson.loads(line) for line in (tmp_path / ".tidings" / "push.jsonl").read_bytes().splitlines()]
    assert [line["routing_key"] for line in lines] == ["bug.create", "bug.modify"]
    local, log = bus.outbox.status(["local", "log"])
    assert (log.pending, log.backlog, log.dead) == (0, 0, 0)
    assert local.backlog == 3  # no queue is bound on the embedded broker: unroutable, waiting


# -- the transport conformance suite, as far as a write-only file goes ---------------------------


@dataclass
class ReadBack:
    """A message read back from the file: what a delivery would have carried."""

    message: WireMessage
    attempt: int = 1
    redelivered: bool = False

    async def ack(self) -> None:
        """Nothing to settle: the file keeps what it was given."""


class TestFileConformance(TransportConformance):
    routes = False  # a file takes every message: a reader filters
    consumes = False  # write-only
    keeps_body_bytes = False  # a JSON line holds the body as JSON

    @pytest.fixture
    async def make_transport(self, tmp_path: Path) -> AsyncIterator[MakeTransport]:
        made: list[FileTransport] = []
        self.path = tmp_path / "sink.jsonl"
        self.read: dict[str, int] = {}

        async def make() -> FileTransport:
            transport = FileTransport(str(self.path))
            await transport.connect()
            made.append(transport)
            return transport

        yield make
        for transport in made:
            await transport.close()

    @pytest.fixture
    def exchange(self) -> str:
        return "file"

    async def take(self, transport, queue, count: int, *, prefetch: int = 50):  # type: ignore[no-untyped-def,override]
        """The next ``count`` records of the file (each queue reads the whole file, from its start)."""
        records = [orjson.loads(line) for line in self.path.read_bytes().splitlines()]
        start = self.read.get(queue.name, 0)
        taken = records[start : start + count]
        assert len(taken) == count, f"the file holds {len(records) - start} more records, not {count}"
        self.read[queue.name] = start + count
        return [ReadBack(self._message(record)) for record in taken]

    @staticmethod
    def _message(record: dict) -> WireMessage:  # type: ignore[type-arg]
        body = (
            base64.b64decode(record["body_base64"])
            if "body_base64" in record
            else orjson.dumps(record["body"])
        )
        stamp = record.get("timestamp")
        return WireMessage(
            routing_key=record["routing_key"],
            body=body,
            headers=record["headers"],
            message_id=record["message_id"],
            content_type=record.get("content_type"),
            timestamp=datetime.fromisoformat(stamp) if stamp else None,
        )
