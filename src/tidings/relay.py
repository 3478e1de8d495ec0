"""Relays: take events from any bus, keep those a filter passes, publish them through the outbox.

A ``[relays.NAME]`` is a consumer (any transport, any format: a ZeroMQ SUB on a LAVA stream, an
AMQP queue, Kafka ...) whose handler publishes what passes into this bus's outbox, so a relayed
event has every guarantee a published one has: durable, delivered to each connector whose
``topics`` take it, with that connector's backlog and dead letters. The handler returns — and an
acknowledging input is acked — only after the outbox committed it.

Loops: a relayed event carries the names of the relays it went through in the
``x-tidings-relays`` header. A relay drops an event that already went through it, or through
``max_hops`` relays, so two relays feeding each other stop after one round. The event keeps its
id, and the outbox stores an id once, so a relay never re-publishes what is already there.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import TYPE_CHECKING, Any

import msgspec

from tidings.config import Config, ConsumerConfig, RelayConfig, archives_outbox
from tidings.config_checks import check_topic_template
from tidings.consumer import App
from tidings.errors import ConfigError, InvalidTopic
from tidings.event import HOPS_HEADER, Event, the_events_own, year_prefixed
from tidings.filters import FilterTimeout, Predicate, compile_filter
from tidings.handling import Reject
from tidings.migration import MissingCheck, Sightings
from tidings.topics import validate_topic

if TYPE_CHECKING:
    from tidings.bus import Bus

log = logging.getLogger(__name__)


#: what a relay's section holds besides the settings its input App takes: its own options, and
#: the consumer options the relay decides itself (its handler, bindings and queue)
_NOT_CONSUMER_SETTINGS = {
    *(set(RelayConfig.__struct_fields__) - set(ConsumerConfig.__struct_fields__)),
    "app",
    "bindings",
    "queue",
}


@dataclasses.dataclass
class RelayCounters:
    relayed: int = 0
    filtered: int = 0
    looped: int = 0


class Relay:
    """One ``[relays.NAME]``: its filter, its topic mapping, and the App that runs it."""

    def __init__(self, bus: Bus, name: str) -> None:
        config = bus.config.relays.get(name)
        if config is None:
            known = ", ".join(sorted(bus.config.relays)) or "none"
            raise ConfigError(f"no relay named {name!r} is configured (configured: {known})")
        self.bus, self.name, self.config = bus, name, config
        where = f"[relays.{name}]"
        self.passes: Predicate = compile_filter(config.filter, f"{where} filter") if config.filter else _all
        self.topic_template = check_topic_template(config.topic, f"{where} topic")
        self.counters = RelayCounters()
        self.sightings = Sightings(bus.config.home_path() / "migration.db")

    def app(self) -> App:
        own = self._reads_its_own_connector()
        if own is not None:
            log.warning(
                "relay %s reads what connector %s of this bus sends and keeps each event's id: "
                "those events are in this outbox already, which takes an id once, so they are not "
                'relayed again (give the relay another id, such as id = "relayed-{id}")',
                self.name,
                own,
            )
        settings = msgspec.structs.asdict(self.config)
        for key in _NOT_CONSUMER_SETTINGS:
            settings.pop(key)
        app = App(f"relay.{self.name}", queue=self.config.queue or f"relay.{self.name}", **settings)
        app.add_handler(self.config.bindings or ["#"], self.relay)
        return app

    def _reads_its_own_connector(self) -> str | None:
        """A connector of this bus that sends to where the relay reads, when the relay keeps ids."""
        if self.config.id != "{id}":
            return None
        config = self.bus.config
        reads = (config.transport_name(self.config.transport), self.config.exchange)
        for name, connector in config.connectors.items():
            if (config.transport_name(connector.transport), connector.exchange) == reads:
                return name
        return None

    def apps(self) -> list[App]:
        """The relay, and the watcher of the new bus when ``watch`` is set."""
        return [self.app(), *([self.watcher()] if self.config.watch else [])]

    def watcher(self) -> App:
        """A consumer of the new bus counting, per application, what it publishes there natively."""
        watch = dict(self.config.watch)
        bindings = watch.pop("bindings", None) or ["#"]
        queue = watch.pop("queue", None) or f"relay.{self.name}.watch"
        app = App(f"relay.{self.name}.watch", queue=queue, **watch)

        def native(event: Event) -> None:
            if self.name not in hops_of(event):  # not a copy this relay made
                self.sightings.seen(self.name, "new", event)

        app.add_handler(bindings, native)
        return app

    async def relay(self, event: Event) -> None:
        """Publish ``event`` if it passes (returns once it is committed to the outbox)."""
        self.sightings.seen(self.name, "old", event)
        try:
            outgoing = self.outgoing(event)
        except FilterTimeout as exc:  # it would take as long every time
            raise Reject(str(exc)) from None
        if outgoing is not None:
            await self.bus.apublish(outgoing)
            self.counters.relayed += 1  # counted once in the outbox (a refused one is not relayed)

    def outgoing(self, event: Event) -> Event | None:
        """What this relay publishes for ``event``, or None (filtered out, or a loop)."""
        hops = hops_of(event)
        if self.is_a_loop(event, hops):
            self.counters.looped += 1
            log.debug("relay %s: event %s already went through %s: dropped", self.name, event.id, hops)
            return None
        if not self.passes(event):
            self.counters.filtered += 1
            return None
        # what the source bus's transports wrote (a dead letter's attempts and reason) is not the
        # event's: on this bus a consumer would take it for its own count
        carried = the_events_own(event.headers)
        headers = {**carried, **self.config.mark, HOPS_HEADER: ",".join([*hops, self.name])}
        return dataclasses.replace(event, id=self.id_for(event), topic=self.topic_for(event), headers=headers)

    def is_a_loop(self, event: Event, hops: list[str]) -> bool:
        """Whether ``event`` (which went through relays ``hops``) is dropped as a loop."""
        return self.name in hops or len(hops) >= self.config.max_hops or self._marked(event)

    def _marked(self, event: Event) -> bool:
        """Whether ``event`` carries a mark like this relay's (any value: an HA pair of bridges
        has two names): it crossed a bridge once already."""
        return any(event.headers.get(key) for key in self.config.mark)

    def id_for(self, event: Event) -> str:
        """The relayed event's id: the same for the same incoming event, so a redelivery is
        recognised by the outbox; ``{year}-{id}`` leaves an id already in that form as it is."""
        template = self.config.id
        if template == "{id}" or (template == "{year}-{id}" and year_prefixed(event.id)):
            return event.id
        return template.replace("{year}", str(event.time.year)).replace("{id}", event.id)

    def topic_for(self, event: Event) -> str:
        words = event.topic.split(".")
        try:
            topic = self.topic_template.format(*words, topic=event.topic)
        except IndexError:
            raise Reject(
                f"relay {self.name}: topic {self.config.topic!r} needs more words than {event.topic!r} has"
            ) from None
        try:
            return validate_topic(topic)
        except InvalidTopic as exc:  # too long, say: this event cannot be relayed, others can
            raise Reject(f"relay {self.name}: topic {self.config.topic!r} makes {exc}") from None


def connector_test(config: Config, name: str) -> Predicate | None:
    """What an event must pass to go to connector ``name`` besides its topics: the connector's
    filter, and not to have been relayed by a relay whose ``connectors`` leave this one out."""
    tests: list[Predicate] = []
    section = config.connectors[name]
    if section.filter is not None:
        tests.append(compile_filter(section.filter, f"[connectors.{name}] filter"))
    if archives_outbox(config, name):
        # the archive keeps every event, relayed ones too, but not a copy made under a new id
        # (the bridge's AMQP → fedmsg direction): it has the original, or it is another bus's
        elsewhere = {relay for relay, settings in config.relays.items() if settings.id != "{id}"}
    else:
        elsewhere = {
            relay
            for relay, settings in config.relays.items()
            if settings.connectors and name not in settings.connectors
        }
    if elsewhere:
        # the last hop is the relay that put the event into this outbox
        tests.append(lambda event: not (hops := hops_of(event)) or hops[-1] not in elsewhere)
    if not tests:
        return None
    return tests[0] if len(tests) == 1 else lambda event: all(test(event) for test in tests)


def hops_of(event: Event) -> list[str]:
    raw = event.headers.get(HOPS_HEADER)
    return [hop for hop in str(raw).split(",") if hop] if raw else []


def _all(event: Any) -> bool:
    return True


async def verify_missing(
    relay: Relay, duration: float, grace: float, stopped: asyncio.Event | None = None
) -> dict[str, list[str]]:
    """Watch both sides of ``relay`` for ``duration`` seconds: the ids that passed its filter on
    the old bus but never arrived on the new one (``"old"``), and the copies on the new bus never
    seen on the old one (``"new"``), once ``grace`` seconds have passed for each.

    Each side is watched with a queue of its own (``tidings.verify.relay.NAME`` on the input,
    ``tidings.verify.relay.NAME.watch`` on the new bus; on RabbitMQ they expire a minute after
    the check), so the relay's own queue is not touched; the new bus is the relay's ``watch``.
    """
    if not relay.config.watch:
        raise ConfigError(f"[relays.{relay.name}] needs watch = {{...}} (the new bus) for --verify-missing")
    check = MissingCheck(grace=grace)
    stop = asyncio.Event()
    old = _watcher(relay, msgspec.structs.asdict(relay.config), "", lambda e: _old_side(relay, check, e))
    new = _watcher(relay, dict(relay.config.watch), ".watch", lambda e: _new_side(relay, check, e))
    for app in (old, new):
        await app.declare(relay.bus)
    tasks = [asyncio.create_task(app.run(relay.bus, stop)) for app in (old, new)]
    moment = await check.watch(duration, stopped)
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    missing = check.missing(moment)
    return {"old": missing["a"], "new": missing["b"]}


def _watcher(relay: Relay, section: dict[str, Any], suffix: str, saw: Any) -> App:
    name = f"tidings.verify.relay.{relay.name}{suffix}"
    kept = {
        key: section[key] for key in ("transport", "exchange", "format", "format_options") if key in section
    }
    app = App(name, queue=name, queue_arguments={"x-expires": 60_000}, **kept)
    app.add_handler(section.get("bindings") or ["#"], saw)
    return app


def _old_side(relay: Relay, check: MissingCheck, event: Event) -> None:
    if not relay.is_a_loop(event, hops_of(event)) and relay.passes(event):
        check.saw("a", relay.id_for(event), time.monotonic())  # the id its copy carries


def _new_side(relay: Relay, check: MissingCheck, event: Event) -> None:
    if relay.name in hops_of(event):  # a copy this relay made
        check.saw("b", event.id, time.monotonic())
