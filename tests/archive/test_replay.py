"""`tidings replay` from the archive: the same events (ids kept, marked as replayed), straight to
the connectors; a transform makes new events through the outbox instead."""

from __future__ import annotations

import uuid
from pathlib import Path

import orjson
import pytest

from tests.clirun import tidings
from tests.conftest import delete_amqp_topology, require_service
from tests.faults.rig import RABBIT, queue_depth
from tidings import App, Bus
from tidings.config import load_config

CONFIG = """
[transports.local]
kind = "embedded"

[transports.copy]
kind = "file"
path = "copy.jsonl"

[connectors.copy]
transport = "copy"

[archive]
"""


def copied(root: Path) -> list[dict]:
    path = root / ".tidings" / "copy.jsonl"
    return [orjson.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_archived_events_are_sent_again_with_their_ids_to_the_connectors_asked(tmp_path: Path) -> None:
    (tmp_path / "tidings.toml").write_text(CONFIG)
    ids = [
        tidings(tmp_path, "publish", topic, "--body", '{"n": 1}').stdout.strip()
        for topic in ("a.x", "b.y", "b.z")
    ]
    assert tidings(tmp_path, "dispatch", "--once").returncode == 0  # delivered, and archived
    assert [line["message_id"] for line in copied(tmp_path)] == ids
    (tmp_path / ".tidings" / "copy.jsonl").unlink()

    one = tidings(tmp_path, "replay", "--id", ids[0], "--to", "copy")
    assert one.returncode == 0, one.stderr
    assert "copy: sent 1 of 1 (ids kept)" in one.stdout
    [again] = copied(tmp_path)
    assert again["message_id"] == ids[0] and "x-tidings-replayed-at" in str(again)

    dry = tidings(tmp_path, "replay", "--from-archive", "--topic", "b.#", "--days", "1", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert [line.split()[0] for line in dry.stdout.splitlines()[:-1]] == ids[1:]
    assert len(copied(tmp_path)) == 1  # a dry run sends nothing

    both = tidings(tmp_path, "replay", "--from-archive", "--topic", "b.#", "--days", "1", "--to", "copy")
    assert both.returncode == 0, both.stderr
    assert [line["message_id"] for line in copied(tmp_path)] == [ids[0], *ids[1:]]


def test_replay_errors_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "tidings.toml").write_text(CONFIG)
    missing = tidings(tmp_path, "replay", "--id", "no-such-id", "--to", "copy")
    assert missing.returncode == 4 and missing.stderr.count("\n") == 1
    assert "no event 'no-such-id' in the archive" in missing.stderr
    unknown = tidings(tmp_path, "replay", "--from-archive", "--to", "nowhere")
    assert unknown.returncode == 3 and "no connector named 'nowhere'" in unknown.stderr
    for mixed in (
        ["--to", "copy"],
        ["--to-queue", "svc"],  # (it published every event again, new ids, to every connector)
        ["--from-archive", "--transform", "cki-needs-triage", "--to", "copy"],
        ["--from-archive", "--transform", "cki-needs-triage", "--to-queue", "svc"],
        ["--id", "some-id", "--topic", "a.#"],
    ):
        done = tidings(tmp_path, "replay", *mixed)
        assert done.returncode == 2, (mixed, done.stdout, done.stderr)
        assert done.stderr.startswith("tidings: error:") and done.stderr.count("\n") == 1, done.stderr


@pytest.mark.parametrize("kind", ["embedded", "amqp"])
async def test_an_archived_event_goes_to_one_consumers_queue_alone(tmp_path: Path, kind: str) -> None:
    tag = uuid.uuid4().hex[:8]
    transport = (
        '[transports.q]\nkind = "embedded"\n'
        if kind == "embedded"
        else (f'[transports.q]\nkind = "amqp"\nurl = "{RABBIT}"\n')
    )
    if kind == "amqp":
        require_service("127.0.0.1", 5672, "RabbitMQ")
    (tmp_path / "tidings.toml").write_text(
        CONFIG
        + transport
        + f'[consumers.triage]\ntransport = "q"\nqueue = "triage-{tag}"\nbindings = ["a.#"]\n'
    )
    event_id = tidings(tmp_path, "publish", "a.x", "--body", "{}").stdout.strip()
    assert tidings(tmp_path, "dispatch", "--once").returncode == 0
    bus = Bus(load_config(tmp_path / "tidings.toml"))
    consumer = App.from_config(bus, "triage")
    await consumer.declare(bus)
    queue = bus.make_transport("q")
    await queue.connect()
    try:
        before = await depth(queue, kind, f"triage-{tag}")
        done = tidings(tmp_path, "replay", "--id", event_id, "--to-queue", "triage")
        assert done.returncode == 0, done.stderr
        assert f"queue triage-{tag}: sent 1 of 1 (ids kept)" in done.stdout
        assert await depth(queue, kind, f"triage-{tag}") == before + 1
        [delivery] = [d async for d in _take(queue, consumer, 1)]
        got = consumer.format().decode(delivery.message)
        assert (got.id, got.topic) == (event_id, "a.x") and "x-tidings-replayed-at" in got.headers
    finally:
        await queue.close()
        bus.close()
        if kind == "amqp":
            await delete_amqp_topology(RABBIT, [f"triage-{tag}", f"triage-{tag}.dead"], [])


async def test_a_replay_to_a_queue_speaks_the_consumers_format_with_its_options(tmp_path: Path) -> None:
    (tmp_path / "tidings.toml").write_text(
        CONFIG
        + '[transports.q]\nkind = "embedded"\n'
        + '[consumers.fed]\ntransport = "q"\nbindings = ["a.#"]\nformat = "fedora-messaging"\n'
        + 'format_options = {topic_prefix = "org.example.prod"}\n'
    )
    event_id = tidings(tmp_path, "publish", "a.x", "--body", "{}").stdout.strip()
    assert tidings(tmp_path, "dispatch", "--once").returncode == 0
    bus = Bus(load_config(tmp_path / "tidings.toml"))
    consumer = App.from_config(bus, "fed")
    await consumer.declare(bus)
    queue = bus.make_transport("q")
    await queue.connect()
    try:
        done = tidings(tmp_path, "replay", "--id", event_id, "--to-queue", "fed")
        assert done.returncode == 0, done.stderr
        [delivery] = [d async for d in _take(queue, consumer, 1)]
    finally:
        await queue.close()
        bus.close()
    assert delivery.message.routing_key == "org.example.prod.a.x"  # as its binding reads it


async def depth(transport: object, kind: str, queue: str) -> int:
    if kind == "amqp":
        return await queue_depth(RABBIT, queue)
    return await transport.queue_depth(queue)  # type: ignore[attr-defined,no-any-return]


async def _take(transport: object, consumer: App, count: int):  # type: ignore[no-untyped-def]
    stream = transport.consume(consumer.queue_spec(), prefetch=count)  # type: ignore[attr-defined]
    taken = 0
    async for delivery in stream:
        yield delivery
        taken += 1
        if taken >= count:
            break
    await stream.aclose()
