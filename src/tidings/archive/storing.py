"""What the archive's two ways in share — the dispatcher's connector (``sink``) and the broker
sources (``ingest``): reading a message, and storing a batch so that one event the store can
never hold becomes a dead letter instead of holding up every event after it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from tidings.archive import Archive, Archived, Query
from tidings.archive.fields import FieldsFinder
from tidings.errors import DecodeError, StorageError, TidingsError, TransportError
from tidings.event import DEEPEST, json_depth
from tidings.format import Format
from tidings.transport import WireMessage

log = logging.getLogger(__name__)
T = TypeVar("T")


def read_message(fmt: Format, finder: FieldsFinder, message: WireMessage) -> Archived:
    """The message as the archive keeps it, or a TidingsError saying why it cannot be read.

    A format's decode raises DecodeError, but a plug-in's bug raises anything (an OverflowError):
    it would fail the same way on every delivery, so it is a DecodeError too, with its reason,
    rather than an error that stops the archive."""
    event = _as_decode_error(fmt, message, fmt.decode, message)
    # a publisher elsewhere may nest deeper than the archive's API could write back out
    depth = json_depth(event.body)
    if depth > DEEPEST:
        raise DecodeError(f"its body nests {depth} levels deep; the archive keeps at most {DEEPEST}")
    return _as_decode_error(fmt, message, finder, event)


def _as_decode_error(fmt: Format, message: WireMessage, step: Callable[[Any], T], value: Any) -> T:
    try:
        return step(value)
    except TidingsError:
        raise
    except Exception as exc:
        reason = f"the {fmt.name} format failed on it: {type(exc).__name__}: {exc}"
        log.error("archive: message %s: %s", message.message_id, reason)
        raise DecodeError(reason) from None


@dataclass(slots=True)
class Stored:
    """A batch in the archive: how many of its events were new (the rest it had already), and
    the events it refused, by their place in the batch, with the reason."""

    new: int = 0
    refused: dict[int, str] = field(default_factory=dict)


async def store_batch(archive: Archive, items: Sequence[Archived]) -> Stored:
    """Store ``items`` in one transaction or, if the store refuses that, each alone.

    Raises TransportError when the store refused events and answers nothing (it is away): the
    caller keeps the whole batch and sends it again later (what was stored meanwhile is stored
    once: ingest is idempotent on event ids)."""
    try:
        return Stored(await asyncio.to_thread(archive.ingest, list(items)))
    except StorageError as exc:
        return await _one_by_one(archive, items, exc)


async def _one_by_one(archive: Archive, items: Sequence[Archived], failed: StorageError) -> Stored:
    """A batch the store refused: each event alone. One the store refuses while it answers a
    search can never be stored (PostgreSQL holds no NUL character in text): refused with the
    reason, instead of holding the archive's cursor, or a source queue, for ever."""
    stored = Stored()
    for place, item in enumerate(items):
        try:
            stored.new += await asyncio.to_thread(archive.ingest, [item])
        except StorageError as exc:
            stored.refused[place] = f"the archive cannot store it: {exc}"
    if stored.refused and not await _answers(archive):
        raise TransportError(str(failed)) from None
    return stored


async def _answers(archive: Archive) -> bool:
    try:
        await asyncio.to_thread(archive.search, Query(), limit=1)
    except StorageError:
        return False
    return True
