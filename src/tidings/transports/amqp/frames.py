"""Fast framing of ``basic.publish``: the bytes of method, content-header and body frames.

Publishing with confirms is CPU-bound in the client: pamqp builds every frame
from generic objects, field by field, and that is most of the time a dispatcher
spends per message. A message the dispatcher sends always has the same few
properties, so they are packed here directly. The output is byte for byte what
pamqp produces for the same frames (the tests compare both); values of a type
this module does not pack itself are handed to pamqp's own encoder.

Handing the frames over needs aiormq's channel state (its lock, delivery tag counter,
confirmation futures and write queue), which is not public API. It is worth it: framing and
one write per batch is what lets a dispatcher confirm tens of thousands of messages a second
instead of a few thousand (docs/benchmarks.md). The risk is bounded three ways: pyproject.toml
pins aiormq to the major version this was written against, ``can_publish_fast`` falls back to
aiormq's own ``basic_publish`` when any piece is missing, and a test fails if the installed
aiormq would take the slow path.

Frame layout (AMQP 0-9-1, section 4.2.3): type octet, channel short, payload
size long, payload, frame-end octet 0xCE. Basic.Publish is class 60, method 40.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Any

import aiormq
from aiormq.abc import ChannelFrame, ConfirmationFrameType
from pamqp import encode as pamqp_encode

_FRAME_HEADER = struct.Struct(">BHI")
_FRAME_END = b"\xce"
_METHOD, _CONTENT_HEADER, _BODY = 1, 2, 3
_PUBLISH = struct.Struct(">HHH").pack(60, 40, 0)  # class, method, reserved ticket
_HEADER_START = struct.Struct(">HHQH")  # class, weight, body size, property flags
_LONG = struct.Struct(">I")
_TIMESTAMP = struct.Struct(">Q")

#: Basic properties in wire order with their flag bit (the properties a WireMessage can carry)
_SHORT_STRINGS_BEFORE_HEADERS = (("content_type", 15), ("content_encoding", 14))
_OCTETS = (("delivery_mode", 12), ("priority", 11))
_SHORT_STRINGS_MIDDLE = (("correlation_id", 10), ("reply_to", 9), ("expiration", 8), ("message_id", 7))
_SHORT_STRINGS_AFTER_TIMESTAMP = (("type", 5), ("user_id", 4), ("app_id", 3))


def short_string(value: str) -> bytes:
    data = value.encode()
    if len(data) > 255:
        raise ValueError(f"AMQP short string over 255 bytes: {value[:40]!r}...")
    return bytes((len(data),)) + data


def field_table(table: Mapping[str, Any]) -> bytes:
    """A header table, encoded as pamqp does (keys sorted, ints in their smallest type)."""
    parts = []
    for key, value in sorted(table.items()):
        if len(key.encode()) > 128:
            return pamqp_encode.field_table(dict(table))  # pamqp truncates such keys; keep its rule
        parts.append(short_string(key))
        if type(value) is str:
            data = value.encode()
            parts.append(b"S" + _LONG.pack(len(data)) + data)
        else:
            parts.append(pamqp_encode.encode_table_value(value))
    payload = b"".join(parts)
    return _LONG.pack(len(payload)) + payload


def _frame(kind: int, channel: int, payload: bytes) -> bytes:
    return _FRAME_HEADER.pack(kind, channel, len(payload)) + payload + _FRAME_END


def _properties(props: Mapping[str, Any]) -> tuple[int, bytes]:
    flags, parts = 0, []

    def add_strings(names: tuple[tuple[str, int], ...]) -> None:
        nonlocal flags
        for name, bit in names:
            value = props.get(name)
            if value is not None and value != "":  # pamqp leaves empty strings out too
                flags |= 1 << bit
                parts.append(short_string(value))

    add_strings(_SHORT_STRINGS_BEFORE_HEADERS)
    headers = props.get("headers")
    if headers:
        flags |= 1 << 13
        parts.append(field_table(headers))
    for name, bit in _OCTETS:
        value = props.get(name)
        if value is not None:
            flags |= 1 << bit
            parts.append(bytes((value,)))
    add_strings(_SHORT_STRINGS_MIDDLE)
    stamp = props.get("timestamp")
    if stamp is not None:
        flags |= 1 << 6
        parts.append(_TIMESTAMP.pack(_seconds(stamp)))
    add_strings(_SHORT_STRINGS_AFTER_TIMESTAMP)
    return flags, b"".join(parts)


def _seconds(stamp: datetime) -> int:
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)  # a naive time is UTC, as pamqp assumes
    return int(stamp.timestamp())


#: what framing raises for a value AMQP cannot carry (a string over 255 bytes, a time before
#: 1970, an int over 64 bits ...): such a message can never be sent
FRAMING_ERRORS = (ValueError, TypeError, OverflowError, struct.error)


def publish_frames(
    channel: int,
    exchange: str,
    routing_key: str,
    props: Mapping[str, Any],
    body: bytes,
    *,
    mandatory: bool,
    max_body_frame: int,
) -> bytes:
    """All frames of one ``basic.publish`` with its content, ready for the socket."""
    flag = b"\x01" if mandatory else b"\x00"  # the immediate bit is never set
    method = _PUBLISH + short_string(exchange) + short_string(routing_key) + flag
    flags, encoded = _properties(props)
    frames = [
        _frame(_METHOD, channel, method),
        _frame(_CONTENT_HEADER, channel, _HEADER_START.pack(60, 0, len(body), flags) + encoded),
    ]
    for start in range(0, len(body), max_body_frame):
        frames.append(_frame(_BODY, channel, body[start : start + max_body_frame]))
    return b"".join(frames)


# -- handing the frames to aiormq ------------------------------------------------------------

#: what the fast path needs of an aiormq channel; without any of it, publishing goes through
#: aiormq's own basic_publish (slower, same result)
_CHANNEL_NEEDS = ("lock", "delivery_tag", "confirmations", "message_id_delivery_tag", "write_queue")


def can_publish_fast(channel: aiormq.abc.AbstractChannel) -> bool:
    return bool(getattr(channel, "publisher_confirms", False)) and all(
        hasattr(channel, name) for name in _CHANNEL_NEEDS
    )


async def publish_batch(
    channel: Any, frames: Sequence[tuple[str, bytes]]
) -> list[asyncio.Future[ConfirmationFrameType]]:
    """Send already-framed publishes (``(message_id, frames)``) in one write; their confirmations.

    Delivery tags are taken under the channel's lock exactly as aiormq's basic_publish
    takes them, so confirms, nacks and returns (looked up by message id) reach these
    futures, and a channel closing fails them.
    """
    async with channel.lock:
        first_tag = channel.delivery_tag + 1
        futures: list[asyncio.Future[ConfirmationFrameType]] = []
        try:
            for offset, (message_id, _) in enumerate(frames):
                tag = first_tag + offset
                confirmation = channel.create_future()
                channel.confirmations[tag] = confirmation
                channel.message_id_delivery_tag[message_id] = tag
                confirmation.add_done_callback(partial(_forget_message_id, channel, message_id, tag))
                futures.append(confirmation)
            channel.delivery_tag = first_tag + len(frames) - 1
            payload = b"".join(data for _, data in frames)
            await channel.write_queue.put(
                ChannelFrame(payload=payload, should_close=False, drain_future=None)
            )
        except BaseException:
            # nothing reached the broker: give the tags back, as aiormq does, so later ones line up
            channel.delivery_tag = first_tag - 1
            for offset, future in enumerate(futures):
                channel.confirmations.pop(first_tag + offset, None)
                future.cancel()
            raise
    return futures


def _forget_message_id(channel: Any, message_id: str, tag: int, _: asyncio.Future[Any]) -> None:
    if channel.message_id_delivery_tag.get(message_id) == tag:
        del channel.message_id_delivery_tag[message_id]
