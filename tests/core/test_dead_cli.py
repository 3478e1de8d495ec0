"""``tidings dead``: a consumer's dead letters from the command line, on every transport that keeps them.

Each story runs the real command in processes, as an operator does: ``tidings serve`` runs a
consumer whose handler fails until a file says it is healed; three events die (after two
attempts), one passes; then ``tidings dead list/show/requeue/drop`` — checked by exit code,
stdout and stderr — and the consumer handles the requeued events again as first attempts. A
ledger ends each story: every published event was handled, or dropped on purpose; none lost.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.clirun import ROOT, tidings
from tests.conftest import delete_amqp_topology, require_service
from tests.transports.test_runtime_conformance import RUNS_THE_SUITE
from tidings import App, Bus
from tidings.transport import TRANSPORTS, transport_plugin

WAIT = 60.0
ERROR = "ValueError('boom " + "x" * 90 + "')"  # a line well past 80 columns

HANDLER = """
import json
from pathlib import Path


def handle(event, ctx):
    ok = not event.body.get("fail") or Path("healed").exists()
    line = {"id": event.id, "attempt": ctx.attempt, "ok": ok}
    with open("handled.log", "a") as log:
        log.write(json.dumps(line) + "\\n")
    if not ok:
        raise ValueError("boom " + "x" * 90)
"""


def consumer_config(transport: str, queue: str, exchange: str) -> str:
    return (
        f'[connectors.t]\ntransport = "t"\nexchange = "{exchange}"\n'
        f'[consumers.svc]\ntransport = "t"\nexchange = "{exchange}"\nqueue = "{queue}"\n'
        'bindings = ["dead.#"]\napp = "handler:handle"\nmax_attempts = 2\nretry_schedule = [0.1]\n'
        f'[bus]\nhome = "home"\n[transports.t]\n{transport}'
    )


TRANSPORTS_UNDER_TEST = {
    "embedded": 'kind = "embedded"\npath = "broker.db"\nlease = 1.0\n',
    "amqp": 'kind = "amqp"\nurl = "amqp://guest:guest@127.0.0.1:5672/"\nretry_delays = [1]\n',
    "stomp": 'kind = "stomp"\nurl = "stomp://guest:guest@127.0.0.1:61613/"\nretry_delays = [1]\n',
    # one partition: the dead letters' order is known, so acting out of order is too
    "kafka": 'kind = "kafka"\nurl = "kafka://127.0.0.1:9092"\npartitions = 1\nsession_timeout = 2.0\n'
    "retry_delays = [1]\n",
}
SERVICES = {"amqp": (5672, "RabbitMQ"), "stomp": (61613, "RabbitMQ's STOMP plugin"), "kafka": (9092, "Kafka")}


class Story:
    """A consumer service on one transport, run by ``tidings serve``, and what it handled."""

    def __init__(self, home: Path, kind: str) -> None:
        self.home, self.kind = home, kind
        tag = uuid.uuid4().hex[:8]
        self.exchange, self.queue = f"dead-{tag}", f"dead-{tag}.svc"
        (home / "tidings.toml").write_text(
            consumer_config(TRANSPORTS_UNDER_TEST[kind], self.queue, self.exchange)
        )
        (home / "handler.py").write_text(HANDLER)
        self.serve: subprocess.Popen[bytes] | None = None
        self.published: list[str] = []

    def start(self) -> None:
        self.serve = subprocess.Popen(
            [sys.executable, "-m", "tidings", "serve", "--log-level", "WARNING"],
            cwd=self.home,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        # the consumer has declared its queue once its dead letters can be listed
        self.wait_for(lambda: self.dead("list", "svc").returncode == 0, "the consumer's queue")

    def stop(self) -> None:
        if self.serve is not None and self.serve.poll() is None:
            self.serve.send_signal(signal.SIGTERM)
            try:
                self.serve.wait(30)
            except subprocess.TimeoutExpired:
                self.serve.kill()
                self.serve.wait(10)

    def publish(self, *bodies: dict[str, Any]) -> list[str]:
        bus = Bus.load(self.home / "tidings.toml")
        try:
            ids = [bus.publish(f"dead.n{n}", body).id for n, body in enumerate(bodies)]
        finally:
            bus.close()
        self.published += ids
        return ids

    def dead(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return tidings(self.home, "dead", *args, env=env)

    def letters(self) -> list[dict[str, Any]]:
        listed = self.dead("list", "svc", "--json")
        assert listed.returncode == 0, listed.stderr
        return [orjson.loads(line) for line in listed.stdout.splitlines()]

    def handled(self) -> list[dict[str, Any]]:
        log = self.home / "handled.log"
        return [orjson.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    def wait_for(self, condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + WAIT
        while not condition():
            assert self.serve is None or self.serve.poll() is None, "tidings serve exited"
            assert time.monotonic() < deadline, f"not reached within {WAIT} s: {what}"
            time.sleep(0.2)


MARKS = {"amqp": [pytest.mark.rabbitmq], "stomp": [pytest.mark.stomp], "kafka": [pytest.mark.kafka]}


@pytest.fixture(params=[pytest.param(kind, marks=MARKS.get(kind, [])) for kind in TRANSPORTS_UNDER_TEST])
def story(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Story]:
    kind = request.param
    if kind in SERVICES:
        port, name = SERVICES[kind]
        require_service("127.0.0.1", port, name)
    told = Story(tmp_path, kind)
    try:
        yield told
    finally:
        told.stop()
        if kind in ("amqp", "stomp"):
            asyncio.run(
                delete_amqp_topology("amqp://guest:guest@127.0.0.1:5672/", [told.queue], [told.exchange])
            )


def one_line_error(result: subprocess.CompletedProcess[str], code: int, *said: str) -> None:
    assert result.returncode == code, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tidings: error: "), result.stderr
    for part in said:
        assert part in lines[0], lines[0]


def test_dead_letters_listed_shown_requeued_and_dropped_lose_nothing(story: Story) -> None:
    story.start()
    dying = story.publish({"fail": True, "n": 1}, {"fail": True, "n": 2}, {"fail": True, "n": 3})
    story.publish({"n": 4})
    story.wait_for(lambda: len(story.letters()) == 3, "three dead letters")
    letters = story.letters()
    assert sorted(letter["message_id"] for letter in letters) == sorted(dying)
    for letter in letters:
        assert letter["attempts"] == 2 and letter["reason"] == "failed 2 times"
        assert letter["last_error"] == ERROR and letter["topic"].startswith("dead.n") and letter["died"]

    check_plain_list(story, letters)
    check_show(story, letters[0])
    assert [letter["id"] for letter in story.letters()] == [letter["id"] for letter in letters]  # none taken

    # the newest first and the middle one next: out of order (a RabbitMQ queue is read from its
    # head and the rest handed back; on Kafka they are marked, the group cannot skip them)
    (story.home / "healed").write_text("")
    oldest, middle, newest = letters
    requeued = story.dead("requeue", "svc", "--id", newest["id"])
    assert requeued.returncode == 0, requeued.stderr
    assert requeued.stdout.strip() == f"requeued 1 dead letter(s) from {story.queue}.dead to {story.queue}"
    story.wait_for(lambda: _handled_ok(story, newest["message_id"]), "the requeued event handled again")
    again = [h for h in story.handled() if h["id"] == newest["message_id"] and h["ok"]]
    assert [h["attempt"] for h in again] == [1], "a requeued event starts its attempts afresh"
    assert [letter["id"] for letter in story.letters()] == [oldest["id"], middle["id"]]

    dropped = story.dead("drop", "svc", "--id", middle["message_id"])  # by message id this time
    assert dropped.returncode == 0, dropped.stderr
    assert dropped.stdout.strip() == f"dropped 1 dead letter(s) from {story.queue}.dead"
    assert [letter["id"] for letter in story.letters()] == [oldest["id"]]

    rest = story.dead("requeue", "svc", "--all")
    assert rest.returncode == 0 and "requeued 1 dead letter(s)" in rest.stdout, rest.stderr
    story.wait_for(lambda: _handled_ok(story, oldest["message_id"]), "the last requeued event")
    assert story.letters() == []
    assert story.dead("list", "svc").stdout.strip() == f"{story.queue}.dead: no dead letters"

    # the ledger: every event handled, or dropped on purpose; nothing lost, nothing from nowhere
    handled = {h["id"] for h in story.handled() if h["ok"]}
    lost = set(story.published) - handled - {middle["message_id"]}
    assert not lost, f"lost: {lost}"
    assert middle["message_id"] not in handled, "a dropped dead letter came back"
    assert handled <= set(story.published)
    if story.kind == "kafka":
        check_kafka_bookkeeping(story, [newest, middle])


def check_kafka_bookkeeping(story: Story, out_of_order: list[dict[str, Any]]) -> None:
    """What docs/transports/kafka.md says: the group <queue>.dead past all three, and a marker in
    <queue>.dead.handled for each dead letter dealt with out of order."""
    from confluent_kafka import Consumer, TopicPartition

    dead = f"{story.queue}.dead"
    reader = Consumer({"bootstrap.servers": "127.0.0.1:9092", "group.id": dead, "enable.auto.commit": False})
    try:
        assert reader.committed([TopicPartition(dead, 0)], timeout=10)[0].offset == 3
        reader.assign([TopicPartition(f"{dead}.handled", 0, 0)])  # one partition, as configured
        marks, deadline = {}, time.monotonic() + 20
        while len(marks) < 2 and time.monotonic() < deadline:
            for record in reader.consume(10, 0.5):
                if record.error() is None:
                    marks[record.key().decode()] = orjson.loads(record.value())
    finally:
        reader.close()
    assert {key: mark["action"] for key, mark in marks.items()} == {
        out_of_order[0]["id"]: "requeued",
        out_of_order[1]["id"]: "dropped",
    }
    assert [mark["message_id"] for mark in marks.values()] == [x["message_id"] for x in out_of_order]


def _handled_ok(story: Story, event_id: str) -> bool:
    return any(h["id"] == event_id and h["ok"] for h in story.handled())


def check_plain_list(story: Story, letters: list[dict[str, Any]]) -> None:
    """Piped: a header and one aligned line per dead letter, no box, nothing cut at 80 columns."""
    listed = story.dead("list", "svc", env={"COLUMNS": "80"})
    assert listed.returncode == 0 and listed.stderr == "", listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split() == ["id", "topic", "died", "attempts", "reason", "last", "error"]
    assert len(rows) == 3 and not any(c in listed.stdout for c in "┃│─╭")
    for row, letter in zip(rows, letters, strict=True):
        assert row.startswith(letter["id"] + " ") and row.endswith(ERROR) and len(row) > 80
        assert row.index(letter["topic"]) == header.index("topic")  # aligned
    limited = story.dead("list", "svc", "--limit", "1", "--json")
    assert [orjson.loads(line)["id"] for line in limited.stdout.splitlines()] == [letters[0]["id"]]


def check_show(story: Story, letter: dict[str, Any]) -> None:
    shown = story.dead("show", "svc", letter["id"])
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout
    assert f"message id:  {letter['message_id']}" in text and f"last error:  {ERROR}" in text
    assert "reason:      failed 2 times" in text and "attempts:    2" in text
    assert "x-tidings-queue: " + story.queue in text and '  "fail": true,\n' in text
    as_json = orjson.loads(story.dead("show", "svc", letter["message_id"], "--json").stdout)
    assert as_json["id"] == letter["id"] and as_json["body"]["fail"] is True
    assert as_json["queue"] == story.queue and as_json["attempts"] == 2
    one_line_error(story.dead("show", "svc", "no-such-id"), 4, "no dead letter 'no-such-id'")
    one_line_error(story.dead("drop", "svc", "--id", "no-such-id"), 4, "no dead letter 'no-such-id'")


# -- usage and configuration errors (the embedded default: no broker needed) -------------------


@pytest.fixture
def declared(tmp_path: Path) -> Path:
    """An embedded broker with the consumer's queue declared (and no dead letters)."""
    (tmp_path / "tidings.toml").write_text(
        consumer_config(TRANSPORTS_UNDER_TEST["embedded"], "svc-q", "ex")
        + '[transports.out]\nkind = "file"\npath = "out.jsonl"\n'
        + '[transports.away]\nkind = "amqp"\nurl = "amqp://guest:guest@127.0.0.1:1/"\nconnect_timeout = 2\n'
    )
    bus = Bus.load(tmp_path / "tidings.toml")
    try:
        asyncio.run(App("svc", queue="svc-q", transport="t", exchange="ex").declare(bus))
    finally:
        bus.close()
    return tmp_path


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (
            ["requeue", "svc"],
            2,
            "say which dead letters: --id ID (repeatable) or --all; see tidings dead requeue --help",
        ),
        (["drop", "svc"], 2, "say which dead letters"),
        (["drop", "svc", "--id", "1", "--all"], 2, "not both"),
        (["list", "nosuch", "--transport", "t"], 4, "has no queue 'nosuch.dead'"),
        (["show", "svc", "42"], 4, "no dead letter '42' in svc-q.dead"),
        (["requeue", "svc", "--id", "42"], 4, "no dead letter '42' in 'svc-q.dead'"),
        (["list", "svc", "--transport", "nope"], 3, "no transport named 'nope'"),
        (["list", "svc-q"], 3, "QUEUE is not a configured consumer: say which transport"),
        (["list", "q", "--transport", "out"], 3, "the file transport keeps no dead letters"),
        (["list", "q", "--transport", "away"], 6, "cannot connect to amqp://guest:***@127.0.0.1:1/"),
    ],
)
def test_errors_are_one_line_with_an_exit_code(
    declared: Path, args: list[str], code: int, message: str
) -> None:
    one_line_error(tidings(declared, "dead", *args), code, message)


def test_a_queue_name_on_the_default_transport(tmp_path: Path) -> None:
    """A raw queue name goes to the transport 'local' when --transport is not given."""
    result = tidings(tmp_path, "dead", "list", "svc-q")  # no config: the embedded default
    one_line_error(result, 4, "the embedded broker broker.db has no queue 'svc-q.dead'")


def test_every_transport_that_keeps_dead_letters_lets_an_operator_see_them() -> None:
    for kind in TRANSPORTS.names():
        cls = transport_plugin(kind).load("transport")
        if kind in RUNS_THE_SUITE:  # it acknowledges and consumes: it has dead letters
            assert hasattr(cls, "dead_letters"), f"transport {kind!r}: implement dead_letters()"


@pytest.mark.rabbitmq
async def test_counting_rabbitmq_dead_letters_hands_none_out(rabbitmq: str) -> None:
    """The consumers page counts dead letters on every view, for anyone: a look that took them
    and gave them back would count as a delivery of each (a quorum queue's delivery limit drops
    them), so the count is the queue's own and the messages stay as they were."""
    import aiormq

    from tests.transports.conformance import hold, message
    from tidings.transport import Binding, ExchangeSpec, QueueSpec, Topology
    from tidings.transports.amqp import AmqpTransport

    tag = uuid.uuid4().hex[:8]
    exchange, queue = f"count-{tag}", QueueSpec(f"count-{tag}.q", [Binding(f"count-{tag}", "#")])
    transport = AmqpTransport(rabbitmq)
    try:
        await transport.connect()
        await transport.declare(Topology([ExchangeSpec(exchange)], [queue]))
        await transport.send(exchange, [message("c.1"), message("c.2")])
        stream = transport.consume(queue, prefetch=2)
        for delivery in await hold(stream, 2):
            await delivery.reject("for the count")
        await stream.aclose()  # type: ignore[attr-defined]
        dead = transport.dead_letters()
        assert [await dead.count(queue.name, 100) for _ in range(3)] == [2, 2, 2]
        assert await dead.count(queue.name, 1) == 1
        connection = await aiormq.connect(rabbitmq)
        channel = await connection.channel()
        first = await channel.basic_get(queue.dead_letter_queue, no_ack=True)
        await connection.close()
        assert first.delivery.redelivered is False  # never handed out before
    finally:
        await transport.close()
        await delete_amqp_topology(rabbitmq, [queue.name], [exchange])
