"""The Bus: one object that holds a configuration and everything built from it.

There is no module-level state: two Bus objects with two configs live side by
side in one process (tests do exactly that).

    bus = Bus.load()                      # tidings.toml, $TIDINGS_CONFIG or the embedded default
    bus.publish("datawarehouse.checkout.new", {...}, type="cki.datawarehouse.v1")  # durable on return
    await bus.apublish(...)               # the same from asyncio code
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tidings.config import Config, archives_outbox, load_config
from tidings.connector import Connector
from tidings.consumer import App
from tidings.dispatcher import Dispatcher
from tidings.errors import InvalidEvent, TidingsError
from tidings.event import (
    Event,
    JSONScalar,
    Visibility,
    check_envelope,
    check_id,
    check_publisher_headers,
    dumps,
    holds_non_finite,
    json_depth,
)
from tidings.format import Format, load_format
from tidings.inbox import Inbox
from tidings.journal import HandlingJournal
from tidings.outbox import Outbox
from tidings.schemas import SchemaRegistry
from tidings.topics import validate_topic
from tidings.transport import Transport, load_transport

log = logging.getLogger(__name__)


class Bus:
    def __init__(self, config: Config, *, schemas: SchemaRegistry | None = None) -> None:
        self.config = config
        self.schemas = (
            schemas
            if schemas is not None
            else SchemaRegistry.default(
                (Path(config.base_dir, d) for d in config.schemas.dirs),
                assert_formats=config.schemas.assert_formats,
            )
        )
        self._outbox: Outbox | None = None
        #: where publishing goes instead of the outbox while ``diverted`` (tidings.testing.mock_sends)
        self._diversion: Outbox | None = None
        self._inbox: Inbox | None = None
        self._journal: HandlingJournal | None = None
        self._lock = threading.Lock()

    @classmethod
    def load(cls, path: str | Path | None = None) -> Bus:
        """The bus of ``path``, ``$TIDINGS_CONFIG``, ``./tidings.toml`` or the embedded default."""
        return cls(load_config(path))

    @property
    def outbox(self) -> Outbox:
        if self._outbox is not None:  # every publish asks: no lock once it exists
            return self._outbox
        with self._lock:
            if self._outbox is None:
                self._outbox = Outbox(self.config.outbox_path())
            return self._outbox

    def inbox(self) -> Inbox:
        with self._lock:
            if self._inbox is None:
                self._inbox = Inbox(self.config.home_path() / "inbox.db")
            return self._inbox

    def journal(self) -> HandlingJournal:
        """Which messages this bus's consumers started handling and never settled (their deaths)."""
        with self._lock:
            if self._journal is None:
                self._journal = HandlingJournal(self.config.home_path() / "handling")
            return self._journal

    def close(self) -> None:
        for part in (self._outbox, self._inbox, self._journal):
            if part is not None:
                part.close()

    @contextmanager
    def diverted(self, outbox: Outbox) -> Iterator[Outbox]:
        """Publish into ``outbox`` instead of the bus's own while the block runs.

        The events are checked as always; only where they are stored changes, on this Bus object
        alone (tidings.testing's mock_sends captures what a block publishes this way); ``outbox``
        stays the bus's own, for everything else that reads it. The caller closes ``outbox``.
        """
        with self._lock:
            previous, self._diversion = self._diversion, outbox
        try:
            yield outbox
        finally:
            with self._lock:
                self._diversion = previous

    # -- events -------------------------------------------------------------------------

    def event(
        self,
        topic: str,
        body: dict[str, Any],
        *,
        type: str | None = None,  # noqa: A002
        headers: dict[str, JSONScalar] | None = None,
        visibility: Visibility = "public",
        id: str | None = None,  # noqa: A002
    ) -> Event:
        """Build an event from this bus's source; it is checked, not yet published."""
        check_publisher_headers(headers)
        event = Event.create(
            topic,
            body,
            source=self.config.bus.source,
            type=type,
            headers=headers,
            visibility=visibility,
            id=id,
        )
        self.check(event)
        return event

    def check(self, event: Event) -> bytes:
        """Depth, size and schema checks; returns the event's stored form (JSON).

        Raises InvalidEvent (or SchemaError) naming the problem.
        """
        limits = self.config.bus
        depth = json_depth(event.body)
        if depth > limits.max_depth:
            raise InvalidEvent(f"event body nests {depth} levels deep; the limit is {limits.max_depth}")
        if event.type is not None:
            self.schemas.validate(event.type, event.body)
        elif limits.require_schema:
            raise InvalidEvent("event has no type, and this bus requires a schema for every event")
        data = event.to_json()
        # written as null, a NaN or an infinity would change the event without a word (looked
        # for only where a null was written: most events have none)
        if b"null" in data and (holds_non_finite(event.body) or holds_non_finite(event.headers)):
            raise InvalidEvent("event holds NaN or Infinity, which JSON cannot carry (use null or a string)")
        # the limit is on the body; the envelope around it is small and bounded by the topic/header checks
        if len(data) > limits.max_body_bytes and len(dumps(event.body)) > limits.max_body_bytes:
            raise InvalidEvent(
                f"event body is {len(dumps(event.body))} bytes; the limit is {limits.max_body_bytes}"
            )
        return data

    def check_received(self, event: Event) -> None:
        """The receiving side: validate against a known schema; foreign types pass through."""
        if event.type is not None and event.type in self.schemas:
            self.schemas.validate(event.type, event.body)

    # -- publishing -----------------------------------------------------------------------

    def publish(
        self, topic_or_event: str | Event, body: dict[str, Any] | None = None, **fields: Any
    ) -> Event:
        """Check and durably store one event; returns it once it is committed to the outbox."""
        event, data = self._as_event(topic_or_event, body, fields)
        (self._diversion or self.outbox).append_encoded([(event.id, event.topic, data)])
        return event

    def publish_many(self, events: Iterable[Event]) -> list[Event]:
        """Check all, then store all in one commit: either every event is stored or none."""
        batch = list(events)
        rows = self._rows(batch)
        if rows:
            (self._diversion or self.outbox).append_encoded(rows)
        return batch

    async def apublish(
        self, topic_or_event: str | Event, body: dict[str, Any] | None = None, **fields: Any
    ) -> Event:
        """:meth:`publish` for asyncio code: coroutines publishing together share one commit, made on
        the event loop; returns once the event is on disk."""
        event, data = self._as_event(topic_or_event, body, fields)
        await (self._diversion or self.outbox).append_async([(event.id, event.topic, data)])
        return event

    async def apublish_many(self, events: Iterable[Event]) -> list[Event]:
        """:meth:`publish_many` for asyncio code: all stored, or none."""
        batch = list(events)
        rows = self._rows(batch)
        if rows:
            await (self._diversion or self.outbox).append_async(rows)
        return batch

    def _as_event(
        self, topic_or_event: str | Event, body: dict[str, Any] | None, fields: dict[str, Any]
    ) -> tuple[Event, bytes]:
        if isinstance(topic_or_event, Event):
            if body is not None or fields:
                raise TypeError("publish(event) takes no body or fields")
            return topic_or_event, self._check_given(topic_or_event)
        if body is None:
            raise TypeError("publish(topic, body) needs a body")
        check_publisher_headers(fields.get("headers"))
        fields.setdefault("source", self.config.bus.source)
        event = Event.create(topic_or_event, body, **fields)
        return event, self.check(event)

    def _rows(self, batch: list[Event]) -> list[tuple[str, str, bytes]]:
        """Each event checked, as the outbox stores it: (id, topic, data)."""
        rows = []
        for event in batch:
            data = self._check_given(event)
            rows.append((event.id, event.topic, data))
        return rows

    def _check_given(self, event: Event) -> bytes:
        """An Event object a caller made (``Event(...)`` skips what ``Event.create`` checks): its
        topic, envelope, id and headers as a publisher's, then :meth:`check`."""
        if not isinstance(event, Event):
            raise TypeError(
                f"publish_many takes Event objects (bus.event(topic, body)), not {type(event).__name__}"
            )
        validate_topic(event.topic)
        check_envelope(event.body, event.headers, event.visibility)
        check_id(event.id)
        check_publisher_headers(event.headers)
        return self.check(event)

    # -- the parts built from config ------------------------------------------------------

    def make_transport(self, name: str) -> Transport:
        """A new (unconnected) transport: each event loop needs its own connection."""
        name = self.config.transport_name(name)
        kind, options = self.config.transport_options(name)
        return load_transport(kind, options, f"[transports.{name}]")

    def make_format(self, name: str, options: dict[str, Any] | None = None, where: str = "") -> Format:
        return load_format(name, options, where)

    def connectors(self, names: Sequence[str] | None = None) -> list[Connector]:
        from tidings.relay import connector_test  # relays are built on consumers, which need the bus

        # a name given twice is one connector (two would deliver every event twice)
        chosen = list(dict.fromkeys(names)) if names else list(self.config.connectors)
        shared: dict[str, Transport] = {}
        connectors = []
        for name in chosen:
            config = self.config.connectors[name]
            if archives_outbox(self.config, name):
                from tidings.archive.sink import ArchiveSink  # the archive is no broker: no plug-in

                shared[config.transport] = ArchiveSink(self.config)
            if config.transport not in shared:
                shared[config.transport] = self.make_transport(config.transport)
            connectors.append(
                Connector(
                    name,
                    shared[config.transport],
                    self.make_format(
                        config.format, config.format_options, f"[connectors.{name}] format_options"
                    ),
                    config,
                    accepts=connector_test(self.config, name),
                )
            )
        return connectors

    # -- consumers from the config ---------------------------------------------------------

    def consumer(self, name: str) -> App:
        """The consumer ``[consumers.NAME]``, ready to run (see :meth:`App.from_config`)."""
        return App.from_config(self, name)

    def served_consumers(self) -> list[App]:
        """What :meth:`serve` runs: every consumer with an ``app``, every relay, the reactor's rules."""
        from tidings.reactor import reactor_apps
        from tidings.relay import Relay

        apps = [self.consumer(name) for name, section in self.config.consumers.items() if section.app]
        apps += [app for name in self.config.relays for app in Relay(self, name).apps()]
        return apps + reactor_apps(self)

    async def serve(
        self,
        stop: asyncio.Event,
        apps: Sequence[App] | None = None,
        *,
        beside: Sequence[Callable[[asyncio.Event], Awaitable[None]]] = (),
    ) -> None:
        """The dispatcher and the configured consumers (``apps``: these instead), until ``stop``.

        ``beside``: more ``run(stop)`` services in the same process (the web page, when
        ``[web]`` is configured); the core does not import them.
        """
        consumers = self.served_consumers() if apps is None else list(apps)
        await self._declare_before_dispatching(consumers)
        # a broker away now is waited for, by the consumers as by the dispatcher: a service
        # started before its broker (a machine booting) begins when the broker does
        tasks = [
            asyncio.create_task(app.run(self, stop, wait_for_broker=True), name=f"consumer-{app.name}")
            for app in consumers
        ]
        tasks.append(asyncio.create_task(self.dispatcher().run(stop), name="dispatcher"))
        tasks += [asyncio.create_task(run(stop), name=f"beside-{n}") for n, run in enumerate(beside)]
        archive = self.config.archive
        if archive is not None and not archive.from_outbox():  # from the outbox: the dispatcher archives
            from tidings.archive.ingest import run_sources

            tasks.append(asyncio.create_task(run_sources(self, stop), name="archive"))
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:  # one failed: the others must not outlive the call
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _declare_before_dispatching(self, consumers: Sequence[App]) -> None:
        """Each consumer's queue and bindings exist before the dispatcher sends: what it sends
        first must find them (RabbitMQ drops a message no queue is bound for; a new Kafka group
        starts at the end). A broker that is down now is the consumer's own run to report."""
        for app in consumers:
            try:
                await app.declare(self)
            except TidingsError as exc:
                log.warning("consumer %s: could not declare its queue before dispatching: %s", app.name, exc)

    def dispatcher(self, names: Sequence[str] | None = None) -> Dispatcher:
        # its own connection: reads and settlements never wait behind this process's publishers
        return Dispatcher(
            Outbox(self.config.outbox_path()),
            self.connectors(names),
            retention=self.config.outbox.retention,
            wake_source=self.outbox,
            # a disabled connector too: its events wait for it (enabled = false is a pause, not
            # a farewell; a connector taken out of the config lets them go)
            holders=list(self.config.connectors),
        )
