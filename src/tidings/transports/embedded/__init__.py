"""Transport ``embedded``: durable queues in one SQLite file that processes share (no server).

The package's parts: :mod:`.transport` (the broker: topology, sends, leases, settles),
:mod:`.store` (its tables and SQL). This module describes the plug-in and imports nothing
heavy; ``EmbeddedTransport`` is loaded when first asked for.
"""

from __future__ import annotations

from typing import Annotated, Any

from msgspec import Meta

from tidings.plugins import Plugin, Settings


class EmbeddedSettings(Settings):
    #: the broker file; a bare name lives under ``[bus] home``
    path: Annotated[str, Meta(min_length=1)] = ".tidings/broker.db"
    #: seconds a consumer holds a message before it comes back (renewed while its handler runs)
    lease: Annotated[float, Meta(gt=0)] = 30.0
    #: seconds between looks for messages sent by other processes
    poll: Annotated[float, Meta(gt=0)] = 0.01


PLUGIN = Plugin("embedded", "tidings.transports.embedded.transport:EmbeddedTransport", EmbeddedSettings)


def __getattr__(name: str) -> Any:
    if name in ("EmbeddedTransport", "EmbeddedDelivery"):
        from tidings.transports.embedded import transport

        return getattr(transport, name)
    raise AttributeError(name)
