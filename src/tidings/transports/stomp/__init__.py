"""Transport ``stomp``: STOMP 1.2 on RabbitMQ's STOMP plugin, on stomp.py.

The package's parts: :mod:`.transport` (the connection, sending with receipts, declaring),
:mod:`.consume` (subscriptions, acks, retries and dead letters through RabbitMQ's queues),
:mod:`.frames` (messages as frame headers). This module describes the plug-in and its options
and imports none of the STOMP library.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal
from urllib.parse import unquote, urlsplit

import msgspec
from msgspec import Meta

from tidings.plugins import Plugin, Settings, Timeout
from tidings.redact import mask_url
from tidings.transports.amqp import DEFAULT_MAX_MESSAGE_BYTES

DEFAULT_URL = "stomp://guest:guest@127.0.0.1:61613/"


@dataclass(frozen=True, slots=True)
class Address:
    """``stomp[+ssl]://user:password@host:port/vhost``."""

    host: str
    port: int
    username: str | None
    password: str | None
    vhost: str
    tls: bool

    @classmethod
    def parse(cls, url: str) -> Address:
        credentials = url.partition("://")[2].rpartition("@")[0]
        # urlsplit would end the host at either, and then ask for a port
        if ("#" in credentials or "?" in credentials) and "/" not in credentials:
            raise ValueError(
                f"url {mask_url(url)!r}: a '#' or '?' in the user or password must be written %23 or %3F"
            )
        parts = urlsplit(url)
        if parts.scheme not in ("stomp", "stomp+ssl") or not parts.hostname:
            raise ValueError(f"url must be stomp://user:password@host:port/vhost, not {mask_url(url)!r}")
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f"url {mask_url(url)!r} needs a port from 1 to 65535") from None
        if port == 0:
            raise ValueError(f"url {mask_url(url)!r} needs a port from 1 to 65535")
        if parts.query or parts.fragment:
            raise ValueError(
                f"url {mask_url(url)!r} takes no ?options or #fragment: set them as the transport's options"
            )
        port = port or (61614 if parts.scheme == "stomp+ssl" else 61613)
        path = parts.path[1:] if parts.path.startswith("/") else parts.path
        return cls(
            parts.hostname,
            port,
            unquote(parts.username) if parts.username else None,
            unquote(parts.password) if parts.password else None,
            unquote(path) or "/",
            parts.scheme == "stomp+ssl",
        )

    def amqp_url(self) -> str:
        """The same broker's AMQP 0-9-1 listener (RabbitMQ), for declaring queues."""
        from urllib.parse import quote

        auth = ""
        if self.username is not None:
            auth = quote(self.username, safe="") + (
                f":{quote(self.password, safe='')}" if self.password else ""
            )
            auth += "@"
        scheme = "amqps" if self.tls else "amqp"
        port = 5671 if self.tls else 5672
        host = f"[{self.host}]" if ":" in self.host else self.host  # an IPv6 address
        return f"{scheme}://{auth}{host}:{port}/{quote(self.vhost, safe='')}"


class StompSettings(Settings):
    #: ``stomp://user:password@host:port/vhost`` (``stomp+ssl://`` for TLS)
    url: str = DEFAULT_URL
    #: where sends go: ``exchange`` (``/exchange/<exchange>/<routing key>``, RabbitMQ's topic
    #: exchanges) or ``topic`` (``/topic/<routing key>``, as ActiveMQ-style brokers name topics)
    destination: Literal["exchange", "topic"] = "exchange"
    #: seconds between heart-beats both ways; a silent connection is dropped after 1.5 of them
    heartbeat: Timeout = 10.0
    #: seconds a batch waits for its receipts before it is sent again
    receipt_timeout: Timeout = 30.0
    connect_timeout: Timeout = 10.0
    #: whole seconds of the retry queues (``<queue>.retry.<n>s``): the same as the AMQP transport's
    retry_delays: Annotated[list[Annotated[int, Meta(ge=1)]], Meta(min_length=1)] = msgspec.field(
        default_factory=lambda: [1, 5, 25, 125, 625]
    )
    #: declare exchanges and queues over AMQP 0-9-1 (the same broker's; False: they must exist)
    declare: bool = True
    #: where to declare them (default: the STOMP URL's host and user on RabbitMQ's AMQP port)
    amqp_url: str | None = None
    #: a body over this is a dead letter at once (RabbitMQ's max_message_size: over it, the broker
    #: answers an ERROR without a receipt and closes the connection, and the batch never goes)
    max_message_bytes: Annotated[int, Meta(gt=0)] = DEFAULT_MAX_MESSAGE_BYTES
    #: TLS (stomp+ssl://): the CA, a client certificate and key
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    def __post_init__(self) -> None:
        Address.parse(self.url)  # a ValueError names what is wrong
        if self.amqp_url is not None:
            try:
                parts = urlsplit(self.amqp_url)
                parts.port  # noqa: B018 (raises on a port that is no number or out of range)
            except ValueError:
                raise ValueError("amqp_url is not a URL") from None
            if parts.scheme not in ("amqp", "amqps") or not parts.hostname:
                raise ValueError("amqp_url must look like amqp://user:password@host:5672/vhost")


PLUGIN = Plugin(
    "stomp",
    "tidings.transports.stomp.transport:StompTransport",
    StompSettings,
    "stomp",
    ("stomp", "aiormq", "pamqp", "yarl", "httpx"),
)


def __getattr__(name: str) -> Any:
    if name == "StompTransport":
        from tidings.transports.stomp.transport import StompTransport

        return StompTransport
    raise AttributeError(name)
