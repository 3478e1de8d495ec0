"""What the operator pages show: connectors' backlogs, consumers' queues, an event on the wire.

Plain data for the templates (which escape every value); nothing here renders HTML.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tidings.bus import Bus
from tidings.errors import TidingsError
from tidings.event import Event, loads, pretty
from tidings.outbox import ConnectorStatus
from tidings.transport import Transport, dead_letters

log = logging.getLogger(__name__)

#: dead letters counted at most per queue (RabbitMQ has no count without taking them)
DEAD_COUNT_LIMIT = 100
#: entries listed per connector and table
ENTRIES = 100
#: seconds a broker may take to answer the consumers page
BROKER_TIMEOUT = 5.0


def when(moment: float | None) -> str:
    if moment is None:
        return ""
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@dataclass(slots=True)
class ConnectorView:
    status: ConnectorStatus
    format: str
    transport: str
    dead: list[dict[str, object]]
    backlog: list[dict[str, object]]


def connectors(bus: Bus, *, include_private: bool) -> list[ConnectorView]:
    """Each connector's counts and first entries; those of private events only if ``include_private``
    (the counts take every event: they say how much waits, not what)."""
    names = list(bus.config.connectors)
    views = []
    for status in bus.outbox.status(names):
        config = bus.config.connectors[status.connector]
        views.append(
            ConnectorView(
                status,
                config.format,
                config.transport,
                _shown(bus.outbox.entries(status.connector, "dead", ENTRIES), include_private),
                _shown(bus.outbox.entries(status.connector, "backlog", ENTRIES), include_private),
            )
        )
    return views


def _shown(entries: list[dict[str, object]], include_private: bool) -> list[dict[str, object]]:
    shown = [entry for entry in entries if include_private or not entry["private"]]
    for entry in shown:
        moment = entry.get("when")
        entry["when"] = when(float(moment)) if isinstance(moment, int | float) else ""
    return shown


@dataclass(slots=True)
class QueueView:
    consumer: str
    queue: str
    transport: str
    depth: str = "unknown"
    dead: str = "unknown"
    problem: str = ""


async def consumer_queues(bus: Bus) -> list[QueueView]:
    """Each configured consumer's queue depth and dead letters, one connection per transport."""
    views = [
        QueueView(name, section.queue or name, section.transport)
        for name, section in bus.config.consumers.items()
    ]
    by_transport: dict[str, list[QueueView]] = {}
    for view in views:
        by_transport.setdefault(view.transport, []).append(view)
    for name, queues in by_transport.items():
        try:
            await asyncio.wait_for(_inspect(bus.make_transport(name), queues), BROKER_TIMEOUT)
        except (TidingsError, OSError, TimeoutError) as exc:
            for view in queues:
                view.problem = str(exc) or type(exc).__name__
    return views


async def _inspect(transport: Transport, queues: list[QueueView]) -> None:
    await transport.connect()
    try:
        depth = getattr(transport, "queue_depth", None)  # optional: not every broker says
        try:
            dead = dead_letters(transport)
        except TidingsError:
            dead = None
        for view in queues:
            if depth is not None:
                view.depth = str(await depth(view.queue))
            if dead is not None:
                view.dead = await _count_dead(dead, view.queue)
    finally:
        await transport.close()


async def _count_dead(dead: Any, queue: str) -> str:
    try:
        count = await dead.count(queue, DEAD_COUNT_LIMIT)  # never hands a dead letter out
    except TidingsError:  # NotFound: the queue has no dead letters queue (yet)
        return "0"
    return f"{count}+" if count >= DEAD_COUNT_LIMIT else str(count)


@dataclass(slots=True)
class WireView:
    connector: str
    format: str
    routing_key: str = ""
    exchange: str = ""
    content_type: str = ""
    headers: str = ""
    body: str = ""
    properties: str = ""
    problem: str = ""
    extra: dict[str, str] = field(default_factory=dict)


def wire_forms(bus: Bus, event: Event) -> list[WireView]:
    """The event as each configured connector's format puts it on the wire."""
    views = []
    for name, config in bus.config.connectors.items():
        view = WireView(name, config.format)
        try:
            fmt = bus.make_format(config.format, config.format_options, f"[connectors.{name}]")
            message = fmt.encode(event)
        except (TidingsError, ValueError, TypeError) as exc:
            view.problem = f"{type(exc).__name__}: {exc}"
            views.append(view)
            continue
        view.routing_key = message.routing_key
        view.exchange = message.exchange or config.exchange
        view.content_type = message.content_type or ""
        view.headers = pretty(message.headers).decode()
        view.properties = pretty(message.properties).decode() if message.properties else ""
        view.body = body_text(message.body)
        views.append(view)
    return views


def body_text(body: bytes) -> str:
    """JSON pretty-printed, other text as it is, anything else as base64."""
    try:
        return pretty(loads(body)).decode()
    except (TidingsError, ValueError):
        pass
    try:
        return body.decode()
    except UnicodeDecodeError:
        return "base64: " + base64.b64encode(body).decode()
