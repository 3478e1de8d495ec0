"""Events for the web tests: made with known times, fields and visibility; and a dead letter."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from tidings.archive import Archived, SearchFields
from tidings.bus import Bus
from tidings.event import Event
from tidings.outbox import Settlement

#: a topic and a body no page may run as markup
HOSTILE_TOPIC = 'x.<script>alert("topic")</script>."><img/src=x/onerror=alert(2)>'
HOSTILE_BODY = {"text": '<script>alert("body")</script>"><img src=x onerror=alert(3)>'}


def event(
    topic: str = "org.fedoraproject.prod.bodhi.update.comment",
    body: dict[str, Any] | None = None,
    *,
    at: float | None = None,
    private: bool = False,
    users: tuple[str, ...] = (),
    packages: tuple[str, ...] = (),
    source: str = "test",
) -> Archived:
    moment = datetime.fromtimestamp(at if at is not None else time.time(), UTC)
    made = Event.create(
        topic,
        body if body is not None else {"n": 1},
        source=source,
        time=moment,
        visibility="private" if private else "public",
    )
    return Archived(0, made, SearchFields(users=users, packages=packages))


def dead_letter(
    bus: Bus, connector: str = "local", topic: str = "demo.dead.letter", *, private: bool = False
) -> int:
    """Publish an event and record it as the connector's dead letter, as the dispatcher would."""
    published = bus.publish(topic, {"why": "refused"}, visibility="private" if private else "public")
    seq = bus.outbox.last_seq()
    bus.outbox.ensure_connector(connector)
    bus.outbox.settle(
        connector,
        [Settlement(seq, "dead", attempts=10, reason=f"refused {published.id}")],
        new_cursor=seq,
        from_backlog=False,
    )
    return seq
