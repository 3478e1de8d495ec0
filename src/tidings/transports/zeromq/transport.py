"""The ZeroMQ transport: PUB/SUB multipart frames, as fedmsg and LAVA publish.

Best effort, and honest about it: a PUB socket has no acknowledgement, so
``send`` reports a message DELIVERED once it is handed to the socket; ZeroMQ
drops it if no subscriber is connected or a subscriber's queue is at the
high-water mark. Settling a delivery does nothing (there is no broker to tell),
``retry`` and ``reject`` only log. Use it to feed systems that speak ZeroMQ; use
an acknowledged transport for anything that must not be lost. ZeroMQ reconnects
dropped TCP peers by itself.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime

import zmq
import zmq.asyncio

from tidings.errors import ConfigError, InvalidEvent, TransportError
from tidings.event import dumps, loads
from tidings.topics import topic_matches
from tidings.transport import DELIVERED, QueueSpec, SendResult, Topology, WireMessage

log = logging.getLogger(__name__)


@dataclass
class ZeroMQDelivery:
    message: WireMessage
    attempt: int = 1
    redelivered: bool = False  # nothing is ever handed out twice

    async def ack(self) -> None:
        """Nothing to acknowledge: ZeroMQ PUB/SUB has no acknowledgement."""

    async def release(self) -> None:
        """Nothing to release: the publisher has already forgotten the message."""

    async def retry(self, delay: float, reason: str = "", *, attempts: int | None = None) -> None:
        log.warning(
            "zeromq: cannot deliver %s again (no broker keeps it); dropped: %s",
            self.message.routing_key,
            reason,
        )

    async def reject(self, reason: str, *, attempts: int | None = None) -> None:
        log.warning("zeromq: no dead letters on PUB/SUB; dropped %s: %s", self.message.routing_key, reason)


def prefix_of(pattern: str) -> str:
    """The literal words before the first wildcard: what a SUB socket can filter on."""
    words = []
    for word in pattern.split("."):
        if word in ("*", "#"):
            break
        words.append(word)
    return ".".join(words)


class ZeroMQTransport:
    """Transport ``zeromq``: options ``endpoint`` (e.g. ``tcp://127.0.0.1:5556``, or a list of them), ``mode``
    (``bind`` or ``connect`` for the publisher; subscribers do the opposite), ``hwm``, and
    ``settle`` (seconds the publisher waits after opening its socket before the first send,
    so that subscribers can connect and subscribe: a PUB socket drops what nobody subscribed to)."""

    kind = "zeromq"
    acknowledged = False

    def __init__(
        self, endpoint: str | list[str], mode: str = "bind", hwm: int = 10_000, settle: float = 0.5
    ) -> None:
        if mode not in ("bind", "connect"):
            raise ConfigError(f"zeromq transport: mode must be 'bind' or 'connect', not {mode!r}")
        #: a socket binds or connects every one of these (a SUB hears several publishers at once)
        self.endpoints = [endpoint] if isinstance(endpoint, str) else list(endpoint)
        if not self.endpoints:
            raise ConfigError("zeromq transport: endpoint names no address")
        for address in self.endpoints:
            if "://" not in address:
                raise ConfigError(
                    f"zeromq transport: endpoint must look like tcp://host:port, not {address!r}"
                )
            port = address.rpartition(":")[2]
            valid_port = port == "*" or (port.isdigit() and int(port) < 65536)  # 0, as *: any free port
            if address.startswith("tcp://") and not valid_port:
                # libzmq takes tcp://*:99999 without a word, and listens somewhere else
                raise ConfigError(f"zeromq transport: endpoint {address!r} needs a port from 0 to 65535")
        self.endpoint, self.mode, self.hwm = ", ".join(self.endpoints), mode, int(hwm)
        self.settle = float(settle)
        self._context: zmq.asyncio.Context | None = None
        self._pub: zmq.asyncio.Socket | None = None

    async def connect(self) -> None:
        if self._context is None:
            self._context = zmq.asyncio.Context()

    async def close(self) -> None:
        if self._pub is not None:
            self._pub.close(linger=1000)  # a second to flush what is queued
            self._pub = None
        if self._context is not None:
            # term() would wait for every socket: a consumer's, closed with its stream, may still
            # be open when the consumer was cancelled (destroy closes it, at once)
            self._context.destroy(linger=0)
            self._context = None

    async def declare(self, topology: Topology) -> None:
        """Nothing to declare: topics are only prefixes on the wire."""

    def _socket(self, kind: int, *, publisher: bool) -> zmq.asyncio.Socket:
        if self._context is None:
            raise TransportError("zeromq transport is not connected")
        sock = self._context.socket(kind)
        sock.setsockopt(zmq.SNDHWM if publisher else zmq.RCVHWM, self.hwm)
        binds = (self.mode == "bind") == publisher
        for address in self.endpoints:
            try:
                # a bind address ("tcp://*:9941") is reached on this machine when connecting
                sock.bind(address) if binds else sock.connect(address.replace("://*:", "://127.0.0.1:"))
            except zmq.ZMQError as exc:
                sock.close(linger=0)
                raise TransportError(
                    f"zeromq cannot {'bind' if binds else 'connect'} {address}: {exc}"
                ) from None
        return sock

    async def open_sender(self) -> None:
        """Open the PUB socket now and give subscribers ``settle`` seconds to join.

        The dispatcher calls this when it starts the connector, before any event is due, as
        a LAVA server binds its publisher at start: a subscriber that connected first (or
        reconnects within ZeroMQ's 100 ms retry) receives the very first event.
        """
        if self._pub is not None:
            return
        self._pub = self._socket(zmq.PUB, publisher=True)
        if self.settle > 0:
            await asyncio.sleep(self.settle)

    async def send(self, exchange: str, messages: Sequence[WireMessage]) -> list[SendResult]:
        await self.open_sender()
        assert self._pub is not None
        for message in messages:
            await self._pub.send_multipart(message.frames or to_frames(message))
        return [DELIVERED] * len(messages)

    async def consume(self, queue: QueueSpec, *, prefetch: int) -> AsyncIterator[ZeroMQDelivery]:
        patterns = [b.pattern for b in queue.bindings] or ["#"]
        sub = self._socket(zmq.SUB, publisher=False)
        for prefix in {prefix_of(p) for p in patterns}:
            sub.setsockopt(zmq.SUBSCRIBE, prefix.encode())
        try:
            while True:
                frames = await sub.recv_multipart()
                message = to_wire(frames)
                if message is not None and any(topic_matches(p, message.routing_key) for p in patterns):
                    yield ZeroMQDelivery(message)
        finally:
            sub.close(linger=0)


#: the middle frame of tidings' own three-frame layout starts with this
_META_MARK = b'{"tidings_zmq":1'


def to_frames(message: WireMessage) -> list[bytes]:
    """Messages whose format sets no frames go as ``[topic, properties JSON, body]``."""
    meta = {
        "tidings_zmq": 1,
        "headers": message.headers,
        "message_id": message.message_id,
        "content_type": message.content_type,
        "content_encoding": message.content_encoding,
        "timestamp": message.timestamp.isoformat() if message.timestamp else None,
        "priority": message.priority,
    }
    return [message.routing_key.encode(), dumps(meta, default=str), message.body]


def to_wire(frames: list[bytes]) -> WireMessage | None:
    """Frames as a WireMessage: the first frame is the topic, the last the body."""
    try:
        topic = frames[0].decode()
    except (IndexError, UnicodeDecodeError):
        log.warning("zeromq: dropped a message whose topic frame is missing or not UTF-8")
        return None
    if len(frames) == 3 and frames[1].startswith(_META_MARK):
        try:
            meta = loads(frames[1])
            stamp = meta.get("timestamp")
            return WireMessage(
                routing_key=topic,
                body=frames[2],
                headers=meta.get("headers") or {},
                message_id=meta.get("message_id"),
                content_type=meta.get("content_type"),
                content_encoding=meta.get("content_encoding"),
                priority=meta.get("priority"),
                timestamp=datetime.fromisoformat(stamp) if stamp else None,
            )
        except (InvalidEvent, ValueError, TypeError, AttributeError):
            log.warning("zeromq: dropped a message with a malformed properties frame on %s", topic)
            return None
    return WireMessage(routing_key=topic, body=frames[-1] if len(frames) > 1 else b"", frames=list(frames))
