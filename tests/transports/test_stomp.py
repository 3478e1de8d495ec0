"""The STOMP transport beyond the suite: errors a user meets, and a queue shared with AMQP consumers."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.clirun import tidings
from tests.conftest import delete_amqp_topology
from tests.faultproxy import FaultProxy
from tests.faults.rig import rabbitmqctl
from tests.transports.conformance import hold, message, refused_retry_comes_back
from tidings.errors import ConfigError, TransportError
from tidings.plugins import Plugin
from tidings.transport import (
    ATTEMPTS_HEADER,
    REASON_HEADER,
    Binding,
    ExchangeSpec,
    Outcome,
    QueueSpec,
    Topology,
    WireMessage,
    transport_plugin,
)
from tidings.transports.amqp import AmqpTransport
from tidings.transports.stomp import Address, StompTransport
from tidings.transports.stomp.consume import StompDelivery
from tidings.transports.stomp.frames import received, send_headers

pytestmark = [pytest.mark.stomp, pytest.mark.rabbitmq]


def test_urls_and_options_are_checked_when_the_config_is_read() -> None:
    address = Address.parse("stomp://app:p%40ss@broker:61613/fedora")
    assert (address.host, address.port, address.username, address.password, address.vhost) == (
        "broker",
        61613,
        "app",
        "p@ss",
        "fedora",
    )
    assert Address.parse("stomp://h/").vhost == "/"
    assert address.amqp_url() == "amqp://app:p%40ss@broker:5672/fedora"
    plugin: Plugin = transport_plugin("stomp")
    with pytest.raises(ConfigError, match="url must be stomp://") as refused:
        plugin.parse({"url": "amqp://guest:topsecret@h/"}, "transports.s")
    assert "secret" not in str(refused.value)
    with pytest.raises(ConfigError, match="destination"):
        plugin.parse({"destination": "queue"}, "transports.s")
    for url, problem in (
        ("stomp://u:topsecret@h:0/", "port from 1 to 65535"),
        ("stomp://u:topsecret@h:70000/", "port from 1 to 65535"),
        ("stomp://u:topsecret@h:61613/?heartbeat=5", r"takes no \?options"),
        ("stomp://u:top#secret@h:61613/", "must be written %23 or %3F"),  # was: "needs a port"
        ("stomp://u:top?secret@h/", "must be written %23 or %3F"),
    ):
        with pytest.raises(ConfigError, match=problem) as refused:
            plugin.parse({"url": url}, "transports.s")
        assert "secret" not in str(refused.value)


def test_the_amqp_side_is_checked_when_the_config_is_read_and_keeps_an_ipv6_host() -> None:
    plugin: Plugin = transport_plugin("stomp")
    for url, problem in (("http://x", "must look like amqp://"), ("amqp://h:99999/", "not a URL")):
        with pytest.raises(ConfigError, match=problem):
            plugin.parse({"amqp_url": url}, "transports.s")
    assert Address.parse("stomp://u:p@[::1]:61613/").amqp_url() == "amqp://u:p@[::1]:5672/%2F"


async def test_a_queue_name_that_cannot_work_is_one_line_before_anything_is_declared(
    stomp: str, rabbitmq: str
) -> None:
    transport = StompTransport(url=stomp, retry_delays=[1])
    try:
        for name, problem in (
            ("svc%2Fx", "'%2F' cannot be in a STOMP destination"),  # RabbitMQ reads it as '/'
            ("svc\0x", "a NUL character cannot be in"),
            ("svc\\x", "only letters, digits"),
            ("s" * 250, "over AMQP's 255"),  # its retry queue's name is longer still
            # (it made a queue of that very name, which a peer subscribing there never reads)
            ("/amq/queue/svc", r"is a STOMP destination: name the queue alone \('svc'\)"),
            ("/topic/a.b", r"name the queue alone \('a.b'\)"),
        ):
            with pytest.raises(ConfigError, match=problem):
                await transport.declare(Topology([], [QueueSpec(name, [Binding("x", "#")])]))
    finally:
        await transport.close()


def test_a_message_keeps_its_typed_headers_through_frame_headers() -> None:
    sent = WireMessage(
        routing_key="bug.modify",
        body=b"{}",
        headers={"n": 3, "t": True, "s": "3", "z": None, "x-deathstar": "a publisher's own"},
        message_id="m-1",
        properties={"app_id": "bugzilla"},
    )
    frame = send_headers(sent)
    assert all(isinstance(v, str) for v in frame.values())
    back, attempt, came_back = received(
        {**frame, "redelivered": "false", "ack": "1"}, b"{}", dead_letters=False
    )
    assert back.headers == sent.headers
    assert (back.routing_key, back.message_id, back.properties, attempt, came_back) == (
        "bug.modify",
        "m-1",
        {"app_id": "bugzilla"},
        1,
        False,
    )


async def test_wrong_credentials_are_one_clear_line(stomp: str) -> None:
    transport = StompTransport(url="stomp://guest:wrong-password@127.0.0.1:61613/", connect_timeout=3)
    with pytest.raises(TransportError) as refused:
        await transport.connect()
    text = str(refused.value)
    assert "refused" in text and "Access refused" in text and "wrong-password" not in text
    assert "\n" not in text


async def test_nothing_listening_names_the_plugin() -> None:
    transport = StompTransport(url="stomp://guest:guest@127.0.0.1:1/", connect_timeout=2)
    with pytest.raises(TransportError, match="rabbitmq-plugins enable rabbitmq_stomp"):
        await transport.connect()


def test_a_port_that_never_speaks_stomp_is_one_line_and_no_hang(tmp_path: Path) -> None:
    """A listener that accepts and says nothing (another service's port): doctor and dispatch
    --once say so and exit; stomp.py's wait for CONNECTED no longer holds the process for ever."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    accepted: list[socket.socket] = []

    def accept_until_closed() -> None:
        try:
            while True:
                accepted.append(listener.accept()[0])
        except OSError:  # the test closed the listener: done
            pass

    threading.Thread(target=accept_until_closed, daemon=True).start()
    (tmp_path / "tidings.toml").write_text(
        f'[transports.s]\nkind = "stomp"\nurl = "stomp://guest:guest@127.0.0.1:{port}/"\n'
        'connect_timeout = 2\n\n[connectors.s]\ntransport = "s"\n'
    )
    try:
        for command in (["doctor"], ["publish", "a.b", "--body", "{}"], ["dispatch", "--once"]):
            done = tidings(tmp_path, *command, timeout=30)
            if command[0] != "publish":
                assert done.returncode == 6, (command, done.stderr)
                assert "no STOMP CONNECTED frame came within 2 s" in done.stdout + done.stderr
    finally:
        listener.close()
        for connection in accepted:
            connection.close()


async def test_an_error_frame_mid_stream_fails_the_batch_and_the_next_send_reconnects(stomp: str) -> None:
    transport = StompTransport(url=stomp, connect_timeout=3)
    try:
        with pytest.raises(TransportError, match="no exchange"):
            await transport.send(f"missing-{uuid.uuid4().hex[:6]}", [message("a.b")])
        results = await transport.send("amq.topic", [message("nobody.listens.here")])
        assert [r.outcome for r in results] == [Outcome.DELIVERED]  # a new connection
    finally:
        await transport.close()


@pytest.mark.parametrize(
    "headers",
    [{"expiration": "0"}, {"expiration": "abc"}, {"Priority": "high"}, {"reply-to": "x"}, {"type": "t"},
     {"back\\slash": "1"}, {"a\nb": "1"}, {"c:d": "1"}, {"persistent": "false"}, {"priority": 3}],
)  # fmt: skip
async def test_headers_the_broker_would_read_or_a_frame_cannot_hold_are_refused_alone(
    stomp: str, headers: dict[str, str]
) -> None:
    """Each would have expired, lost or blocked the event (RabbitMQ reads them as properties, or
    drops the connection on a broken frame): refused with the reason, and the batch goes on."""
    transport = StompTransport(url=stomp, connect_timeout=3, receipt_timeout=5, max_message_bytes=4096)
    try:
        bad, good = message("odd.header", headers=headers), message("plain.one")
        escaped = message("a%2Fb")  # RabbitMQ would read it as "a/b"
        # a frame ends at a NUL: its other headers and its body were lost, the send confirmed
        nul = message("nul.header", headers={"note": "before\0after"})
        big = message("big.body", body=b"x" * 4097)  # over the limit, RabbitMQ closes the connection
        fedora = message("fedora.like", headers={"priority": 0})  # fedora-messaging's, for none
        started = asyncio.get_running_loop().time()
        results = await transport.send("amq.topic", [bad, good, escaped, nul, big, fedora])
        refused, delivered = Outcome.REFUSED, Outcome.DELIVERED
        assert [r.outcome for r in results] == [refused, delivered, refused, refused, refused, delivered]
        assert "cannot travel in a STOMP frame" in results[0].reason
        assert "'%2F' cannot be in a STOMP destination" in results[2].reason
        assert "header(s) note: a NUL character cannot be in them" in results[3].reason
        assert "4097 bytes is over the broker's limit of 4096" in results[4].reason
        assert asyncio.get_running_loop().time() - started < 4  # no receipt was waited for in vain
        assert [r.outcome for r in await transport.send("amq.topic", [good])] == [Outcome.DELIVERED]
    finally:
        await transport.close()


async def test_a_connection_cut_mid_frame_loses_nothing_it_confirmed(stomp: str, rabbitmq: str) -> None:
    proxy = await FaultProxy(61613).start()
    exchange, queue = f"cut.{uuid.uuid4().hex[:6]}", f"cut-{uuid.uuid4().hex[:6]}"
    transport = StompTransport(url=f"stomp://guest:guest@127.0.0.1:{proxy.port}/", connect_timeout=3)
    direct = StompTransport(url=stomp)
    spec = QueueSpec(queue, [Binding(exchange, "#")])
    try:
        await direct.declare(Topology([ExchangeSpec(exchange)], [spec]))
        confirmed: list[str] = []
        proxy.cut_after(600)  # each connection dies inside its second or third frame
        for n in range(12):
            sent = message(f"m.{n}", body=b'{"pad": "' + b"x" * 200 + b'"}')
            try:
                (result,) = await transport.send(exchange, [sent])
            except TransportError:
                continue  # not confirmed: the dispatcher would send it again
            if result.outcome is Outcome.DELIVERED:
                confirmed.append(sent.message_id or "")
        proxy.heal()
        got = await drain(direct, spec)
        assert set(confirmed) <= got, "a confirmed message is missing"
    finally:
        await transport.close()
        await direct.close()
        await proxy.stop()
        await delete_amqp_topology(rabbitmq, [queue], [exchange])


async def drain(transport: StompTransport, queue: QueueSpec) -> set[str]:
    stream = transport.consume(queue, prefetch=50)
    seen: set[str] = set()
    try:
        while True:
            try:
                delivery = await asyncio.wait_for(anext(stream), 2.0)  # type: ignore[arg-type]
            except TimeoutError:
                return seen
            seen.add(delivery.message.message_id or "")
            await delivery.ack()
    finally:
        await stream.aclose()  # type: ignore[attr-defined]


@pytest.fixture
async def shared(
    stomp: str, rabbitmq: str
) -> AsyncIterator[tuple[StompTransport, AmqpTransport, QueueSpec, str]]:
    exchange, name = f"share.{uuid.uuid4().hex[:6]}", f"share-{uuid.uuid4().hex[:6]}"
    over_stomp = StompTransport(url=stomp, retry_delays=[1])
    over_amqp = AmqpTransport(rabbitmq, retry_delays=[1])
    await over_amqp.connect()
    queue = QueueSpec(name, [Binding(exchange, "#")])
    await over_stomp.declare(Topology([ExchangeSpec(exchange)], [queue]))
    await over_amqp.declare(Topology([ExchangeSpec(exchange)], [queue]))  # the same queue: no conflict
    yield over_stomp, over_amqp, queue, exchange
    await over_stomp.close()
    await over_amqp.close()
    await delete_amqp_topology(rabbitmq, [name], [exchange])


async def test_slashes_in_exchanges_routing_keys_and_queues_travel_escaped(stomp: str, rabbitmq: str) -> None:
    """RabbitMQ splits a destination at '/' and reads "%2F" as one: Taskcluster's exchanges
    (``exchange/taskcluster-queue/v1/...``) went nowhere, each send waiting for a receipt in vain."""
    tag = uuid.uuid4().hex[:6]
    exchange, name = f"exchange/stomp-{tag}/v1/task-defined", f"svc/{tag}"
    transport = StompTransport(url=stomp, retry_delays=[1], receipt_timeout=5)
    try:
        queue = QueueSpec(name, [Binding(exchange, "a/b.#")])
        await transport.declare(Topology([ExchangeSpec(exchange)], [queue]))
        sent = message("a/b.c")
        assert [r.outcome for r in await transport.send(exchange, [sent])] == [Outcome.DELIVERED]
        stream = transport.consume(QueueSpec(name, []), prefetch=1)
        (delivery,) = await hold(stream, 1)
        await delivery.ack()
        await stream.aclose()  # type: ignore[attr-defined]
        assert (delivery.message.message_id, delivery.message.routing_key) == (sent.message_id, "a/b.c")
    finally:
        await transport.close()
        await delete_amqp_topology(rabbitmq, [name, f"{name}.dead", f"{name}.retry.1s"], [exchange])


async def test_a_release_asks_the_broker_to_requeue() -> None:
    """Without ``requeue:true``, a broker set to ``stomp.default_nack_requeue = false`` drops
    what a NACK hands back (a halt, a stop, a refused retry's hand-back)."""
    written: list[tuple[str, dict[str, str]]] = []

    class Connection:
        def nack(self, ack_id: str, **headers: str) -> None:
            written.append((ack_id, headers))

    class FakeLink:
        connection, generation = Connection(), 1

        async def write(self, fn: Any, *args: Any, **kwargs: Any) -> None:
            fn(*args, **kwargs)

    delivery = StompDelivery(message("a.b"), 1, False, "q", "ack-7", 1, FakeLink(), StompTransport())  # type: ignore[arg-type]
    await delivery.release()
    assert written == [("ack-7", {"requeue": "true"})]


async def test_stomp_and_amqp_consumers_share_a_queue_and_its_attempts(
    shared: tuple[StompTransport, AmqpTransport, QueueSpec, str],
) -> None:
    """A retry by one is counted by the other; the dead letter carries every attempt."""
    over_stomp, over_amqp, queue, exchange = shared
    sent = message("share.one", headers={"n": 3, "flag": True})
    assert (await over_stomp.send(exchange, [sent]))[0].outcome is Outcome.DELIVERED
    for attempt, (reader, retries) in enumerate(
        [(over_amqp, True), (over_stomp, True), (over_amqp, True), (over_stomp, False)], start=1
    ):
        stream = reader.consume(queue, prefetch=1)
        (delivery,) = await hold(stream, 1)
        assert delivery.attempt == attempt, type(reader).__name__
        assert delivery.message.headers == {"n": 3, "flag": True}
        assert delivery.message.routing_key == "share.one"
        if retries:
            await delivery.retry(0.0, f"try {attempt}")
        else:
            await delivery.reject("gave up", attempts=attempt)
        await stream.aclose()  # type: ignore[attr-defined]
    dead = over_amqp.consume(QueueSpec(queue.dead_letter_queue), prefetch=1)
    (letter,) = await hold(dead, 1)
    await letter.ack()
    await dead.aclose()  # type: ignore[attr-defined]
    assert (letter.message.headers[REASON_HEADER], letter.message.headers[ATTEMPTS_HEADER]) == ("gave up", 4)
    assert letter.message.message_id == sent.message_id


async def test_a_retry_or_dead_letter_into_a_queue_that_is_gone_fails_and_the_message_comes_back(
    shared: tuple[StompTransport, AmqpTransport, QueueSpec, str],
) -> None:
    """RabbitMQ's STOMP adapter would confirm a SEND to a missing queue and drop it; the original,
    acked after it, would be lost. The copy goes over AMQP, mandatory: the settle fails instead,
    and the original comes back on the same live subscription (it does not sit unacked)."""
    over_stomp, _, queue, exchange = shared
    sent = message("gone.one")
    assert (await over_stomp.send(exchange, [sent]))[0].outcome is Outcome.DELIVERED
    stream = over_stomp.consume(queue, prefetch=1)  # (declares the queue's own queues)
    (delivery,) = await hold(stream, 1)
    retry_queue, _ = over_stomp.retry_queue_for(queue.name, 1)
    for gone in (retry_queue, queue.dead_letter_queue):
        await asyncio.to_thread(rabbitmqctl, "delete_queue", gone)
    with pytest.raises(TransportError, match="unroutable"):
        await delivery.retry(1, "try 1")
    (again,) = await asyncio.wait_for(hold(stream, 1), 10)  # prefetch 1: only if the slot was freed
    assert (again.message.message_id, again.redelivered) == (sent.message_id, True)
    with pytest.raises(TransportError, match="unroutable"):
        await again.reject("gave up")
    (last,) = await asyncio.wait_for(hold(stream, 1), 10)
    await last.ack()
    await stream.aclose()  # type: ignore[attr-defined]
    assert last.message.message_id == sent.message_id


async def test_a_copy_the_amqp_side_cannot_make_hands_the_message_back(
    stomp: str, rabbitmq: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Retries and dead letters go over AMQP: with it unreachable, the message is released, not
    held unacked on a STOMP connection that is fine."""
    exchange, name = f"fwd.{uuid.uuid4().hex[:6]}", f"fwd-{uuid.uuid4().hex[:6]}"
    queue = QueueSpec(name, [Binding(exchange, "fwd.#")])
    setup = StompTransport(url=stomp, retry_delays=[1])
    cut_off = StompTransport(url=stomp, amqp_url="amqp://guest:guest@127.0.0.1:9/", retry_delays=[1])
    try:
        await setup.declare(Topology([ExchangeSpec(exchange)], [queue]))
        sent = message("fwd.one")
        assert (await setup.send(exchange, [sent]))[0].outcome is Outcome.DELIVERED
        stream = cut_off.consume(QueueSpec(name, []), prefetch=1)  # declared above: nothing to declare
        (delivery,) = await hold(stream, 1)
        refused_at: list[float] = []
        forward = cut_off.forward

        async def noting_refusals(*args: Any) -> None:
            try:
                await forward(*args)
            except TransportError:
                refused_at.append(time.monotonic())
                raise

        monkeypatch.setattr(cut_off, "forward", noting_refusals)
        again = await refused_retry_comes_back(delivery, stream, refused_at)
        await again.ack()
        await stream.aclose()  # type: ignore[attr-defined]
    finally:
        await cut_off.close()
        await setup.close()
        await delete_amqp_topology(rabbitmq, [name], [exchange])


async def test_the_doctor_checks_what_was_declared_as_stomp_maps_it(stomp: str, rabbitmq: str) -> None:
    """``/topic/`` destinations bind on amq.topic; ``declare = false`` still has its queues checked
    (retries and dead letters go into them)."""
    exchange, name = f"doc.{uuid.uuid4().hex[:6]}", f"doc-{uuid.uuid4().hex[:6]}"
    topology = Topology([ExchangeSpec(exchange)], [QueueSpec(name, [Binding(exchange, "doc.#")])])
    as_topics = StompTransport(url=stomp, destination="topic", retry_delays=[1])
    try:
        await as_topics.declare(topology)
        assert (await as_topics.verify(topology)).problems == []
        undeclared = Topology([ExchangeSpec(exchange)], [QueueSpec(f"{name}-never", [])])
        not_declaring = StompTransport(url=stomp, declare=False, retry_delays=[1])
        found = await not_declaring.verify(undeclared)
        await not_declaring.close()
        assert any(f"{name}-never" in problem for problem in found.problems), found
    finally:
        await as_topics.close()
        await delete_amqp_topology(rabbitmq, [name], [])


async def test_messages_prefetched_on_a_connection_that_was_cut_are_handled_once(
    tmp_path: Path, rabbitmq: str
) -> None:
    """They come again on the next connection; handled from the old one as well, each ran twice
    (a cut with 100 prefetched cost 100 duplicates)."""
    from tests.ledger import check
    from tests.waiting import until
    from tidings import App, Bus, Event
    from tidings.config import load_config

    proxy = await FaultProxy(61613).start()
    tag = uuid.uuid4().hex[:6]
    exchange, queue = f"cut.{tag}", f"cut.{tag}.q"
    (tmp_path / "tidings.toml").write_text(
        f'[bus]\nhome = "home"\n\n[transports.s]\nkind = "stomp"\n'
        f'url = "stomp://guest:guest@127.0.0.1:{proxy.port}/"\n\n'
        f'[connectors.s]\ntransport = "s"\nexchange = "{exchange}"\n'
    )
    bus = Bus(load_config(tmp_path / "tidings.toml"))
    app = App(queue, transport="s", exchange=exchange, prefetch=40, concurrency=1)
    seen: list[str] = []

    @app.subscribe("#")
    async def handle(event: Event) -> None:
        seen.append(event.id)
        await asyncio.sleep(0.02)

    stop = asyncio.Event()
    running = asyncio.create_task(app.run(bus, stop))
    try:
        await app.declare(bus)
        sent = [bus.publish("cut.n", {"n": n}).id for n in range(40)]
        await bus.dispatcher().drain()
        await until(lambda: len(seen) >= 3, 30)
        proxy.reset_all()  # the other 37 or so wait in the consumer, prefetched on that connection
        await until(lambda: set(sent) <= set(seen) or running.done(), 60)
        deadline = time.monotonic() + 60
        while await asyncio.to_thread(messages_in, queue) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)  # what came again on the next connection is handled and acked
    finally:
        stop.set()
        await asyncio.gather(running, return_exceptions=True)
        bus.close()
        await proxy.stop()
        await delete_amqp_topology(rabbitmq, [queue], [exchange])
    verdict = check(sent, sent, seen)
    print(verdict.line("STOMP consumer, its connection cut with 40 prefetched"))
    # those being handled or settled when the cut came, and the first whose ack found it (before: all)
    assert verdict.ok and verdict.duplicated <= 5, verdict.line("cut")


def messages_in(queue: str) -> int:
    """What RabbitMQ holds of ``queue``: ready and unacknowledged."""
    for line in rabbitmqctl("list_queues", "-q", "name", "messages").splitlines():
        name, _, count = line.rpartition("\t")
        if name.strip() == queue and count.strip().isdigit():
            return int(count)
    raise AssertionError(f"RabbitMQ has no queue {queue!r}")
