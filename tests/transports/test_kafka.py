"""The Kafka transport beyond the suite: topics and keys from config, limits, errors, rebalances."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Consumer, TopicPartition

from tests.clirun import tidings
from tests.ledger import check
from tests.transports.conformance import hold, message, take
from tests.waiting import until
from tidings.errors import ConfigError, TransportError
from tidings.retry import HAND_BACK_BASE
from tidings.transport import Binding, Delivery, ExchangeSpec, Outcome, QueueSpec, Topology, WireMessage
from tidings.transports.kafka import KafkaTransport
from tidings.transports.kafka import consume as kafka_consume
from tidings.transports.kafka import delivery as kafka_delivery
from tidings.transports.kafka import groups as kafka_groups
from tidings.transports.kafka.records import Record

pytestmark = pytest.mark.kafka


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def test_an_unreachable_broker_is_one_clear_error() -> None:
    transport = KafkaTransport(url="kafka://user:hidden-secret@127.0.0.1:1", connect_timeout=2)
    with pytest.raises(TransportError) as refused:
        await transport.connect()
    text = str(refused.value)
    assert text.startswith("no Kafka broker answered at kafka://user:***@127.0.0.1:1")
    assert "hidden-secret" not in text and "\n" not in text


def write_config(folder: Path, transport: str) -> None:
    (folder / "tidings.toml").write_text(
        f'[bus]\nhome = "home"\n\n[transports.k]\nkind = "kafka"\n{transport}\n'
        '[connectors.k]\ntransport = "k"\nexchange = "cli"\n'
    )


def test_doctor_and_dispatch_say_the_broker_is_away_in_one_line(tmp_path: Path) -> None:
    write_config(tmp_path, 'url = "kafka://127.0.0.1:1"\nconnect_timeout = 2')
    assert tidings(tmp_path, "publish", "a.b", "--body", "{}").returncode == 0
    for args in (["doctor"], ["dispatch", "--once"]):
        done = tidings(tmp_path, *args, timeout=60)
        assert done.returncode == 6, (args, done.stdout, done.stderr)
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert any("no Kafka broker answered at kafka://127.0.0.1:1" in line for line in lines), done.stderr
        assert "Traceback" not in done.stderr and "%3|" not in done.stderr  # nor librdkafka's own
    assert "1" in tidings(tmp_path, "backlog", "list").stdout  # the event waits: the cursor kept it


@pytest.mark.parametrize(
    ("option", "problem"),
    [
        ('topic = "events/bugzilla"', "not a Kafka topic name"),
        ('topic = "{routing_key}"', "only {exchange}"),
        ('key = "bug_id"', "key must be one of"),
        ('url = "http://127.0.0.1:9092"', "url must be kafka://"),
        ('url = "kafka://127.0.0.1:9092/?acks=1"', "takes no path or ?options"),
        ('librdkafka = { "bogus.thing" = 1 }', 'No such configuration property: "bogus.thing"'),
        ('librdkafka = { "socket.timeout.ms" = "soon" }', "Invalid value for configuration property"),
        ('librdkafka = { "bootstrap.servers" = "elsewhere:9092" }', "'bootstrap.servers' is tidings' own"),
        ('librdkafka = { "enable.auto.commit" = true }', "always false"),
        ('librdkafka = { "metadata.broker.list" = "elsewhere:9092" }', "set url instead"),
        (
            'session_timeout = 20\nlibrdkafka = { "max.poll.interval.ms" = 12000 }',
            "'max.poll.interval.ms' (12000) must be at least session_timeout (20000 ms)",
        ),
    ],
)
def test_a_kafka_option_that_cannot_work_is_a_config_error_naming_it(
    tmp_path: Path, option: str, problem: str
) -> None:
    write_config(tmp_path, option)
    done = tidings(tmp_path, "doctor")
    assert done.returncode == 3, done.stderr
    assert problem in done.stderr and "transports.k" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


async def test_a_queue_bound_on_an_exchange_that_can_be_no_topic_is_a_config_error(kafka: str) -> None:
    """(``tidings consume`` said "consuming" first, then failed as if the broker had.)"""
    transport = KafkaTransport(url=kafka)
    queue = QueueSpec(unique("badex-q"), [Binding("bad/ex", "#")])
    try:
        with pytest.raises(ConfigError, match="exchange 'bad/ex' cannot be used on Kafka: 'bad/ex' is not a"):
            await transport.declare(Topology([ExchangeSpec("bad/ex")], [queue]))
    finally:
        await transport.close()


async def test_a_record_over_the_size_limit_is_refused_alone(kafka: str) -> None:
    transport = KafkaTransport(url=kafka, max_message_bytes=10_000)
    exchange = unique("big")
    try:
        await transport.connect()
        await transport.declare(Topology([ExchangeSpec(exchange)]))
        results = await transport.send(
            exchange,
            [message("a.small"), message("a.huge", body=b'"' + b"x" * 20_000 + b'"'), message("a.b")],
        )
        assert [r.outcome for r in results] == [Outcome.DELIVERED, Outcome.REFUSED, Outcome.DELIVERED]
        assert "max_message_bytes (10000)" in results[1].reason
    finally:
        await transport.close()


async def test_a_record_just_within_the_limit_can_still_be_retried_and_dead_lettered(kafka: str) -> None:
    """A retry's and a dead letter's copy carry more headers than the record sent: a record the
    dispatcher sent within ``max_message_bytes`` must never become one that cannot be settled
    (its partition would stand still)."""
    transport = KafkaTransport(url=kafka, max_message_bytes=10_000)
    exchange = unique("edge")
    queue = QueueSpec(unique("edge-q"), [Binding(exchange, "#")])
    error = "é" * 2000  # cut to 1,000 characters: 2,000 bytes in each copy's headers
    try:
        await transport.connect()
        await transport.declare(Topology([ExchangeSpec(exchange)], [queue]))
        body = b'"' + b"x" * 9_000 + b'"'
        too_big = message("a.over", body=body + b" " * 1_000)
        sent = await transport.send(exchange, [message("a.edge", body=body), too_big])
        assert [r.outcome for r in sent] == [Outcome.DELIVERED, Outcome.REFUSED]
        stream = transport.consume(queue, prefetch=10)
        (first,) = await hold(stream, 1)
        await first.retry(0, error)
        (again,) = await hold(stream, 1)
        assert again.attempt == 2 and again.message.body == body
        await again.reject(error)
        await stream.aclose()  # type: ignore[attr-defined]
        dead = transport.consume(QueueSpec(f"{queue.name}.dead"), prefetch=10)
        (letter,) = await hold(dead, 1)
        await dead.aclose()  # type: ignore[attr-defined]
        assert letter.message.body == body
        assert letter.message.headers["x-tidings-reason"] == error[:1000]
    finally:
        await transport.close()


async def test_a_foreign_record_over_the_limit_is_dead_lettered_without_its_body(kafka: str) -> None:
    """Another producer may write records larger than this transport's max_message_bytes: no
    copy of one can be made, so its retry and its dead letter failed for ever, and its partition
    was committed no further. Its dead letter now says why and where it is, without the body."""
    from confluent_kafka import Producer

    transport = KafkaTransport(url=kafka, max_message_bytes=10_000, partitions=1)
    exchange = unique("huge")
    queue = QueueSpec(unique("huge-q"), [Binding(exchange, "#")])
    try:
        await transport.connect()
        await transport.declare(Topology([ExchangeSpec(exchange)], [queue]))
        raw = Producer({"bootstrap.servers": kafka.removeprefix("kafka://")})
        for key in ("a.rejected", "a.retried"):
            raw.produce(exchange, value=b"x" * 50_000, headers=[("x-tidings-routing-key", key.encode())])
        raw.flush(10)
        stream = transport.consume(queue, prefetch=10)
        rejected, retried = await hold(stream, 2)
        await rejected.reject("not JSON")
        await retried.retry(0, "handler failed")
        await stream.aclose()  # type: ignore[attr-defined]
        dead = transport.consume(QueueSpec(f"{queue.name}.dead"), prefetch=10)
        letters = await hold(dead, 2)
        await dead.aclose()  # type: ignore[attr-defined]
    finally:
        await transport.close()
    reasons = [letter.message.headers["x-tidings-reason"] for letter in letters]
    assert [letter.message.body for letter in letters] == [b"", b""]
    whys = ("not JSON", "could not be retried: handler failed")
    for reason, offset, why in zip(reasons, (0, 1), whys, strict=True):
        assert reason.startswith("Kafka takes no copy of it (Kafka never takes this record"), reason
        assert f"the record (50,000 bytes) is at {exchange} partition 0 offset {offset}. {why}" in reason
    assert committed_position(kafka, queue.name, exchange) == 2  # its partition goes on


async def test_a_copy_kafka_does_not_take_is_tried_again_then_handed_back(
    kafka: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A retry's copy is made again after a refusal; given up, the message is handed back (left
    unsettled, it kept a prefetch place, and the consumer stood still once all were taken) and
    handed out again after a backoff (it used to wait for the next rebalance or restart, its
    partition's commits with it)."""
    transport = KafkaTransport(url=kafka, retry_delays=[1], partitions=1)
    exchange = unique("fwd")
    queue = QueueSpec(unique("fwd-q"), [Binding(exchange, "#")])
    refusals = [1]
    real_forward = transport.forward

    async def refusing(record: Record) -> None:
        if refusals[0] > 0:
            refusals[0] -= 1
            raise TransportError("Kafka did not take the message")
        await real_forward(record)

    monkeypatch.setattr(transport, "forward", refusing)
    monkeypatch.setattr(kafka_delivery, "FORWARD_TRIES", 2)
    try:
        await transport.connect()
        await transport.declare(Topology([ExchangeSpec(exchange)], [queue]))
        await transport.send(exchange, [message("a.one"), message("a.two")])
        stream = transport.consume(queue, prefetch=1)
        (first,) = await hold(stream, 1)
        await first.retry(0, "try 1")  # refused once, then taken
        refusals[0] = 2
        (second,) = await hold(stream, 1)  # the next place: a.one was settled
        with pytest.raises(TransportError, match="did not take"):
            await second.retry(0, "try 1")
        handed_back_at = time.monotonic()
        came: dict[str, tuple[int, bool, float]] = {}
        for _ in range(2):  # a.one from its retry topic; a.two again, only if it gave its place back
            (delivery,) = await hold(stream, 1)
            came[delivery.message.routing_key] = (delivery.attempt, delivery.redelivered, time.monotonic())
            await delivery.ack()
        await stream.aclose()  # type: ignore[attr-defined]
        assert came["a.one"][:2] == (2, False)
        assert came["a.two"][:2] == (1, True)  # uncounted: its handler's try did not settle
        assert came["a.two"][2] - handed_back_at >= HAND_BACK_BASE / 2  # not at once: no loop
    finally:
        await transport.close()
    assert committed_position(kafka, queue.name, exchange) == 2  # both settled: committed past them


def committed_position(kafka: str, group: str, topic: str) -> int:
    """Where ``group`` committed partition 0 of ``topic``, as the broker says."""
    consumer = Consumer({"bootstrap.servers": kafka.removeprefix("kafka://"), "group.id": group})
    try:
        (found,) = consumer.committed([TopicPartition(topic, 0)], timeout=10)
    finally:
        consumer.close()
    return int(found.offset)


async def test_positions_are_committed_while_a_batch_is_still_being_handled(kafka: str) -> None:
    """The consume loop polls only between the batches it reads: positions were committed only
    there, so a member killed while a batch's handlers took long handed everything they had
    finished to the next reader again (the docs promise a commit every 0.2 s)."""
    transport = KafkaTransport(url=kafka, partitions=1)
    exchange = unique("commits")
    queue = QueueSpec(unique("commits-q"), [Binding(exchange, "#")])
    try:
        await transport.connect()
        await transport.declare(Topology([ExchangeSpec(exchange)], [queue]))
        await transport.send(exchange, [message(f"a.n{n}") for n in range(10)])
        stream = transport.consume(queue, prefetch=10)
        deliveries = await hold(stream, 10)  # all it may hold: it asks Kafka for no more
        for delivery in deliveries[:4]:
            await delivery.ack()
        deadline = time.monotonic() + 10
        while (position := await asyncio.to_thread(committed_position, kafka, queue.name, exchange)) != 4:
            assert time.monotonic() < deadline, f"committed {position}, not the 4 finished"
            await asyncio.sleep(0.2)
        for delivery in deliveries[4:]:
            await delivery.release()
        await stream.aclose()  # type: ignore[attr-defined]
    finally:
        await transport.close()


async def test_a_cloudevents_record_from_another_producer_is_selected_by_its_subject(kafka: str) -> None:
    """A producer that knows nothing of tidings writes no x-tidings-routing-key: the record was
    read with an empty routing key, skipped by every binding but ``#`` and committed past,
    without a word. CloudEvents' Kafka binding names the topic in ce_subject."""
    from confluent_kafka import Producer

    transport = KafkaTransport(url=kafka, partitions=1)
    exchange = unique("foreign")
    queue = QueueSpec(unique("foreign-q"), [Binding(exchange, "lab.*.done")])
    try:
        await transport.connect()
        await transport.declare(Topology([ExchangeSpec(exchange)], [queue]))
        raw = Producer({"bootstrap.servers": kafka.removeprefix("kafka://")})
        for n, subject in enumerate(["lab.job.done", "lab.job.started", "lab.build.done"]):
            ce = {
                "specversion": "1.0",
                "id": f"raw-{n}",
                "source": "/lab",
                "type": "lab.v1",
                "subject": subject,
            }
            headers = [(f"ce_{name}", value.encode()) for name, value in ce.items()]
            raw.produce(
                exchange, value=b'{"n": 1}', headers=[*headers, ("content-type", b"application/json")]
            )
        raw.flush(10)
        stream = transport.consume(queue, prefetch=10)
        got = await hold(stream, 2)
        for delivery in got:
            await delivery.ack()
        await stream.aclose()  # type: ignore[attr-defined]
    finally:
        await transport.close()
    assert [d.message.routing_key for d in got] == ["lab.job.done", "lab.build.done"]


def test_a_consumers_timeouts_agree_as_librdkafka_wants_them() -> None:
    """A session timeout past librdkafka's default poll interval (300 s), or a poll interval set
    below the 45 s session librdkafka assumes, made every consumer fail at start."""
    for transport in (
        KafkaTransport(url="kafka://127.0.0.1:1", session_timeout=400),
        KafkaTransport(url="kafka://127.0.0.1:1", librdkafka={"max.poll.interval.ms": 12_000}),
    ):
        config = transport.consumer_config("some-queue")
        assert config["max.poll.interval.ms"] >= config["session.timeout.ms"]
        Consumer(config).close()  # librdkafka takes them together (it raises otherwise)


async def test_a_long_retry_never_holds_up_a_shorter_one_behind_it(kafka: str) -> None:
    """Both go to the one retry topic (1 s); the wish for 3 s goes round it again instead of
    pausing its partition, so the later, shorter retry comes back first."""
    transport = KafkaTransport(url=kafka, retry_delays=[1], partitions=1)
    exchange = unique("wait")
    queue = QueueSpec(unique("wait-q"), [Binding(exchange, "#")])
    try:
        await transport.connect()
        await transport.declare(Topology([ExchangeSpec(exchange)], [queue]))
        await transport.send(exchange, [message("a.same"), message("a.same")])
        stream = transport.consume(queue, prefetch=10)
        long, short = await hold(stream, 2)
        start = asyncio.get_running_loop().time()
        await long.retry(3.0, "later")
        await short.retry(0.5, "soon")
        first, second = [], []
        for arrived in (first, second):
            (delivery,) = await hold(stream, 1)
            arrived.extend([delivery, asyncio.get_running_loop().time() - start])
            await delivery.ack()
        await stream.aclose()  # type: ignore[attr-defined]
    finally:
        await transport.close()
    assert first[0].message.message_id == short.message.message_id and 0.8 <= first[1] < 2.5
    assert second[0].message.message_id == long.message.message_id and second[1] >= 2.9
    assert second[0].attempt == 2  # going round again is not another attempt


async def test_topics_from_routing_key_words_and_a_key_from_the_body(kafka: str) -> None:
    """``bugzilla.{0}``: one topic per target; ``body:event.bug_id``: one bug's events in order."""
    prefix = unique("bz").replace("-", "_")
    transport = KafkaTransport(url=kafka, topic=prefix + ".{0}", key="body:event.bug_id", partitions=4)
    bugs = QueueSpec(unique("bugs"), [Binding("bugzilla", "bug.#")])
    try:
        await transport.connect()
        await transport.declare(Topology([ExchangeSpec("bugzilla")], [bugs]))
        sent = [
            WireMessage(
                routing_key=f"{target}.modify", body=b'{"event": {"bug_id": %d, "n": %d}}' % (n % 3, n)
            )
            for n in range(30)
            for target in ("bug", "comment")
        ]
        assert all(r.outcome is Outcome.DELIVERED for r in await transport.send("bugzilla", sent))
        assert {f"{prefix}.bug", f"{prefix}.comment"} <= await transport.topic_names(refresh=True)
        stream = transport.consume(bugs, prefetch=100)
        got = await hold(stream, 30)
        for delivery in got:
            await delivery.ack()
        await stream.aclose()  # type: ignore[attr-defined]
        assert {d.message.routing_key for d in got} == {"bug.modify"}  # comments are in their own topic
        for bug in range(3):  # each bug's messages in the order they were sent, across 4 partitions
            bodies = [orjson.loads(d.message.body)["event"] for d in got]
            order = [body["n"] for body in bodies if body["bug_id"] == bug]
            assert order == sorted(order) and len(order) == 10
    finally:
        await transport.close()


async def test_a_topic_made_while_no_member_ran_is_read_from_its_beginning(kafka: str) -> None:
    """A new queue starts at the end of what exists; declaring it again (every consumer's start)
    must not skip a topic that a routing key word made meanwhile."""
    prefix = unique("words").replace("-", "_")
    transport = KafkaTransport(url=kafka, topic=prefix + ".{2}", partitions=2)
    queue = QueueSpec(unique("svc"), [Binding("adv", "adv.x.*")])
    topology = Topology([ExchangeSpec("adv")], [queue])
    try:
        await transport.connect()
        before = [WireMessage(routing_key="adv.x.old", body=b"%d" % n) for n in range(5)]
        assert all(r.outcome is Outcome.DELIVERED for r in await transport.send("adv", before))
        await transport.declare(topology)  # a new queue: what was there before is not its own
        later = [WireMessage(routing_key="adv.x.fresh", body=b"%d" % n) for n in range(10)]
        assert all(r.outcome is Outcome.DELIVERED for r in await transport.send("adv", later))
        await transport.declare(topology)  # a consumer starts: the queue is declared again
        got = await take(transport, queue, 10, prefetch=100)
    finally:
        await transport.close()
    assert sorted(int(d.message.body) for d in got) == list(range(10))
    assert {d.message.routing_key for d in got} == {"adv.x.fresh"}


async def test_two_new_members_starting_at_once_leave_the_group_at_the_earlier_end(kafka: str) -> None:
    """Both found no position and committed the end each read; the later commit would skip what
    came between. Each member looks again after its commit and puts back its own earlier end."""
    transport = KafkaTransport(url=kafka, partitions=1)
    exchange, group = unique("race"), unique("race-q")
    servers = kafka.removeprefix("kafka://")
    try:
        await transport.connect()
        await transport.declare(Topology([ExchangeSpec(exchange)], []))
        await transport.send(exchange, [message("a.x") for _ in range(3)])
        ours = [TopicPartition(exchange, 0, 3)]  # the first member read the end here...
        await transport.send(exchange, [message("a.x") for _ in range(2)])
        other = Consumer({"bootstrap.servers": servers, "group.id": group, "enable.auto.commit": False})
        other.commit(offsets=[TopicPartition(exchange, 0, 5)], asynchronous=False)  # ...the second here
        other.close()
        first = Consumer({"bootstrap.servers": servers, "group.id": group, "enable.auto.commit": False})
        try:
            kafka_groups.keep_the_earliest_start(first, ours, 10)
            assert committed_position(kafka, group, exchange) == 3  # the two between are the queue's
            kafka_groups.keep_the_earliest_start(first, [TopicPartition(exchange, 0, 4)], 10)
            assert committed_position(kafka, group, exchange) == 3  # an earlier start is never raised
        finally:
            first.close()
    finally:
        await transport.close()


async def test_bindings_that_read_the_same_topics_make_one_subscription(kafka: str) -> None:
    """``*.create`` and ``*.modify`` under ``bugzilla.{0}`` both read every ``<prefix>.<word>``
    topic: librdkafka refuses a subscription that names one pattern twice."""
    prefix = unique("bz").replace("-", "_")
    transport = KafkaTransport(url=kafka, topic=prefix + ".{0}")
    queue = QueueSpec(unique("svc"), [Binding("bz", "*.create"), Binding("bz", "*.modify")])
    try:
        await transport.connect()
        await transport.declare(Topology([ExchangeSpec("bz")], [queue]))
        sent = [WireMessage(routing_key=key, body=b"{}") for key in ("bug.create", "bug.modify", "bug.x")]
        assert all(r.outcome is Outcome.DELIVERED for r in await transport.send("bz", sent))
        got = await take(transport, queue, 2, prefetch=10)
    finally:
        await transport.close()
    assert sorted(d.message.routing_key for d in got) == ["bug.create", "bug.modify"]


async def test_a_rebalance_loses_nothing_and_hands_nothing_out_twice_in_the_normal_case(kafka: str) -> None:
    """Two members share a queue; a third joins in the middle; every message is handled once."""
    exchange, name = unique("rebal"), unique("rebal-q")
    queue = QueueSpec(name, [Binding(exchange, "#")])
    producer = KafkaTransport(url=kafka, partitions=4, session_timeout=2.0)
    await producer.connect()
    await producer.declare(Topology([ExchangeSpec(exchange)], [queue]))
    handled: list[str] = []
    total = 600

    async def member(stop: asyncio.Event) -> None:
        transport = KafkaTransport(url=kafka, partitions=4, session_timeout=2.0)
        stream = transport.consume(queue, prefetch=20)

        async def handle() -> None:
            async for delivery in stream:
                await asyncio.sleep(0.002)  # a handler's work
                handled.append(delivery.message.message_id or "")
                await delivery.ack()

        handling = asyncio.create_task(handle())
        await stop.wait()
        handling.cancel()
        await asyncio.gather(handling, return_exceptions=True)
        await stream.aclose()  # type: ignore[attr-defined]
        await transport.close()

    stop = asyncio.Event()
    members = [asyncio.create_task(member(stop)) for _ in range(2)]
    sent = [message(f"r.{n}") for n in range(total)]
    for start in range(0, total, 100):
        assert all(
            r.outcome is Outcome.DELIVERED for r in await producer.send(exchange, sent[start : start + 100])
        )
        if start == 300:
            members.append(asyncio.create_task(member(stop)))  # joins mid-run: a rebalance
        await asyncio.sleep(0.3)
    deadline = asyncio.get_running_loop().time() + 60
    while len(set(handled)) < total and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.1)
    stop.set()
    await asyncio.gather(*members)
    await producer.close()
    ids = [m.message_id or "" for m in sent]
    verdict = check(ids, ids, handled)
    print(verdict.line("kafka rebalance: 2 members, a third joins mid-run"))
    assert verdict.ok and verdict.lost == 0
    assert verdict.duplicated == 0  # the member giving partitions up committed what it finished


async def test_a_partition_paused_when_a_rebalance_came_is_read_again_after_it(
    kafka: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A member whose prefetch is full pauses its partitions. Its handler finishes while they are
    revoked (the revoke waits for it); librdkafka keeps them paused through the reassignment, which
    gave some back to the same member: they must be read again, not stand still until a restart."""
    exchange, name = unique("pause"), unique("pause-q")
    queue = QueueSpec(name, [Binding(exchange, "#")])
    revoking = threading.Event()
    real_revoke = kafka_consume.GroupConsumer._on_revoke

    def on_revoke(group: kafka_consume.GroupConsumer, consumer: object, partitions: list) -> None:
        revoking.set()
        real_revoke(group, consumer, partitions)  # type: ignore[arg-type]

    monkeypatch.setattr(kafka_consume.GroupConsumer, "_on_revoke", on_revoke)
    first, second = (KafkaTransport(url=kafka, partitions=2, session_timeout=3.0) for _ in range(2))
    handled: list[str] = []
    reading: list[asyncio.Task[None]] = []

    async def read(stream: AsyncIterator[Delivery]) -> None:
        async for delivery in stream:
            handled.append(delivery.message.message_id or "")
            await delivery.ack()

    try:
        await first.connect()
        await first.declare(Topology([ExchangeSpec(exchange)], [queue]))
        await first.send(exchange, [message(f"a.{n}") for n in range(4)])
        full = first.consume(queue, prefetch=1)
        (held,) = await hold(full, 1)  # its only place taken: its partitions are paused
        reading.append(asyncio.create_task(read(full)))  # polls (its place is taken: reads nothing)
        reading.append(asyncio.create_task(read(second.consume(queue, prefetch=10))))  # a second member
        await asyncio.wait_for(asyncio.to_thread(revoking.wait), 60)
        await held.ack()  # finished while the revoke waits for it
        later = [message(f"a.{n}") for n in range(20)]
        await asyncio.sleep(3)  # the new assignment is in place
        await first.send(exchange, later)
        wanted = {m.message_id for m in later}
        with contextlib.suppress(TimeoutError):  # the assertion below says what is missing
            await until(lambda: wanted <= set(handled), 30)
    finally:
        for task in reading:
            task.cancel()
        await asyncio.gather(*reading, return_exceptions=True)
        await first.close()
        await second.close()
    assert wanted <= set(handled), f"{len(wanted - set(handled))} of 20 never read after the rebalance"


async def test_a_queue_whose_pattern_matches_its_own_dead_letters_does_not_read_them(kafka: str) -> None:
    """With ``<name>.{0}`` topics, a queue ``<name>`` bound by ``#`` subscribes to every
    ``<name>.<word>`` — its own ``<name>.dead`` too. A dead letter read back as an event would be
    rejected again, and again."""
    name = unique("own")
    transport = KafkaTransport(url=kafka, topic=f"{name}.{{0}}", retry_delays=[1], partitions=1)
    queue = QueueSpec(name, [Binding("x", "#")])
    try:
        await transport.connect()
        await transport.declare(Topology([ExchangeSpec("x")], [queue]))
        await transport.send("x", [message("bug.one")])
        stream = transport.consume(queue, prefetch=10)
        (first,) = await hold(stream, 1)
        await first.reject("not wanted")
        await transport.send("x", [message("bug.two")])
        (after,) = await hold(stream, 1)
        assert after.message.routing_key == "bug.two", "the dead letter came back as an event"
        await after.ack()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(anext(stream), 3)  # type: ignore[call-overload]
        await stream.aclose()  # type: ignore[attr-defined]
    finally:
        await transport.close()


async def test_garbage_on_a_topic_is_dead_lettered_and_the_consumer_goes_on(
    kafka: str, tmp_path: Path
) -> None:
    from confluent_kafka import Producer

    from tidings import App, Bus
    from tidings.config import load_config

    exchange = unique("garbage")
    write_config(tmp_path, f'url = "{kafka}"\nsession_timeout = 2.0')
    (tmp_path / "tidings.toml").write_text(
        (tmp_path / "tidings.toml").read_text().replace('exchange = "cli"', f'exchange = "{exchange}"')
    )
    bus = Bus(load_config(tmp_path / "tidings.toml"))
    app = App(unique("garbage-q"), transport="k", exchange=exchange)
    handled: list[str] = []
    app.subscribe("#")(lambda event: handled.append(event.id))
    await app.declare(bus)
    raw = Producer({"bootstrap.servers": kafka.removeprefix("kafka://")})
    for value in (b"\xff\xfe not json", b'{"half": ', b"[1, 2, 3]"):
        raw.produce(exchange, value=value, headers=[("x-tidings-routing-key", b"garbage.in")])
    raw.flush(10)
    good = bus.publish("fine.event", {"n": 1})
    stop = asyncio.Event()
    running = asyncio.create_task(app.run(bus, stop))
    dispatching = asyncio.create_task(bus.dispatcher().run(stop))
    try:
        deadline = asyncio.get_running_loop().time() + 30
        while good.id not in handled and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        await asyncio.gather(running, dispatching)
    assert handled == [good.id]
    transport = bus.make_transport("k")
    await transport.connect()
    dead = transport.consume(QueueSpec(f"{app.settings.queue}.dead"), prefetch=10)
    letters = await hold(dead, 3)
    await dead.aclose()  # type: ignore[attr-defined]
    await transport.close()
    bus.close()
    assert all(letter.message.headers["x-tidings-reason"].startswith("invalid message") for letter in letters)


async def test_the_doctor_names_the_topics_a_configuration_needs(kafka: str) -> None:
    transport = KafkaTransport(url=kafka)
    exchange, name = unique("doc"), unique("doc-q")
    topology = Topology([ExchangeSpec(exchange)], [QueueSpec(name, [Binding(exchange, "#")])])
    try:
        await transport.connect()
        before = await transport.verify(topology)
        assert len(before.problems) == 1
        assert exchange in before.problems[0] and f"{name}.dead" in before.problems[0]
        await transport.declare(topology)
        assert (await transport.verify(topology)).problems == []
    finally:
        await transport.close()
