"""The consumer runtime's public side: an App, its subscriptions, its settings.

An App is one consuming service: a durable queue bound by its subscriptions'
patterns, with handlers for the events that arrive. A message is acked only after
every matching handler returned. Exceptions are flow control, as in
fedora-messaging:

* :class:`Retry` — deliver again later (after ``delay`` or the app's schedule);
* :class:`Drop` — ack and forget it;
* :class:`Reject` — send it to the queue's dead letters now;
* :class:`Halt` — put it back untouched and stop the app;
* any other exception — retry with backoff until ``max_attempts``, then dead-letter.

Its settings are the same whether they come from code (``App("svc", prefetch=50)``)
or from the config file (``[consumers.svc]``, :meth:`App.from_config`). How a
message is decoded, handed to handlers and settled is :mod:`tidings.runner`.
"""

from __future__ import annotations

import asyncio
import inspect
import sys
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

import msgspec

from tidings.config import ConsumerConfig
from tidings.errors import ConfigError, HaltedError
from tidings.format import Format, load_format, wire_pattern
from tidings.handling import Context, Counters, Drop, Halt, Handler, Reject, Retry, Subscription
from tidings.plugins import explain, import_object
from tidings.retry import scheduled
from tidings.runner import Runner
from tidings.stopping import leave_now_if_forced, run_until_signalled
from tidings.topics import TopicMatcher, validate_pattern
from tidings.transport import Binding, ExchangeSpec, QueueSpec, Topology

if TYPE_CHECKING:
    from tidings.bus import Bus

__all__ = ["App", "Context", "Drop", "Halt", "Reject", "Retry", "callback_app", "consumer_settings"]


def consumer_settings(name: str, **given: Any) -> ConsumerConfig:
    """An App's settings from keyword arguments, checked as ``[consumers.NAME]`` is."""
    given.setdefault("queue", name)
    if not isinstance(name, str) or not name.strip():
        # on RabbitMQ an empty name makes the broker name a new queue at every declare
        raise ConfigError(f"App({name!r}): an app needs a name (it names its queue)")
    try:
        settings = msgspec.convert(given, ConsumerConfig, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"App({name!r}): {explain(exc)}") from None
    for pattern in settings.bindings:
        validate_pattern(pattern)
    return settings


#: topics whose handlers an App remembers
HANDLER_CACHE_SIZE = 4096


class App:
    """A consuming service: a durable queue bound by its subscriptions' patterns.

    >>> app = App("triage")
    >>> @app.subscribe("datawarehouse.checkout.*")
    ... def on_checkout(event): ...
    """

    def __init__(self, name: str, *, queue: str | None = None, **settings: Any) -> None:
        self.name = name
        #: what ``[consumers.NAME]`` holds; see :class:`~tidings.config.ConsumerConfig`
        self.settings = consumer_settings(name, queue=queue or name, **settings)
        self.subscriptions: list[Subscription] = []
        self._routes: TopicMatcher[int] = TopicMatcher()
        #: topic -> its handlers; most services see a few topics over and over
        self._handlers_of: dict[str, list[Subscription]] = {}
        self.counters = Counters()
        self._format: tuple[str, Format] | None = None

    def format(self) -> Format:
        """The format the app's messages are decoded with (its settings' name and options)."""
        # settings may change after the app was made (the CLI and the config apply theirs): key on them
        key = f"{self.settings.format}:{sorted(self.settings.format_options.items())!r}"
        if self._format is None or self._format[0] != key:
            self._format = (key, load_format(self.settings.format, self.settings.format_options))
        return self._format[1]

    def subscribe(self, *patterns: str) -> Callable[[Handler], Handler]:
        """Register a handler (sync or async) for events whose topic matches any pattern."""
        if not patterns:
            raise TypeError("subscribe() needs at least one topic pattern")
        for pattern in patterns:
            validate_pattern(pattern)

        def register(handler: Handler) -> Handler:
            self.add_handler(patterns, handler)
            return handler

        return register

    @classmethod
    def from_config(cls, bus: Bus, name: str) -> App:
        """The consumer ``[consumers.NAME]`` of the bus's config, ready to ``run``.

        With ``app = "module:attribute"`` naming an App, that App with the section's settings
        over its own (the keys the section sets; its ``bindings`` add to the subscriptions);
        naming a function, an App with that function as the handler of the section's
        ``bindings``; without ``app``, an App with no handler (its queue, for ``tidings doctor``).
        """
        section = bus.config.consumers.get(name)
        if section is None:
            known = ", ".join(sorted(bus.config.consumers)) or "none"
            raise ConfigError(f"no consumer named {name!r} is configured (configured: {known})")
        where = f"[consumers.{name}]"
        found = (
            import_object(section.app, f"{where} app", beside=bus.config.base_dir) if section.app else None
        )
        if isinstance(found, App):
            found.configure(section)
            return found
        app = cls(name, **_set_in(section, exclude=("app",)))
        app.settings.queue = section.queue or name
        if found is not None:
            if not callable(found):
                raise ConfigError(f"{where} app {section.app!r} is neither an App nor a function")
            if not section.bindings:
                raise ConfigError(f'{where} serves a plain function: give it bindings = ["pattern", ...]')
            app.add_handler(section.bindings, found)
        return app

    def configure(self, section: ConsumerConfig) -> None:
        """Take the settings a config section sets (those that differ from the defaults)."""
        for key, value in _set_in(section, exclude=("app", "queue")).items():
            setattr(self.settings, key, value)
        if section.queue:
            self.settings.queue = section.queue

    def add_handler(self, patterns: Iterable[str], handler: Handler) -> None:
        patterns = tuple(patterns)
        for pattern in patterns:
            validate_pattern(pattern)
        takes_context = _takes_context(handler)
        _check_callable_with(handler, 2 if takes_context else 1)
        # a coroutine function, or an object whose __call__ is one (its own or a base class's)
        call = None if inspect.isroutine(handler) else inspect.getattr_static(type(handler), "__call__", None)
        is_async = inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(call)
        index = len(self.subscriptions)
        self.subscriptions.append(Subscription(patterns, handler, takes_context, is_async))
        for pattern in patterns:
            self._routes.add(pattern, index)
        self._handlers_of.clear()

    def bindings(self) -> list[str]:
        seen: dict[str, None] = {}
        for sub in self.subscriptions:
            seen.update(dict.fromkeys(sub.patterns))
        seen.update(dict.fromkeys(self.settings.bindings))
        return list(seen)

    def queue_spec(self) -> QueueSpec:
        """The app's queue, bound by its patterns as they look on the wire (a format may add a prefix)."""
        s = self.settings
        fmt = self.format()
        bindings = [Binding(s.exchange, wire_pattern(fmt, p)) for p in self.bindings()]
        return QueueSpec(s.queue, bindings, kind=s.queue_kind, arguments=dict(s.queue_arguments))

    def handlers_for(self, topic: str) -> list[Subscription]:
        found = self._handlers_of.get(topic)
        if found is None:
            found, handlers = [], set()
            for i in sorted(self._routes.match(topic)):
                sub = self.subscriptions[i]
                # one function subscribed twice (two decorators) is one handler of the event
                if id(sub.handler) not in handlers:
                    handlers.add(id(sub.handler))
                    found.append(sub)
            if len(self._handlers_of) >= HANDLER_CACHE_SIZE:
                self._handlers_of.clear()  # topics with ids in them (Taskcluster's) must not grow it
            self._handlers_of[topic] = found
        return found

    def retry_delay(self, attempt: int) -> float:
        """Seconds before the message of ``attempt`` comes back (the schedule's entry, no jitter:
        the broker's own timing spreads them)."""
        return scheduled(self.settings.retry_schedule, attempt, rng=None)

    def topology(self) -> Topology:
        return Topology([ExchangeSpec(self.settings.exchange)], [self.queue_spec()])

    async def declare(self, bus: Bus) -> None:
        """Create the app's exchange, queue and bindings now (``run`` does it too)."""
        transport = bus.make_transport(self.settings.transport)
        await transport.connect()
        try:
            await transport.declare(self.topology())
        finally:
            await transport.close()

    async def run(
        self, bus: Bus, stop: asyncio.Event | None = None, *, wait_for_broker: bool = False
    ) -> None:
        """Consume until ``stop`` is set (or a handler raises Halt). A broker away at the start
        raises TransportError, or with ``wait_for_broker`` is tried again until it answers."""
        await Runner(self, bus).run(stop or asyncio.Event(), wait_for_broker=wait_for_broker)

    def run_forever(self, bus: Bus) -> None:
        """Blocking entry point: consume until SIGTERM or SIGINT, finishing in-flight handlers
        (a second signal stops at once: :mod:`tidings.stopping`). A handler's Halt ends the
        process with exit status 8, as ``tidings consume`` does (one line on stderr)."""
        try:
            received = asyncio.run(run_until_signalled(self.run, bus))
        except HaltedError as exc:
            print(f"tidings: error: {exc}", file=sys.stderr)
            raise SystemExit(exc.exit_code) from None
        leave_now_if_forced(received)


_DEFAULTS = ConsumerConfig()


def _set_in(section: ConsumerConfig, exclude: tuple[str, ...]) -> dict[str, Any]:
    """The settings of a section that differ from the defaults: what a config file says."""
    return {
        key: getattr(section, key)
        for key in section.__struct_fields__
        if key not in exclude and getattr(section, key) != getattr(_DEFAULTS, key)
    }


def _check_callable_with(handler: Handler, arguments: int) -> None:
    """A handler the runtime cannot call (three required parameters) is refused when it is added,
    not found out at its first message, and at every one after."""
    try:
        inspect.signature(handler).bind(*range(arguments))
    except ValueError:  # a builtin without a signature: it will tell for itself
        return
    except TypeError as exc:
        given = "the event and its context" if arguments == 2 else "the event"
        name = getattr(handler, "__qualname__", repr(handler))
        raise ConfigError(f"handler {name} cannot be called with {given}: {exc}") from None


def _takes_context(handler: Handler) -> bool:
    """Whether a handler wants a Context: a second parameter with no default (or typed Context).

    ``lambda event, name=name: ...`` binds a value into its second parameter: it takes no context.
    """
    try:
        parameters = list(inspect.signature(handler).parameters.values())
    except (TypeError, ValueError):  # a builtin without a signature: give it the event only
        return False
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) < 2:
        return any(p.kind is p.VAR_POSITIONAL for p in parameters)
    second = positional[1]
    return second.default is second.empty or second.annotation in (Context, "Context")


def callback_app(
    name: str,
    callback: Callable[..., Any] | Callable[..., Awaitable[Any]],
    patterns: Iterable[str],
    **settings: Any,
) -> App:
    """An App with one handler: what ``tidings consume --callback`` runs."""
    app = App(name, **settings)
    app.add_handler(list(patterns), callback)
    return app
