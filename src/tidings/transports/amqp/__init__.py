"""Transport ``amqp``: RabbitMQ (AMQP 0-9-1), on aiormq.

The package's parts: :mod:`.transport` (connection, topology, publishing with confirms),
:mod:`.frames` (``basic.publish`` framed by hand), :mod:`.consume` (deliveries, settling,
reconnects), :mod:`.acks` (ack bookkeeping), :mod:`.doctor` (what ``tidings doctor``
checks). This module describes the plug-in and its options and imports none of them.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import Meta

from tidings.plugins import Plugin, Settings, Timeout

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"
#: RabbitMQ's default max_message_size (128 MiB); larger messages close the channel
DEFAULT_MAX_MESSAGE_BYTES = 128 * 1024 * 1024


class AmqpSettings(Settings):
    #: ``amqp[s]://user:password@host:port/vhost``
    url: str = DEFAULT_URL
    #: seconds within which a dead connection is noticed
    heartbeat: Timeout = 15.0
    #: seconds a batch waits for the broker's confirms before it is sent again
    confirm_timeout: Timeout = 30.0
    connect_timeout: Timeout = 10.0
    #: whole seconds of the retry queues (``<queue>.retry.<n>s``) consumers retry through
    retry_delays: Annotated[list[Annotated[int, Meta(ge=1)]], Meta(min_length=1)] = msgspec.field(
        default_factory=lambda: [1, 5, 25, 125, 625]
    )
    max_message_bytes: Annotated[int, Meta(gt=0)] = DEFAULT_MAX_MESSAGE_BYTES
    #: TLS (amqps://): the CA, a client certificate and key (EXTERNAL login without a password)
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    key_password: str | None = None
    #: RabbitMQ's management API, for ``tidings doctor`` (default ``http://<host>:15672``)
    management_url: str | None = None


PLUGIN = Plugin(
    "amqp",
    "tidings.transports.amqp.transport:AmqpTransport",
    AmqpSettings,
    "amqp",
    ("aiormq", "pamqp", "yarl", "httpx"),
)


def __getattr__(name: str) -> Any:
    if name in ("AmqpTransport", "properties", "wire_properties", "retry_queue"):
        from tidings.transports.amqp import transport

        return getattr(transport, name)
    raise AttributeError(name)
