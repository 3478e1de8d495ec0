"""The file transport: append every message to a file, as Bugzilla Push's File connector does.

Write-only. Each batch is appended in one write and fsynced before the messages
count as delivered. Two styles:

* ``jsonl`` (default) — one JSON object a line: routing key, message id, headers
  and the body (decoded when it is JSON, else base64 under ``body_base64``);
* ``bugzilla`` — the block Bugzilla's File connector writes: a ``[local time]``
  line, the pretty-printed JSON payload, a blank line
  (mozilla-bteam/bmo, extensions/Push/lib/Connector/File.pm, ``send``).
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import orjson

from tidings.errors import ConfigError, TransportError
from tidings.transport import DELIVERED, Delivery, QueueSpec, SendResult, Topology, WireMessage

STYLES = ("jsonl", "bugzilla")


class FileTransport:
    """Transport ``file``: options ``path`` (required), ``style`` ("jsonl" | "bugzilla"), ``fsync``."""

    kind = "file"
    acknowledged = True

    def __init__(self, path: str, style: str = "jsonl", fsync: bool = True) -> None:
        if style not in STYLES:
            raise ConfigError(f"file transport: style must be one of {', '.join(STYLES)}, not {style!r}")
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
        render = self._bugzilla_block if self.style == "bugzilla" else self._json_line
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
        try:
            record["body"] = orjson.loads(message.body)
        except orjson.JSONDecodeError:
            record["body_base64"] = base64.b64encode(message.body).decode()
        return orjson.dumps(record, default=str) + b"\n"

    @staticmethod
    def _bugzilla_block(message: WireMessage) -> bytes:
        try:
            payload = orjson.dumps(orjson.loads(message.body), option=orjson.OPT_INDENT_2)
        except orjson.JSONDecodeError:
            payload = message.body
        return f"[{time.asctime()}]\n".encode() + payload + b"\n\n"
