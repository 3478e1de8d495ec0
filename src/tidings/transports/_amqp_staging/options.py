"""The options of the ``amqp`` transport, checked once, and how broker errors read.

Every message built here shows the broker URL through :func:`mask`: a password
never reaches a log line or an exception.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiormq
from yarl import URL

from tidings.errors import ConfigError, ConnectionLost, TransportError

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"
DEFAULT_RETRY_DELAYS = (1, 5, 25, 125, 625)
#: RabbitMQ 3.8-3.13's max_message_size (4.x lowers it to 16 MiB; a refusal teaches us the real one)
DEFAULT_MAX_MESSAGE_BYTES = 128 * 1024 * 1024
QUEUE_TYPES = ("classic", "quorum")


class InvalidUrl(ConfigError, TransportError):
    """The broker URL cannot be used: a configuration error that is also a transport error."""


@dataclass(slots=True, frozen=True)
class Tls:
    """Client side of ``amqps://``. Verification cannot be switched off: it fails closed."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    key_password: str | None = None
    #: the name the server certificate must carry, when it differs from the URL's host
    server_hostname: str | None = None
    #: False skips only the host name check; the chain is always verified against ``ca_file``
    verify: bool = True

    def context(self, where: str) -> ssl.SSLContext:
        try:
            context = ssl.create_default_context(cafile=self.ca_file)
            if self.cert_file:
                context.load_cert_chain(self.cert_file, self.key_file, password=self.key_password)
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise ConfigError(f"TLS files for {where} cannot be used: {reason(exc)}") from None
        context.check_hostname = self.verify
        context.verify_mode = ssl.CERT_REQUIRED
        return context


@dataclass(slots=True, frozen=True)
class Options:
    url: URL
    heartbeat: int
    connect_timeout: float
    confirm_timeout: float
    confirm_window: int
    prefetch: int
    queue_type: str
    retry_delays: tuple[float, ...]
    max_message_bytes: int
    tls: Tls
    name: str

    @property
    def where(self) -> str:
        return mask(self.url)

    @property
    def external_auth(self) -> bool:
        # Fedora's broker: the client certificate is the login, the URL carries no password
        return bool(self.tls.cert_file) and not self.url.password

    def connection_url(self, role: str) -> URL:
        query = {**self.url.query, "heartbeat": str(self.heartbeat), "name": f"{self.name} ({role})"}
        if self.external_auth:
            query["auth"] = "external"
        return self.url.with_query(query)

    def connection_kwargs(self) -> dict[str, Any]:
        if self.url.scheme != "amqps":
            return {}
        kwargs: dict[str, Any] = {"context": self.tls.context(self.where)}
        if self.tls.server_hostname:
            kwargs["server_hostname"] = self.tls.server_hostname
        return kwargs


def build_options(
    url: str,
    *,
    heartbeat: float,
    connect_timeout: float,
    confirm_timeout: float,
    confirm_window: int,
    prefetch: int,
    queue_type: str,
    retry_delays: Sequence[float],
    max_message_bytes: int,
    tls: Tls,
    name: str,
) -> Options:
    parsed = parse_url(url)
    if parsed.scheme == "amqp" and (tls.ca_file or tls.cert_file or tls.key_file or tls.server_hostname):
        raise ConfigError("amqp transport: TLS options need an amqps:// url (no plaintext fallback)")
    if tls.key_file and not tls.cert_file:
        raise ConfigError("amqp transport: key_file needs cert_file")
    if queue_type not in QUEUE_TYPES:
        raise ConfigError(f"amqp transport: queue_type must be one of {', '.join(QUEUE_TYPES)}, not {queue_type!r}")
    return Options(
        url=parsed,
        heartbeat=int(_at_least("heartbeat", heartbeat, 0)),
        connect_timeout=_at_least("connect_timeout", connect_timeout, 0.1),
        confirm_timeout=_at_least("confirm_timeout", confirm_timeout, 0.1),
        confirm_window=int(_at_least("confirm_window", confirm_window, 1)),
        prefetch=int(_at_least("prefetch", prefetch, 1)),
        queue_type=queue_type,
        retry_delays=_delays(retry_delays),
        max_message_bytes=int(_at_least("max_message_bytes", max_message_bytes, 1)),
        tls=tls,
        name=name,
    )


def parse_url(url: str) -> URL:
    try:
        parsed = URL(url)
    except (TypeError, ValueError):
        # the text may hold a password: never echo it
        raise InvalidUrl("amqp transport: the url is not a valid URL") from None
    if parsed.scheme not in ("amqp", "amqps") or not parsed.host:
        shown = mask(parsed) if parsed.host else "a URL without a host"
        raise InvalidUrl(f"amqp transport: url must look like amqp[s]://user:password@host:5672/vhost, not {shown}")
    if parsed.raw_path.count("/") > 1:
        raise InvalidUrl(f"amqp transport: {mask(parsed)}: a vhost with '/' in its name must be written %2F")
    if parsed.explicit_port is None:
        parsed = parsed.with_port(5671 if parsed.scheme == "amqps" else 5672)
    return parsed


def mask(url: URL) -> str:
    """The URL as it may appear in logs and errors: never with its password."""
    return str(url.with_password("***") if url.password else url).split("?", 1)[0]


def _at_least(name: str, value: Any, low: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < low:
        raise ConfigError(f"amqp transport: {name} must be a number >= {low:g}, not {value!r}")
    return float(value)


def _delays(delays: Sequence[float]) -> tuple[float, ...]:
    if isinstance(delays, str | bytes) or not delays:
        raise ConfigError("amqp transport: retry_delays must be a non-empty list of seconds")
    return tuple(sorted({_at_least("retry_delays", d, 0.001) for d in delays}))


# -- how failures read ------------------------------------------------------------------------


def reason(exc: BaseException) -> str:
    """One line saying what went wrong, without aiormq's class-name decoration."""
    args = [a for a in getattr(exc, "args", ()) if a not in (None, "")]
    text = str(args[-1] if args else exc) or type(exc).__name__
    return text.strip().splitlines()[0][:300] if text.strip() else type(exc).__name__


def connect_error(exc: BaseException, where: str, timeout: float) -> TransportError:
    """The one-line error for a connection attempt that failed; ConnectionLost when worth retrying."""
    cause = exc.__cause__ if isinstance(exc, aiormq.exceptions.AMQPConnectionError) else None
    if isinstance(exc, TimeoutError):
        return ConnectionLost(f"no answer from {where} within {timeout:g}s")
    if isinstance(cause, ssl.SSLCertVerificationError) or isinstance(exc, ssl.SSLCertVerificationError):
        error = cause if cause is not None else exc
        detail = getattr(error, "verify_message", None) or reason(error)
        return TransportError(f"TLS: the certificate of {where} is not trusted ({detail}); not connecting")
    if isinstance(cause, ssl.SSLError) or isinstance(exc, ssl.SSLError):
        return TransportError(f"TLS handshake with {where} failed: {reason(cause or exc)}")
    if isinstance(exc, aiormq.exceptions.ProbableAuthenticationError):
        return TransportError(f"{where} refused the credentials (ACCESS_REFUSED, 403): {reason(exc)}")
    if isinstance(exc, aiormq.exceptions.AuthenticationError):
        offered = exc.args[0] if exc.args else "?"
        return TransportError(f"{where} does not offer the login mechanism we need (it offers: {offered})")
    if isinstance(exc, aiormq.exceptions.ConnectionNotAllowed):
        return TransportError(f"{where} does not allow this login on that vhost: {reason(exc)}")
    if isinstance(exc, aiormq.exceptions.IncompatibleProtocolError):
        return ConnectionLost(f"{where} hung up during the AMQP handshake (TLS port? broker starting?)")
    if isinstance(exc, OSError | aiormq.exceptions.AMQPError | RuntimeError | EOFError):
        return ConnectionLost(f"cannot connect to {where}: {reason(cause or exc)}")
    return TransportError(f"cannot connect to {where}: {reason(exc)}")


_NAMED = re.compile(r"no (exchange|queue) '([^']*)'")
_TOO_LARGE = re.compile(r"larger than configured max size (\d+)")


def missing_entity(exc: BaseException) -> str | None:
    """``exchange 'x'`` from RabbitMQ's "NOT_FOUND - no exchange 'x' in vhost '/'"."""
    found = _NAMED.search(reason(exc))
    return f"{found.group(1)} {found.group(2)!r}" if found else None


def broker_size_limit(exc: BaseException) -> int | None:
    """The max message size RabbitMQ states when it closes a channel over a too-large message."""
    found = _TOO_LARGE.search(reason(exc))
    return int(found.group(1)) if found else None


def declare_error(exc: BaseException, where: str) -> TransportError:
    if isinstance(exc, aiormq.exceptions.ChannelNotFoundEntity):
        return TransportError(f"{missing_entity(exc) or reason(exc)} does not exist (404 NOT_FOUND)")
    if isinstance(exc, aiormq.exceptions.ChannelAccessRefused):
        return TransportError(f"not allowed to declare on {where}: {reason(exc)}")
    if isinstance(exc, aiormq.exceptions.ChannelPreconditionFailed):
        return TransportError(f"declaration conflicts with what exists on {where}: {reason(exc)}")
    return ConnectionLost(f"declaring on {where} failed: {reason(exc)}")
