"""The one TOML configuration file, read strictly.

Where it is looked for: ``--config PATH``, then ``$TIDINGS_CONFIG``, then
``./tidings.toml``; with none of them, :func:`default_config` runs everything
on the embedded default under ``./.tidings/``. Unknown keys are refused, naming
the key, because a misspelt key that silently does nothing is worse than an error.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

import msgspec

from tidings.errors import ConfigError

DEFAULT_RETRY_SCHEDULE = [5.0, 25.0, 125.0, 625.0, 900.0]  # Bugzilla Push's backoff (seed 002)
CONSUMER_RETRY_SCHEDULE = [1.0, 5.0, 25.0, 125.0, 625.0]
CONFIG_ENV = "TIDINGS_CONFIG"
DEFAULT_FILE = "tidings.toml"


class _Strict(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class BusSection(_Strict):
    #: the producing application's name: the ``source`` of every event it publishes
    source: str = "tidings"
    #: where the embedded default keeps its files; relative paths are under the config's folder
    home: str = ".tidings"
    max_body_bytes: int = 1024 * 1024
    max_depth: int = 64
    #: refuse events whose type has no registered schema (and untyped events)
    require_schema: bool = False
    log_level: str = "INFO"


class OutboxSection(_Strict):
    path: str = "outbox.db"
    #: seconds a finished event stays before it is purged
    retention: float = 7 * 24 * 3600.0


class SchemasSection(_Strict):
    dirs: list[str] = []
    #: check ``format`` keywords (date-time, uri, ...) of your own schemas; see tidings.schemas
    assert_formats: bool = True


class ConnectorConfig(_Strict):
    """One destination of the dispatcher: a transport plus a format and an exchange."""

    transport: str
    format: str = "tidings"
    exchange: str = "tidings"
    enabled: bool = True
    #: only events whose topic matches one of these patterns go to this connector
    topics: list[str] = msgspec.field(default_factory=lambda: ["#"])
    #: seconds before retry n of a refused event (the last value repeats)
    retry_schedule: list[float] = msgspec.field(default_factory=lambda: list(DEFAULT_RETRY_SCHEDULE))
    #: attempts before an event goes to this connector's dead letters
    max_attempts: int = 10
    batch_size: int = 500
    #: batches sent before the oldest is confirmed (1: wait for each batch's confirms)
    in_flight: int = 4
    #: keep order: while a backlog exists, new events wait behind it (Bugzilla's rule)
    ordered: bool = True
    #: only check that the exchange exists (brokers where the app may not declare it)
    passive_exchange: bool = False
    #: options given to the format's constructor
    format_options: dict[str, Any] = {}


class ConsumerConfig(_Strict):
    """One consuming service: a durable queue on a transport, bound by topic patterns."""

    transport: str = "local"
    queue: str = ""
    exchange: str = "tidings"
    #: topic patterns the queue is bound by, besides the App's own subscriptions
    bindings: list[str] = []
    format: str = "tidings"
    #: options given to the format's constructor, as for a connector
    format_options: dict[str, Any] = {}
    #: ``module:attribute`` of an App, or of a plain function taking an Event
    app: str = ""
    prefetch: int = 100
    concurrency: int = 8
    max_attempts: int = 5
    retry_schedule: list[float] = msgspec.field(default_factory=lambda: list(CONSUMER_RETRY_SCHEDULE))
    #: skip events this consumer already handled (keyed by consumer and event id)
    inbox: bool = False
    queue_kind: str = "classic"


class BridgeConfig(_Strict):
    """A two-way fedmsg (ZeroMQ) ⇄ AMQP bridge (``tidings bridge NAME``), as Fedora migrated with."""

    #: fedmsg publishers to subscribe to
    zmq_endpoints: list[str]
    #: the connector that carries fedmsg messages into AMQP, through the outbox; its exchange
    #: must be the bridge's own (e.g. "zmq.topic"), never the one the other direction reads
    connector: str
    #: the AMQP transport the AMQP → fedmsg direction consumes from
    transport: str
    #: topic patterns taken from fedmsg
    zmq_topics: list[str] = msgspec.field(default_factory=lambda: ["#"])
    #: where AMQP messages are published as fedmsg (PUB, bound); "" for a one-way bridge
    zmq_publish: str = ""
    #: the exchange AMQP → fedmsg reads (fedora-messaging publishes to amq.topic)
    exchange: str = "amq.topic"
    bindings: list[str] = msgspec.field(default_factory=lambda: ["#"])
    #: the AMQP → fedmsg queue (default ``tidings.bridge.<name>``)
    queue: str = ""
    #: the bridge's identity: a message that carries it has crossed already and never goes back
    username: str = "fedmsg-bridge"
    topic_prefix: str = "org.fedoraproject"
    environment: str = "prod"
    #: refuse fedmsg messages that are unsigned or not signed by a certificate of ``ca_file``
    #: (fedmsg's x509 signatures, as fedmsg.crypto.validate checks them)
    verify: bool = False
    #: the CA certificate (PEM) fedmsg signers' certificates are issued by; needed with verify
    ca_file: str = ""


class Config(_Strict):
    bus: BusSection = msgspec.field(default_factory=BusSection)
    outbox: OutboxSection = msgspec.field(default_factory=OutboxSection)
    schemas: SchemasSection = msgspec.field(default_factory=SchemasSection)
    #: name → transport options; ``kind`` picks the transport, the rest goes to it
    transports: dict[str, dict[str, Any]] = {}
    connectors: dict[str, ConnectorConfig] = {}
    consumers: dict[str, ConsumerConfig] = {}
    bridges: dict[str, BridgeConfig] = {}
    #: the folder relative paths are resolved against (not a key of the file)
    base_dir: str = "."

    def home_path(self) -> Path:
        return Path(self.base_dir, self.bus.home)

    def outbox_path(self) -> Path:
        return self.home_path() / self.outbox.path

    def transport_options(self, name: str) -> tuple[str, dict[str, Any]]:
        try:
            options = dict(self.transports[name])
        except KeyError:
            known = ", ".join(sorted(self.transports)) or "none"
            raise ConfigError(f"no transport named {name!r} is configured (configured: {known})") from None
        kind = options.pop("kind", None)
        if not isinstance(kind, str):
            raise ConfigError(f'[transports.{name}] needs kind = "embedded" | "amqp" | ...')
        for key in ("path", "ca_file", "cert_file", "key_file"):
            if isinstance(options.get(key), str):
                options[key] = str(self._resolve(options[key]))
        return kind, options

    def _resolve(self, path: str) -> Path:
        # the embedded broker's file lives under home; other files beside the config
        candidate = Path(path)
        if candidate.is_absolute():
            return candidate
        if candidate.parent == Path("."):
            return self.home_path() / candidate
        return Path(self.base_dir) / candidate


def default_config(base_dir: str | Path = ".") -> Config:
    """Everything on the embedded default: one SQLite outbox, one SQLite broker."""
    return _with_defaults(Config(base_dir=str(base_dir)))


def _with_defaults(config: Config) -> Config:
    transports = config.transports or {"local": {"kind": "embedded", "path": "broker.db"}}
    connectors = config.connectors
    if not connectors and "local" in transports:
        connectors = {"local": ConnectorConfig(transport="local")}
    return msgspec.structs.replace(config, transports=transports, connectors=connectors)


def load_config(path: str | Path | None = None) -> Config:
    """The config named by ``path``, ``$TIDINGS_CONFIG`` or ``./tidings.toml``, else the default."""
    chosen = path or os.environ.get(CONFIG_ENV)
    if chosen is None:
        if not Path(DEFAULT_FILE).is_file():
            return default_config()
        chosen = DEFAULT_FILE
    file = Path(chosen)
    try:
        raw = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {str(file)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {str(file)!r} cannot be read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {str(file)!r} is not valid TOML: {exc}") from None
    return parse_config(raw, base_dir=file.resolve().parent, origin=str(file))


def parse_config(raw: dict[str, Any], *, base_dir: str | Path = ".", origin: str = "config") -> Config:
    if "base_dir" in raw:
        raise ConfigError(f"{origin}: unknown key 'base_dir'")
    # named tables first, so an error can say [connectors.rabbit] rather than [connectors[...]]
    for section, cls in (("connectors", ConnectorConfig), ("consumers", ConsumerConfig)):
        tables = raw.get(section)
        for name, table in tables.items() if isinstance(tables, dict) else ():
            try:
                msgspec.convert(table, cls, strict=True)
            except msgspec.ValidationError as exc:
                raise ConfigError(f"{origin}: {_explain(exc, f'{section}.{name}')}") from None
    try:
        config = msgspec.convert(raw, Config, strict=True)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{origin}: {_explain(exc)}") from None
    config = _with_defaults(msgspec.structs.replace(config, base_dir=str(base_dir)))
    _check_references(config, origin)
    return config


def _explain(exc: msgspec.ValidationError, table: str = "") -> str:
    # msgspec says "Object contains unknown field `x` - at `$.bus`"; say it as a key path
    message, _, where = str(exc).partition(" - at `")
    message = message.replace("Object contains unknown field", "unknown key")
    where = ".".join(p for p in (table, where.rstrip("`").removeprefix("$").lstrip(".")) if p)
    return f"{message} in [{where or 'top level'}]"


def _check_references(config: Config, origin: str) -> None:
    for name, connector in config.connectors.items():
        if connector.transport not in config.transports:
            raise ConfigError(
                f"{origin}: [connectors.{name}] names transport {connector.transport!r}, "
                "which is not configured"
            )
        if connector.max_attempts < 1 or not connector.retry_schedule:
            raise ConfigError(f"{origin}: [connectors.{name}] needs max_attempts >= 1 and a retry_schedule")
        if connector.batch_size < 1 or connector.in_flight < 1:
            raise ConfigError(f"{origin}: [connectors.{name}] needs batch_size >= 1 and in_flight >= 1")
    for name, consumer in config.consumers.items():
        if consumer.transport not in config.transports:
            raise ConfigError(
                f"{origin}: [consumers.{name}] names transport {consumer.transport!r}, "
                "which is not configured"
            )
        if consumer.prefetch < 1 or consumer.concurrency < 1:
            raise ConfigError(f"{origin}: [consumers.{name}] needs prefetch >= 1 and concurrency >= 1")
    for name, bridge in config.bridges.items():
        _check_bridge(config, name, bridge, origin)


def _check_bridge(config: Config, name: str, bridge: BridgeConfig, origin: str) -> None:
    where = f"{origin}: [bridges.{name}]"
    connector = config.connectors.get(bridge.connector)
    if connector is None:
        raise ConfigError(f"{where} names connector {bridge.connector!r}, which is not configured")
    if bridge.transport not in config.transports:
        raise ConfigError(f"{where} names transport {bridge.transport!r}, which is not configured")
    if bridge.verify and not bridge.ca_file:
        raise ConfigError(
            f"{where}: verify = true needs ca_file, the CA that issues fedmsg signers' certificates"
        )
    if connector.exchange == bridge.exchange and connector.transport == bridge.transport:
        raise ConfigError(
            f"{where}: connector {bridge.connector!r} publishes to {bridge.exchange!r}, the exchange the "
            "bridge reads: messages would go round in a loop; give the connector its own exchange"
        )
