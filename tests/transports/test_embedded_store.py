"""The embedded broker's storage: one payload per message however many queues take it,
and broker files of the earlier one-table layout moved over without losing a message."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import orjson

from tests.waiting import until
from tidings.transport import Binding, ExchangeSpec, QueueSpec, Topology, WireMessage
from tidings.transports.embedded import EmbeddedTransport

# the layout broker files had before payloads were shared (tidings up to this change)
ONE_TABLE_LAYOUT = """
CREATE TABLE exchanges (name TEXT PRIMARY KEY, type TEXT NOT NULL);
CREATE TABLE queues (name TEXT PRIMARY KEY);
CREATE TABLE bindings (queue TEXT NOT NULL, exchange TEXT NOT NULL, pattern TEXT NOT NULL,
    PRIMARY KEY (queue, exchange, pattern)) WITHOUT ROWID;
CREATE TABLE topology (version INTEGER NOT NULL);
INSERT INTO topology VALUES (1);
CREATE TABLE messages (id INTEGER PRIMARY KEY AUTOINCREMENT, queue TEXT NOT NULL,
    visible_at REAL NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, lease TEXT,
    meta BLOB NOT NULL, body BLOB NOT NULL);
CREATE INDEX messages_by_queue ON messages (queue, id);
INSERT INTO exchanges VALUES ('ex', 'topic');
INSERT INTO queues VALUES ('q'), ('q.dead');
INSERT INTO bindings VALUES ('q', 'ex', '#');
"""

TOPOLOGY = Topology([ExchangeSpec("ex")], [QueueSpec("q", [Binding("ex", "#")])])


def leased(path: str) -> int:
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT count(*) FROM messages WHERE lease IS NOT NULL").fetchone()[0]
    finally:
        db.close()


async def take(transport: EmbeddedTransport, queue: str, count: int) -> list[WireMessage]:
    got: list[WireMessage] = []
    stream = transport.consume(QueueSpec(queue), prefetch=10)
    async for delivery in stream:
        got.append(delivery.message)
        await delivery.ack()
        if len(got) == count:
            break
    await stream.aclose()  # type: ignore[attr-defined]
    return got


def test_a_one_table_broker_file_is_moved_over_with_every_message(tmp_path: Path) -> None:
    path = tmp_path / "broker.db"
    old = sqlite3.connect(path)
    old.executescript(ONE_TABLE_LAYOUT)
    meta = orjson.dumps({"routing_key": "a.b", "headers": {"n": 1}, "message_id": "m1", "exchange": "ex"})
    old.executemany(
        "INSERT INTO messages (queue, visible_at, attempts, meta, body) VALUES ('q', 0, ?, ?, ?)",
        [(2, meta, b'{"first": true}'), (0, meta.replace(b"m1", b"m2"), b'{"second": true}')],
    )
    old.commit()
    old.close()

    async def run() -> tuple[list[WireMessage], list[WireMessage]]:
        transport = EmbeddedTransport(str(path), poll=0.005)
        await transport.connect()
        moved = await take(transport, "q", 2)
        await transport.send("ex", [WireMessage("a.c", b'{"third": true}', message_id="m3")])
        fresh = await take(transport, "q", 1)
        await transport.close()
        return moved, fresh

    moved, fresh = asyncio.run(run())
    assert [(m.message_id, m.body, m.headers) for m in moved] == [
        ("m1", b'{"first": true}', {"n": 1}),
        ("m2", b'{"second": true}', {"n": 1}),
    ]
    assert [m.message_id for m in fresh] == ["m3"]
    db = sqlite3.connect(path)
    tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "messages_before_payloads" not in tables
    assert db.execute("SELECT count(*) FROM payloads").fetchone()[0] == 0  # all acked, all gone


def test_a_message_for_three_queues_is_stored_once_and_goes_with_the_last_ack(tmp_path: Path) -> None:
    async def run() -> None:
        transport = EmbeddedTransport(str(tmp_path / "broker.db"), poll=0.005)
        await transport.connect()
        queues = [QueueSpec(name, [Binding("ex", "build.#")]) for name in ("a", "b", "c")]
        await transport.declare(Topology([ExchangeSpec("ex")], queues))
        await transport.send("ex", [WireMessage("build.done", b"{}", message_id="one")])
        db = sqlite3.connect(tmp_path / "broker.db")
        assert db.execute("SELECT count(*), max(refs) FROM payloads").fetchone() == (1, 3)
        for n, queue in enumerate(("a", "b", "c")):
            assert [m.message_id for m in await take(transport, queue, 1)] == ["one"]
            left = db.execute("SELECT count(*) FROM payloads").fetchone()[0]
            assert left == (1 if n < 2 else 0)
        db.close()
        await transport.close()

    asyncio.run(run())


def test_sends_waiting_behind_a_commit_share_the_next_and_each_gets_its_own_results(tmp_path: Path) -> None:
    async def run() -> None:
        transport = EmbeddedTransport(str(tmp_path / "broker.db"), poll=0.005)
        await transport.connect()
        await transport.declare(Topology([ExchangeSpec("ex")], [QueueSpec("q", [Binding("ex", "keep.#")])]))
        commits = 0
        write = transport.commit

        def counted(*args: object, **kwargs: object) -> object:
            nonlocal commits
            commits += 1
            return write(*args, **kwargs)  # type: ignore[arg-type]

        transport.commit = counted  # type: ignore[method-assign]
        sends = [
            [WireMessage(f"keep.{n}", b"{}", message_id=f"{n}a"), WireMessage("x", b"{}", message_id=f"{n}b")]
            for n in range(6)
        ]
        results = await asyncio.gather(*(transport.send("ex", batch) for batch in sends))
        assert [[r.outcome.value for r in result] for result in results] == [["delivered", "retry"]] * 6
        assert commits < 6  # the sends queued behind the first commit went together
        got = await take(transport, "q", 6)
        assert [m.message_id for m in got] == [f"{n}a" for n in range(6)]  # in the order they were sent
        await transport.close()

    asyncio.run(run())


def test_closing_a_stream_hands_back_what_it_held_and_what_it_was_leasing(tmp_path: Path) -> None:
    """A busy consumer leases its next batch while handling the last; leaving must not strand it."""

    async def run() -> None:
        path = str(tmp_path / "broker.db")
        transport = EmbeddedTransport(path, lease=30.0)
        await transport.connect()
        await transport.declare(TOPOLOGY)
        await transport.send("ex", [WireMessage(f"a.{n}", b"{}", message_id=f"m{n}") for n in range(10)])
        consuming = transport._consuming
        gate, real_lease, calls = asyncio.Event(), consuming._lease, []

        async def gated_lease(queue: str, limit: int) -> list[object]:
            calls.append(limit)
            if len(calls) == 2:
                await asyncio.wait_for(gate.wait(), 5)  # the second lease waits while the test settles
            return await real_lease(queue, limit)  # type: ignore[return-value]

        consuming._lease = gated_lease  # type: ignore[assignment,method-assign]
        stream = transport.consume(QueueSpec("q"), prefetch=4)
        first = [await anext(stream) for _ in range(4)]  # type: ignore[call-overload]  # a full batch
        for delivery in first[:2]:
            await delivery.ack()
        fifth = asyncio.ensure_future(anext(stream))  # type: ignore[call-overload]  # leases m4, m5 (gated)
        await until(lambda: len(calls) == 2)
        settling = [asyncio.ensure_future(d.ack()) for d in first[2:]]  # settled while that lease runs
        gate.set()
        assert (await fifth).message.message_id == "m4"
        await asyncio.gather(*settling)
        # the batch came back full and made room: the lease taken ahead holds m6, m7
        await until(lambda: leased(path) == 4)  # m4, m5 from the batch; m6, m7 taken ahead
        assert calls == [4, 2, 2]
        await stream.aclose()  # type: ignore[attr-defined]
        assert leased(path) == 0  # nothing waits for its 30 s lease to run out
        back = await asyncio.wait_for(take(transport, "q", 6), 5)
        assert [m.message_id for m in back] == [f"m{n}" for n in range(4, 10)]
        await transport.close()

    asyncio.run(run())
