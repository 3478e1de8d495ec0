"""A two-way bridge between fedmsg (ZeroMQ) and AMQP (fedora-messaging), without loops.

Fedora moved from fedmsg to fedora-messaging with bridges in both directions while both buses
lived. Here a bridge is two relays (:mod:`tidings.relay`), which ``[bridges.NAME]`` stands for
(:func:`~tidings.formats.fedora.settings.expand_bridge`): every message goes through the outbox,
so nothing taken from ZeroMQ or AMQP is lost once the bridge has it, and each direction has its
connector's backlog and dead letters.

* fedmsg → AMQP (relay ``NAME.fedmsg-to-amqp``): SUB to the fedmsg publishers; what decodes is
  published to the bridge's ``connector`` alone (format ``fedora-messaging``), whose exchange is
  the bridge's own (``zmq.topic``), never the one the other direction reads.
* AMQP → fedmsg (relay ``NAME.amqp-to-fedmsg``): a durable queue bound to ``amq.topic``, acked
  once the outbox has each message; connector ``NAME.to-fedmsg`` publishes them as fedmsg frames
  on a PUB socket (``zmq_publish``), and carries nothing else.
* Loops: both relays mark what they carry with the bridge's username in ``fedmsg_bridged_by``
  (a header on AMQP, a field of the fedmsg envelope) and drop a message that has it. The separate
  exchange is the first guard, the mark the second (for brokers that bind ``zmq.topic`` into
  ``amq.topic`` so fedora-messaging consumers see everything).
* :func:`verify_missing` watches both sides and reports every id seen on one side only after a
  grace period, as fedmsg-migration-tools' check did.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from tidings.bus import Bus
from tidings.consumer import App
from tidings.errors import ConfigError, TidingsError
from tidings.event import year_prefixed
from tidings.formats.fedora.fedmsg import FedmsgFormat
from tidings.formats.fedora.settings import BridgeConfig, bridge_config, bridge_parts
from tidings.migration import MissingCheck
from tidings.relay import Relay
from tidings.transport import Binding, QueueSpec, WireMessage


@dataclass
class BridgeCounters:
    to_amqp: int = 0
    to_fedmsg: int = 0
    loops_stopped: int = 0
    #: fedmsg messages that are no fedmsg envelope, or (``verify = true``) not signed by a
    #: trusted signer: counted and skipped
    undecodable: int = 0


class Bridge:
    """One ``[bridges.NAME]`` section at work: its two relays and the dispatcher of their connectors."""

    def __init__(self, bus: Bus, name: str) -> None:
        try:
            table = bus.config.bridges[name]
        except KeyError:
            known = ", ".join(bus.config.bridges) or "none"
            raise ConfigError(f"no bridge named {name!r} is configured (configured: {known})") from None
        self.config: BridgeConfig = bridge_config(bus.config, name, table, f"[bridges.{name}]")
        self.bus, self.name = bus, name
        self.parts = bridge_parts(name)
        self.fedmsg = FedmsgFormat(self.config.topic_prefix, self.config.environment, self.config.username)
        directions = ["from_fedmsg", *(["to_fedmsg"] if self.config.zmq_publish else [])]
        self.relays = {direction: Relay(bus, self.parts[direction]) for direction in directions}
        self.apps = {direction: relay.app() for direction, relay in self.relays.items()}
        self.apps["from_fedmsg"].format()  # a trusted CA that cannot be read is said now, not later

    @property
    def counters(self) -> BridgeCounters:
        relayed = {direction: relay.counters.relayed for direction, relay in self.relays.items()}
        return BridgeCounters(
            to_amqp=relayed["from_fedmsg"],
            to_fedmsg=relayed.get("to_fedmsg", 0),
            loops_stopped=sum(relay.counters.looped for relay in self.relays.values()),
            undecodable=self.apps["from_fedmsg"].counters.rejected,
        )

    def connectors(self) -> list[str]:
        return [self.config.connector, *([self.parts["connector"]] if self.config.zmq_publish else [])]

    async def run(self, stop: asyncio.Event) -> None:
        """Bridge until ``stop`` is set: both relays, and a dispatcher for their connectors."""
        tasks = [asyncio.create_task(self.bus.dispatcher(self.connectors()).run(stop))]
        tasks += [asyncio.create_task(app.run(self.bus, stop)) for app in self.apps.values()]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for relay in self.relays.values():
                relay.sightings.close()


async def _subscribe(endpoint: str, topics: list[str], stop: asyncio.Event) -> AsyncIterator[WireMessage]:
    """Messages from one fedmsg publisher (we connect; it binds), until ``stop``."""
    from tidings.transports.zeromq import ZeroMQTransport

    subscriber = ZeroMQTransport(endpoint, mode="bind")
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
    return event_id[5:] if year_prefixed(event_id) else event_id


async def verify_missing(
    bridge: Bridge, duration: float, grace: float, stopped: asyncio.Event | None = None
) -> dict[str, list[str]]:
    """Watch both buses for ``duration`` seconds; the ids seen on one side only for longer than
    ``grace`` seconds, as ``{"fedmsg": [...], "amqp": [...]}`` (empty lists: nothing missing).

    The fedmsg side is every fedmsg publisher and the bridge's own PUB socket; the AMQP side is
    a temporary queue on each of the two exchanges (the one the bridge reads, its own).
    """
    check = MissingCheck(grace=grace)  # side "a": fedmsg, side "b": AMQP
    stop = asyncio.Event()
    config = bridge.config
    endpoints = [*config.zmq_endpoints, *([config.zmq_publish] if config.zmq_publish else [])]
    # what the relay subscribes to: its bindings (short topics) as the frames' topics
    short = bridge.relays["from_fedmsg"].config.bindings
    topics = [bridge.fedmsg.wire_pattern(pattern) for pattern in short]

    async def watch_fedmsg(endpoint: str) -> None:
        async for message in _subscribe(endpoint, topics, stop):
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
    moment = await check.watch(duration, stopped)
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    missing = check.missing(moment)
    return {"fedmsg": missing["a"], "amqp": missing["b"]}
