"""The file transport: append every message to a file, as Bugzilla Push's File connector does.

Write-only. Each batch is appended in one write and fsynced before the messages
count as delivered. Two styles:

* ``jsonl`` (default) — one JSON object a line: routing key, message id, headers,
  content type, timestamp and the body (decoded when it is JSON, else base64 under
  ``body_base64``);
* ``raw`` — the bytes the format prepared, as they are: the message's frames
  joined, or its body. Bugzilla's File connector block is the ``bugzilla`` format's
  (``format_options = {file_block = true}``).
"""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from tidings.errors import ConfigError, InvalidEvent, TransportError
from tidings.event import dumps, format_time, loads
from tidings.transport import DELIVERED, Delivery, QueueSpec, SendResult, Topology, WireMessage
from tidings.transports.file import style_problem


class FileTransport:
    """Transport ``file``: options ``path`` (required), ``style`` ("jsonl" | "raw"), ``fsync``."""

    kind = "file"
    acknowledged = True

    def __init__(self, path: str, style: str = "jsonl", fsync: bool = True) -> None:
        if style_problem(style):
            raise ConfigError(f"file transport: {style_problem(style)}")
        self.path = Path(path)
        self.style = style
        self.fsync = fsync
        self._fd: int | None = None

    async def connect(self) -> None:
        if self._fd is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            except OSError as exc:
                raise TransportError(
                    f"file transport cannot open {str(self.path)!r}: {exc.strerror}"
                ) from None

    async def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    async def declare(self, topology: Topology) -> None:
        """Nothing to declare: a file has no exchanges or queues."""

    async def send(self, exchange: str, messages: Sequence[WireMessage]) -> list[SendResult]:
        if self._fd is None:
            raise TransportError(f"file transport {self.path.name} is not connected")
        render = self._raw if self.style == "raw" else self._json_line
        data = b"".join(render(m) for m in messages)
        try:
            os.write(self._fd, data)
            if self.fsync:
                os.fsync(self._fd)
        except OSError as exc:
            raise TransportError(f"file transport cannot write {str(self.path)!r}: {exc.strerror}") from None
        return [DELIVERED] * len(messages)

    def consume(self, queue: QueueSpec, *, prefetch: int) -> AsyncIterator[Delivery]:
        raise TransportError("the file transport only writes; consume from a broker transport")

    @staticmethod
    def _json_line(message: WireMessage) -> bytes:
        record: dict[str, Any] = {
            "routing_key": message.routing_key,
            "message_id": message.message_id,
            "headers": message.headers,
        }
        if message.content_type is not None:
            record["content_type"] = message.content_type
        if message.timestamp is not None:
            record["timestamp"] = format_time(message.timestamp)
        try:
            record["body"] = loads(message.body)
        except InvalidEvent:
            record["body_base64"] = base64.b64encode(message.body).decode()
        return dumps(record, default=str) + b"\n"

    @staticmethod
    def _raw(message: WireMessage) -> bytes:
        return b"".join(message.frames) if message.frames is not None else message.body
