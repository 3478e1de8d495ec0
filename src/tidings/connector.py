"""A connector: one destination of the dispatcher — a transport, an exchange, a format, a policy.

The dispatcher (:mod:`tidings.dispatcher`) keeps a cursor, a backlog and dead letters per
connector; what a connector carries and how long it waits between tries is decided here.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from tidings.config import ConnectorConfig
from tidings.event import Event
from tidings.format import Format
from tidings.retry import scheduled
from tidings.topics import TopicMatcher
from tidings.transport import Transport


@dataclass(slots=True)
class ConnectorStats:
    delivered: int = 0
    retried: int = 0
    dead: int = 0
    down_since: float | None = None
    last_error: str = ""


@dataclass
class Connector:
    """A dispatcher destination: where (transport, exchange), how (format), and its policy."""

    name: str
    transport: Transport
    format: Format
    config: ConnectorConfig
    stats: ConnectorStats = field(default_factory=ConnectorStats)
    #: what an event must pass besides the topics (the connector's filter, the relays that send
    #: elsewhere: see Bus.connectors); None: the topics decide alone
    accepts: Callable[[Event], bool] | None = None

    def __post_init__(self) -> None:
        self._topics: TopicMatcher[bool] = TopicMatcher()
        for pattern in self.config.topics:
            self._topics.add(pattern, True)

    def wants(self, topic: str) -> bool:
        return bool(self._topics.match(topic))

    def takes_event(self, event: Event) -> bool:
        """Whether an event is this connector's to carry."""
        return self.wants(event.topic) and (self.accepts is None or self.accepts(event))

    def retry_delay(self, attempts: int, rng: Callable[[], float] = random.random) -> float:
        """Delay before retry number ``attempts``: the schedule's entry with ±20 % jitter."""
        return scheduled(self.config.retry_schedule, attempts, rng)
