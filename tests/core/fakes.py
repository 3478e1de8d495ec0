"""A scripted transport for unit tests of the dispatcher's own logic (not a broker stand-in)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence

from tidings.errors import TransportError
from tidings.transport import DELIVERED, Delivery, Outcome, QueueSpec, SendResult, Topology, WireMessage


class ScriptedTransport:
    """Records what it is sent; ``decide`` picks each message's outcome; ``down`` raises."""

    kind = "scripted"
    acknowledged = True

    def __init__(self, decide: Callable[[WireMessage], SendResult] | None = None) -> None:
        self.decide = decide or (lambda message: DELIVERED)
        self.sent: list[WireMessage] = []
        self.down = False
        self.connects = 0

    async def connect(self) -> None:
        if self.down:
            raise TransportError("scripted broker is down")
        self.connects += 1

    async def close(self) -> None:
        pass

    async def declare(self, topology: Topology) -> None:
        if self.down:
            raise TransportError("scripted broker is down")

    async def send(self, exchange: str, messages: Sequence[WireMessage]) -> list[SendResult]:
        if self.down:
            raise TransportError("scripted broker is down")
        results = [self.decide(m) for m in messages]
        self.sent.extend(m for m, r in zip(messages, results, strict=True) if r.outcome is Outcome.DELIVERED)
        return results

    def consume(self, queue: QueueSpec, *, prefetch: int) -> AsyncIterator[Delivery]:
        raise NotImplementedError("the scripted transport only sends")

    def delivered_topics(self) -> list[str]:
        return [m.routing_key for m in self.sent]
