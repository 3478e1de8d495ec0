"""A two-way bridge between fedmsg (ZeroMQ) and AMQP (fedora-messaging), without loops.

Fedora moved from fedmsg to fedora-messaging with bridges in both directions while both buses
lived; this is that bridge, with what fedmsg lacked: nothing taken from ZeroMQ is lost once it
reached the bridge, because it goes to AMQP through the outbox and the dispatcher.

* fedmsg → AMQP: SUB to the fedmsg publishers, decode each envelope, store it in the outbox;
  the dispatcher sends it with the ``fedora-messaging`` format on the configured connector,
  whose exchange is the bridge's own (``zmq.topic``), never the one the other direction reads.
* AMQP → fedmsg: a durable queue bound to ``amq.topic``; each message is published as fedmsg
  frames on a PUB socket and acked after that (ZeroMQ itself is best effort).
* Loops: every bridged message carries the bridge's username in the ``fedmsg_bridged_by``
  header/field, and neither direction carries a message that has it. The separate exchange is
  the first guard, the username the second (for brokers that bind ``zmq.topic`` into
  ``amq.topic`` so fedora-messaging consumers see everything).
* :func:`verify_missing` watches both sides and reports every id seen on one side only after a
  grace period, as fedmsg-migration-tools' check did.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from tidings.bus import Bus
from tidings.consumer import App
from tidings.errors import ConfigError, InvalidEvent, TidingsError
from tidings.event import Event, loads
from tidings.formats.fedora.fedmsg import BRIDGED_HEADER, FedmsgFormat, MissingCheck, verify
from tidings.formats.fedora.settings import bridge_config
from tidings.transport import Binding, QueueSpec, WireMessage

log = logging.getLogger(__name__)


@dataclass
class BridgeCounters:
    to_amqp: int = 0
    to_fedmsg: int = 0
    loops_stopped: int = 0
    undecodable: int = 0
    #: fedmsg messages the outbox refused (invalid, or the disk full): logged, and lost to AMQP
    refused: int = 0
    #: fedmsg messages refused by ``verify = true``: unsigned, or not signed by a trusted signer
    unverified: int = 0


class Bridge:
    """One ``[bridges.NAME]`` section at work: both directions and their dispatcher."""

    def __init__(self, bus: Bus, name: str) -> None:
        try:
            table = bus.config.bridges[name]
        except KeyError:
            known = ", ".join(bus.config.bridges) or "none"
            raise ConfigError(f"no bridge named {name!r} is configured (configured: {known})") from None
        self.config = bridge_config(bus.config, name, table, f"[bridges.{name}]")
        self.bus, self.name = bus, name
        self.fedmsg = FedmsgFormat(self.config.topic_prefix, self.config.environment, self.config.username)
        self.counters = BridgeCounters()
        self.trusted_ca = self._read_ca(bus) if self.config.verify else None

    def _read_ca(self, bus: Bus) -> bytes:
        path = Path(bus.config.base_dir, self.config.ca_file)
        try:
            return path.read_bytes()
        except OSError as exc:
            raise ConfigError(
                f"[bridges.{self.name}] ca_file {str(path)!r} cannot be read: {exc.strerror}"
            ) from None

    async def run(self, stop: asyncio.Event) -> None:
        """Bridge until ``stop`` is set."""
        tasks = [asyncio.create_task(self.bus.dispatcher([self.config.connector]).run(stop))]
        tasks += [
            asyncio.create_task(self._from_fedmsg(endpoint, stop)) for endpoint in self.config.zmq_endpoints
        ]
        if self.config.zmq_publish:
            tasks.append(asyncio.create_task(self._to_fedmsg(stop)))
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    # -- fedmsg → AMQP ---------------------------------------------------------------------

    async def _from_fedmsg(self, endpoint: str, stop: asyncio.Event) -> None:
        async for frames_message in _subscribe(endpoint, self.config.zmq_topics, stop):
            try:
                event = self.fedmsg.decode(frames_message)
            except TidingsError as exc:
                self.counters.undecodable += 1
                log.warning("bridge %s: skipped an undecodable fedmsg message: %s", self.name, exc)
                continue
            if self.trusted_ca is not None and not self._signed(frames_message, event):
                continue
            if event.headers.get(BRIDGED_HEADER):
                self.counters.loops_stopped += 1  # it came from AMQP through a bridge: not back again
                continue
            try:
                await self.bus.apublish(self._crossing(event))
            except TidingsError as exc:  # invalid, or the outbox cannot store it: ZeroMQ cannot resend
                self.counters.refused += 1
                log.error("bridge %s: fedmsg message %s not bridged: %s", self.name, event.id, exc)
                continue
            self.counters.to_amqp += 1

    def _signed(self, message: WireMessage, event: Event) -> bool:
        """Whether a fedmsg message carries a valid signature of a trusted signer (counted if not)."""
        assert self.trusted_ca is not None
        try:
            signer = verify(loads(message.frames[-1] if message.frames else message.body), self.trusted_ca)
        except InvalidEvent as exc:
            self.counters.unverified += 1
            log.warning(
                "bridge %s: refused fedmsg message %s on %s: %s", self.name, event.id, event.topic, exc
            )
            return False
        log.debug("bridge %s: %s signed by %s", self.name, event.id, signer)
        return True

    def _crossing(self, event: Event) -> Event:
        """The event as it crosses: same id and time, marked with the bridge's name."""
        return Event.create(
            event.topic,
            event.body,
            source=event.source,
            headers={**event.headers, BRIDGED_HEADER: self.config.username},
            id=event.id,
            time=event.time,
        )

    # -- AMQP → fedmsg ---------------------------------------------------------------------

    async def _to_fedmsg(self, stop: asyncio.Event) -> None:
        from tidings.transports.zeromq import ZeroMQTransport

        publisher = ZeroMQTransport(self.config.zmq_publish, mode="bind")
        await publisher.connect()
        await publisher.open_sender()  # bound now: fedmsg subscribers join before the first message
        app = self.app()

        @app.subscribe(*self.config.bindings)
        async def forward(event: Event) -> None:
            if event.headers.get(BRIDGED_HEADER):
                self.counters.loops_stopped += 1  # it came from fedmsg: not back again
                return
            await publisher.send("", [self.fedmsg.encode(self._crossing(event))])
            self.counters.to_fedmsg += 1

        try:
            await app.run(self.bus, stop)
        finally:
            await publisher.close()

    def app(self) -> App:
        return App(
            self.config.queue or f"tidings.bridge.{self.name}",
            transport=self.config.transport,
            exchange=self.config.exchange,
            format="fedora-messaging",
        )


async def _subscribe(endpoint: str, topics: list[str], stop: asyncio.Event) -> AsyncIterator[WireMessage]:
    """Messages from one fedmsg publisher (we connect; it binds), until ``stop``."""
    from tidings.transports.zeromq import ZeroMQTransport

    # a bind address ("tcp://*:9941", the bridge's own PUB) is reached on this machine
    subscriber = ZeroMQTransport(endpoint.replace("://*:", "://127.0.0.1:"), mode="bind")
    await subscriber.connect()
    stream = subscriber.consume(QueueSpec("fedmsg", [Binding("", t) for t in topics]), prefetch=1)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        while not stop.is_set():
            receiving = asyncio.ensure_future(anext(stream))  # type: ignore[arg-type]
            done, _ = await asyncio.wait({receiving, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if receiving not in done:
                receiving.cancel()
                await asyncio.gather(receiving, return_exceptions=True)  # the stream is free to close
                break
            yield receiving.result().message
    finally:
        stopping.cancel()
        await stream.aclose()  # type: ignore[attr-defined]
        await subscriber.close()


def same_message(event_id: str) -> str:
    """The id a message keeps on both buses: fedmsg prefixes ours with the year ("2026-<id>")."""
    return event_id[5:] if len(event_id) > 5 and event_id[:4].isdigit() and event_id[4] == "-" else event_id


async def verify_missing(bridge: Bridge, duration: float, grace: float) -> dict[str, list[str]]:
    """Watch both buses for ``duration`` seconds; the ids seen on one side only for longer than
    ``grace`` seconds, as ``{"fedmsg": [...], "amqp": [...]}`` (empty lists: nothing missing).

    The fedmsg side is every fedmsg publisher and the bridge's own PUB socket; the AMQP side is
    a temporary queue on each of the two exchanges (the one the bridge reads, its own).
    """
    check = MissingCheck(grace=grace)  # side "a": fedmsg, side "b": AMQP
    stop = asyncio.Event()
    config = bridge.config
    endpoints = [*config.zmq_endpoints, *([config.zmq_publish] if config.zmq_publish else [])]

    async def watch_fedmsg(endpoint: str) -> None:
        async for message in _subscribe(endpoint, config.zmq_topics, stop):
            try:
                check.saw("a", same_message(bridge.fedmsg.decode(message).id), time.monotonic())
            except TidingsError:
                continue  # not a fedmsg envelope: nothing to compare

    def amqp_watcher(exchange: str) -> App:
        # one queue per bridge and exchange, reused by every check; unused, the broker drops it
        app = App(
            f"tidings.verify.{bridge.name}.{exchange}",
            transport=config.transport,
            exchange=exchange,
            format="fedora-messaging",
            queue_arguments={"x-expires": 60_000},
        )
        app.subscribe("#")(lambda event: check.saw("b", same_message(event.id), time.monotonic()))
        return app

    exchanges = {config.exchange, bridge.bus.config.connectors[config.connector].exchange}
    watchers = [amqp_watcher(exchange) for exchange in sorted(exchanges)]
    for watcher in watchers:
        await watcher.declare(bridge.bus)
    tasks = [asyncio.create_task(watch_fedmsg(e)) for e in endpoints]
    tasks += [asyncio.create_task(w.run(bridge.bus, stop)) for w in watchers]
    await asyncio.sleep(duration)
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    missing = check.missing(time.monotonic() + grace)  # everything watched has had its grace
    return {"fedmsg": missing["a"], "amqp": missing["b"]}
