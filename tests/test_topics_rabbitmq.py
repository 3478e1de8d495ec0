"""topic_matches and TopicMatcher against the real thing: a RabbitMQ topic exchange.

Thousands of (routing key, pattern) pairs, odd ones included (the empty key,
empty words, literal wildcards in keys), go through a fresh topic exchange;
every queue's haul is compared with what tidings predicts.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import uuid
from collections.abc import Iterable

import aio_pika
import aiormq
import pytest

from tidings.topics import TopicMatcher, topic_matches

pytestmark = [pytest.mark.rabbitmq, pytest.mark.timeout(90)]

URL = "amqp://guest:guest@127.0.0.1:5672/"
INDEX = "x-tidings-key-index"
FENCE = "x-tidings-fence"
SEED = 20240611  # fixed, so that a disagreement is reproducible
ROUND_TIMEOUT = 30.0

# Errors meaning "the broker went away", worth one retry of the whole round.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    ConnectionError,
    aiormq.exceptions.AMQPConnectionError,
    aiormq.exceptions.ChannelInvalidStateError,
)

EDGE_KEYS = [
    "", ".", "..", "a", "a.", ".a", "a..b", "a.b", "a.b.", "*", "#", "a.*", "#.a", "a*.b", "a b", "é.ü",
]  # fmt: skip
EDGE_PATTERNS = [
    "", ".", "#", "*", "#.#", "*.#", "#.*", "*.*", "a", "a.#", "#.a", "a.#.b", "a.*.b", "a.*",
    "*.a", "a.", ".a", "#.", ".#", "*.", ".*", "a..b", "a.#.#.b", "#.#.#.#.a", "a*", "#a", "a.b#", "é.*",
]  # fmt: skip


def _join(words: Iterable[str]) -> str:
    return ".".join(words)


def routing_keys(rng: random.Random) -> list[str]:
    """Every key of up to three words over a, b and the empty word, edge cases, random longer ones."""
    keys = dict.fromkeys(EDGE_KEYS)
    for length in range(4):
        keys.update(dict.fromkeys(_join(w) for w in itertools.product(["a", "b", ""], repeat=length)))
    alphabet = ["a", "b", "c", "", "*", "#"]
    while len(keys) < 70:
        keys[_join(rng.choices(alphabet, k=rng.randint(4, 7)))] = None
    return list(keys)


def binding_patterns(rng: random.Random) -> list[str]:
    patterns = dict.fromkeys(EDGE_PATTERNS)
    alphabet = ["a", "b", "", "*", "#", "#"]
    while len(patterns) < 90:
        patterns[_join(rng.choices(alphabet, k=rng.randint(1, 5)))] = None
    return list(patterns)


def unreachable(reason: str) -> None:
    """No broker: a failure in CI (a silent skip would hide lost coverage), a skip elsewhere."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"RabbitMQ needed but {reason} (CI=true, so this fails instead of skipping)")
    pytest.skip(f"RabbitMQ needed but {reason}")


async def connect() -> aio_pika.abc.AbstractConnection:
    try:
        return await aio_pika.connect(URL, timeout=5)
    except (OSError, TimeoutError, aiormq.exceptions.AMQPError) as error:
        unreachable(f"not reachable at {URL.rsplit('@', 1)[-1]}: {type(error).__name__}: {error}")
        raise  # unreachable() always raises; this keeps type checkers informed


class Haul:
    """What one queue received, up to its own fence.

    The fence is published last, on the same channel and through the same exchange,
    so when it arrives every earlier message routed to this queue has arrived too.
    """

    def __init__(self, fence: str) -> None:
        self.fence = fence
        self.indices: set[int] = set()
        self.complete: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def on_message(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        if self.complete.done():
            return  # other queues' fences, arriving after ours
        headers = message.headers
        if headers.get(FENCE) == self.fence:
            self.complete.set_result(None)
        elif FENCE not in headers:
            self.indices.add(int(headers[INDEX]))  # type: ignore[arg-type]


async def route_through_broker(keys: list[str], patterns: list[str]) -> dict[str, set[int]]:
    """For each pattern, the indices of the keys RabbitMQ routed to a queue bound with it."""
    connection = await connect()
    try:
        channel = await connection.channel(publisher_confirms=True)
        name = f"tidings-test-topics-{uuid.uuid4().hex}"
        exchange = await channel.declare_exchange(name, aio_pika.ExchangeType.TOPIC, auto_delete=True)
        hauls = await asyncio.wait_for(_round(channel, exchange, keys, patterns), ROUND_TIMEOUT)
        await exchange.delete()
        return hauls
    finally:
        # Closing also drops the exclusive queues, and with them the auto-delete
        # exchange if the round failed before deleting it.
        await connection.close()


async def _round(
    channel: aio_pika.abc.AbstractChannel,
    exchange: aio_pika.abc.AbstractExchange,
    keys: list[str],
    patterns: list[str],
) -> dict[str, set[int]]:
    hauls: dict[str, Haul] = {}
    for number, pattern in enumerate(patterns):
        queue = await channel.declare_queue("", exclusive=True, auto_delete=True)
        await queue.bind(exchange, routing_key=pattern)
        # A single word no test key holds; the '*', '#' ... queues get every
        # queue's fence and skip the others.
        hauls[pattern] = haul = Haul(f"fence-{number}-{uuid.uuid4().hex}")
        await queue.bind(exchange, routing_key=haul.fence)
        await queue.consume(haul.on_message, no_ack=True)
    # With publisher confirms each publish returns once the broker has routed the message.
    await asyncio.gather(
        *(
            exchange.publish(aio_pika.Message(b"", headers={INDEX: index}), routing_key=key, mandatory=False)
            for index, key in enumerate(keys)
        )
    )
    for haul in hauls.values():
        fence = aio_pika.Message(b"", headers={FENCE: haul.fence})
        await exchange.publish(fence, routing_key=haul.fence, mandatory=False)
    await asyncio.gather(*(haul.complete for haul in hauls.values()))
    return {pattern: haul.indices for pattern, haul in hauls.items()}


async def route_with_one_retry(keys: list[str], patterns: list[str]) -> dict[str, set[int]]:
    try:
        return await route_through_broker(keys, patterns)
    except CONNECTION_ERRORS:
        # Other suites share this broker; a dropped connection earns one fresh attempt.
        return await route_through_broker(keys, patterns)


def disagreements(
    keys: list[str], patterns: list[str], broker: dict[str, set[int]], predict: dict[str, set[int]]
) -> list[str]:
    lines = []
    for pattern in patterns:
        for index in broker[pattern] ^ predict[pattern]:
            lines.append(
                f"pattern {pattern!r} key {keys[index]!r}: broker routes={index in broker[pattern]}, "
                f"tidings says={index in predict[pattern]}"
            )
    return lines


async def test_topic_matches_agrees_with_rabbitmq() -> None:
    rng = random.Random(SEED)
    keys, patterns = routing_keys(rng), binding_patterns(rng)
    assert len(keys) * len(patterns) >= 1000

    broker = await route_with_one_retry(keys, patterns)
    routed = sum(map(len, broker.values()))
    # Guard the generator: both outcomes must be common for the comparison to mean much.
    assert len(keys) * len(patterns) // 10 < routed < len(keys) * len(patterns) * 9 // 10

    by_function = {p: {i for i, key in enumerate(keys) if topic_matches(p, key)} for p in patterns}
    wrong = disagreements(keys, patterns, broker, by_function)
    assert not wrong, f"{len(wrong)} disagreements with RabbitMQ:\n" + "\n".join(wrong[:40])

    matcher: TopicMatcher[str] = TopicMatcher()
    for pattern in patterns:
        matcher.add(pattern, pattern)
    by_matcher: dict[str, set[int]] = {p: set() for p in patterns}
    for index, key in enumerate(keys):
        for pattern in matcher.match(key):
            by_matcher[pattern].add(index)
    wrong = disagreements(keys, patterns, broker, by_matcher)
    assert not wrong, f"{len(wrong)} TopicMatcher disagreements with RabbitMQ:\n" + "\n".join(wrong[:40])
