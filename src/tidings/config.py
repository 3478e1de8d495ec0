"""The one TOML configuration file, read strictly.

Where it is looked for (:func:`find_config`): ``--config PATH``, then
``$TIDINGS_CONFIG``, then ``tidings.toml`` in the current folder and its parents up to
the repository's root, then ``/etc/tidings/tidings.toml``; with none of them,
:func:`default_config` runs everything on the embedded default under ``./.tidings/``.
Unknown keys are refused, naming the key, because a misspelt key that silently does nothing
is worse than an error.
"""

from __future__ import annotations

import os
import re
import tomllib
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from msgspec import Meta

from tidings.errors import ConfigError
from tidings.event import DEEPEST
from tidings.plugins import Registry, explain
from tidings.retry import CONNECTOR_SCHEDULE, CONSUMER_SCHEDULE

CONFIG_ENV = "TIDINGS_CONFIG"
DEFAULT_FILE = "tidings.toml"
SYSTEM_FILE = Path("/etc/tidings/tidings.toml")
#: a folder holding one of these is a repository's root: the search for tidings.toml stops there
REPOSITORY_MARKERS = (".git", ".hg")
EMBEDDED_DEFAULT = "the embedded default (no config file found)"

#: the types options are checked with: each says what is allowed, and an error names the key
Positive = Annotated[float, Meta(gt=0)]
#: up to ten years: a finite number of seconds (inf and nan are refused)
Seconds = Annotated[float, Meta(ge=0, le=10 * 365 * 86_400)]
#: a million: beyond any batch, prefetch or attempt limit that means something, and within what
#: SQLite and the brokers' clients can hold (a larger number failed deep inside them)
MAX_COUNT = 1_000_000
Count = Annotated[int, Meta(ge=1, le=MAX_COUNT)]
#: a body's size: up to 2 GiB
Bytes = Annotated[int, Meta(ge=1, le=2**31 - 1)]
#: nesting of a JSON body, at most tidings.event.DEEPEST levels
Depth = Annotated[int, Meta(ge=1, le=DEEPEST)]
#: a retry waits a week at most: an entry never due would hold its event (and an ordered connector)
RetryDelay = Annotated[float, Meta(ge=0, le=7 * 86_400)]
Schedule = Annotated[list[RetryDelay], Meta(min_length=1)]
Name = Annotated[str, Meta(min_length=1)]
#: ``module:attribute`` (``myservice:app``, ``pkg.handlers:on_build``)
APP_TARGET = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")


class _Strict(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class BusSection(_Strict):
    #: the producing application's name: the ``source`` of every event it publishes
    source: Name = "tidings"
    #: where the embedded default keeps its files; relative paths are under the config's folder
    home: Name = ".tidings"
    max_body_bytes: Bytes = 1024 * 1024
    max_depth: Depth = 64
    #: refuse events whose type has no registered schema (and untyped events)
    require_schema: bool = False
    #: how much the long-running commands log unless --log-level says otherwise
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    #: seconds a consumer's inbox remembers a handled event (consumers with inbox = true)
    inbox_retention: Positive = 7 * 24 * 3600.0


class OutboxSection(_Strict):
    path: Name = "outbox.db"
    #: seconds a finished event stays before it is purged
    retention: Seconds = 7 * 24 * 3600.0


class SchemasSection(_Strict):
    dirs: list[str] = []
    #: check ``format`` keywords (date-time, uri, ...) of your own schemas; see tidings.schemas
    assert_formats: bool = True


class ConnectorConfig(_Strict):
    """One destination of the dispatcher: a transport plus a format and an exchange."""

    transport: Name
    format: Name = "tidings"
    exchange: str = "tidings"
    enabled: bool = True
    #: only events whose topic matches one of these patterns go to this connector
    topics: Annotated[list[str], Meta(min_length=1)] = msgspec.field(default_factory=lambda: ["#"])
    #: seconds before retry n of a refused event (the last value repeats)
    retry_schedule: Schedule = msgspec.field(default_factory=lambda: list(CONNECTOR_SCHEDULE))
    #: attempts before an event goes to this connector's dead letters
    max_attempts: Count = 10
    batch_size: Count = 500
    #: batches sent before the oldest is confirmed (1: wait for each batch's confirms)
    in_flight: Count = 4
    #: keep order: while a backlog exists, new events wait behind it (Bugzilla's rule)
    ordered: bool = True
    #: only check that the exchange exists (brokers where the app may not declare it)
    passive_exchange: bool = False
    #: options given to the format's constructor
    format_options: dict[str, Any] = {}
    #: only events this filter passes (tidings.filters) go to this connector; none: all of them
    filter: Any = None


class ConsumerConfig(_Strict):
    """One consuming service: a durable queue on a transport, bound by topic patterns.

    The same settings whether they come from ``[consumers.NAME]`` or from ``App(name, ...)``.
    """

    transport: Name = "local"
    #: the queue's name ("" : the consumer's name)
    queue: str = ""
    exchange: str = "tidings"
    #: topic patterns the queue is bound by, besides the App's own subscriptions
    bindings: list[str] = []
    format: Name = "tidings"
    #: options given to the format's constructor, as for a connector
    format_options: dict[str, Any] = {}
    #: ``module:attribute`` of an App, or of a plain function taking an Event
    app: str = ""
    #: messages held unsettled at once
    prefetch: Count = 100
    #: handlers running at once (1 keeps the queue's order)
    concurrency: Count = 8
    #: attempts (retries and deaths) before a message goes to ``<queue>.dead``
    max_attempts: Count = 5
    retry_schedule: Schedule = msgspec.field(default_factory=lambda: list(CONSUMER_SCHEDULE))
    #: skip events this consumer already handled (keyed by consumer and event id)
    inbox: bool = False
    queue_kind: Literal["classic", "quorum"] = "classic"
    #: broker-specific queue arguments (e.g. RabbitMQ's x-expires), passed through untouched
    queue_arguments: dict[str, Any] = {}

    def __post_init__(self) -> None:
        if self.app and not APP_TARGET.fullmatch(self.app):
            raise ValueError(f"app must be MODULE:ATTRIBUTE (myservice:app), not {self.app!r}")


class RelayConfig(ConsumerConfig):
    """``[relays.NAME]``: a consumer of any transport whose events go out again through the outbox.

    The input is described as a consumer's (transport, queue, bindings, format, ...); what passes
    ``filter`` is published with its topic rewritten by ``topic`` (``{topic}`` the incoming one,
    ``{0}``, ``{1}`` ... its words) and reaches every connector whose topics match it.
    """

    #: which events pass (tidings.filters); none: all of them
    filter: Any = None
    topic: Name = "{topic}"
    #: relays an event may pass through; one that went through more is dropped (a loop)
    max_hops: Count = 4
    #: the connectors what this relay passes goes to (none: every connector whose topics take it)
    connectors: list[str] = []
    #: headers set on every relayed event, for a bus whose format cannot carry the hop header
    #: (fedmsg's ``fedmsg_bridged_by``); an event that arrives with any of them set, whatever its
    #: value (another bridge's name), crossed once already: a loop
    mark: dict[str, Name] = {}
    #: the id of the relayed event: ``{id}`` keeps the incoming one (the outbox takes an id once, so
    #: a message delivered twice is relayed once); ``{year}-{id}`` is fedmsg's form, which the
    #: fedmsg bridge uses so that this bus's own events coming back from AMQP are not taken for
    #: the ones already in its outbox
    id: Annotated[str, Meta(pattern=r"\{id\}")] = "{id}"
    #: the new bus, watched for the migration view: a consumer section (transport, exchange,
    #: bindings, format, queue) whose events that did not come through this relay count as
    #: published there natively (tidings.migration)
    watch: dict[str, Any] = {}


class ReactorRule(_Strict):
    """``[reactor.rules.NAME]``: when an event matches, run a command (argv, no shell) or a callable."""

    match: Any = None
    #: the command and its arguments; ``$topic``, ``$data.job`` ... (tidings.filters paths) are
    #: replaced by the event's values, as whole arguments or as ``${path}`` inside one (``$${``: a ``${``)
    command: list[str] = []
    #: ``module:function`` called with the event instead of a command
    call: str = ""
    #: what the command reads on stdin: the event as JSON, its body as JSON, or nothing
    stdin: Literal["event", "body", "none"] = "event"
    #: seconds, at most a day (a stop waits for a running command)
    timeout: Annotated[float, Meta(gt=0, le=86_400)] = 60.0
    #: topics the rule's queue is bound by (the filter then decides)
    bindings: list[str] = msgspec.field(default_factory=lambda: ["#"])
    max_attempts: Count = 5
    retry_schedule: Schedule = msgspec.field(default_factory=lambda: list(CONSUMER_SCHEDULE))


class ReactorSection(_Strict):
    #: where the rules' queues live (``reactor.<rule>``)
    transport: Name = "local"
    exchange: str = "tidings"
    format: Name = "tidings"
    #: commands running at once, over all rules
    workers: Count = 4
    rules: dict[str, ReactorRule] = {}


class WebSection(_Strict):
    """``tidings web`` and the page ``tidings serve`` adds when this section is present."""

    #: HOST:PORT the page and the query API listen on
    listen: str = "127.0.0.1:8080"
    #: shows private events (also $TIDINGS_WEB_READ_TOKEN); "" : nobody but the admin sees them
    read_token: str = ""
    #: retry, drop and replay, and everything read_token allows (also $TIDINGS_WEB_ADMIN_TOKEN)
    admin_token: str = ""

    def __post_init__(self) -> None:
        problem = listen_problem(self.listen)
        if problem:
            raise ValueError(f"listen {problem}")


def listen_problem(listen: str) -> str | None:
    """Why ``listen`` is no address to listen on, or None."""
    host, colon, port = listen.rpartition(":")
    if colon and not host.strip("[]"):  # ":8080" listens everywhere, which must be asked for by name
        return f"{listen[:80]!r} names no host (127.0.0.1 for this machine, 0.0.0.0 for every interface)"
    if (
        colon
        and port.isascii()
        and port.isdigit()
        and 0 < int(port) < 65536
        and not any(c.isspace() for c in host)
    ):
        return None
    return f"{listen[:80]!r} is not HOST:PORT with a port from 1 to 65535 (127.0.0.1:8080)"


class ArchiveSource(_Strict):
    """A broker queue the archive consumes: every event on it is archived, then acked."""

    transport: Name
    #: the archive's own durable queue on that broker
    queue: Name = "tidings.archive"
    exchange: str = "tidings"
    bindings: Annotated[list[str], Meta(min_length=1)] = msgspec.field(default_factory=lambda: ["#"])
    #: the format its messages are in; it also reads their search fields
    format: Name = "tidings"
    format_options: dict[str, Any] = {}
    prefetch: Count = 1000


class ArchiveSection(_Strict):
    """``[archive]``: where every event is kept, and where the events come from."""

    store: Literal["sqlite", "postgresql"] = "sqlite"
    #: the SQLite file (a bare name is under ``[bus] home``)
    path: Name = "archive.db"
    #: PostgreSQL's connection URL (``postgresql://user@host/db``); masked wherever it is shown
    url: str = ""
    #: seconds an event is kept, by its own time (0: forever)
    retention: Seconds = 0.0
    #: events written per transaction at most
    batch_size: Count = 500
    #: ``"outbox"``: this bus's own events (through the dispatcher's ``archive`` connector); or
    #: broker queues to consume
    sources: Literal["outbox"] | list[ArchiveSource] = msgspec.field(default="outbox", name="from")
    #: topic pattern → format whose ``search_fields`` reads an outbox event (see tidings.archive.fields)
    fields: dict[str, str] = {}

    def from_outbox(self) -> bool:
        return self.sources == "outbox"


#: the connector and transport the dispatcher archives through, when ``[archive] from = "outbox"``
ARCHIVE_CONNECTOR = "archive"


class Config(_Strict):
    bus: BusSection = msgspec.field(default_factory=BusSection)
    outbox: OutboxSection = msgspec.field(default_factory=OutboxSection)
    schemas: SchemasSection = msgspec.field(default_factory=SchemasSection)
    #: name → transport options; ``kind`` picks the transport, the rest goes to it
    transports: dict[str, dict[str, Any]] = {}
    connectors: dict[str, ConnectorConfig] = {}
    consumers: dict[str, ConsumerConfig] = {}
    relays: dict[str, RelayConfig] = {}
    reactor: ReactorSection = msgspec.field(default_factory=ReactorSection)
    #: sections a plug-in owns (``[bridges.NAME]``: the fedmsg bridge), checked by it: see SECTIONS
    bridges: dict[str, dict[str, Any]] = {}
    #: the page and the query API (``tidings web``; ``tidings serve`` too when present)
    web: WebSection | None = None
    archive: ArchiveSection | None = None
    #: the folder relative paths are resolved against (not a key of the file)
    base_dir: str = "."
    #: where this config came from, for `tidings config show` (not a key of the file)
    origin: str = EMBEDDED_DEFAULT
    #: the tables a plug-in section stands for, as ``(section, name)`` (not keys of the file:
    #: `tidings config show` leaves them out, so what it prints loads again)
    expanded: list[tuple[str, str]] = []

    def formatted(self) -> Iterator[tuple[str, str, ConnectorConfig | ConsumerConfig]]:
        """``(section, name, table)`` of every table that names a format and its options."""
        for section, tables in (
            ("connectors", self.connectors),
            ("consumers", self.consumers),
            ("relays", self.relays),
        ):
            for name, table in tables.items():
                yield section, name, table

    def home_path(self) -> Path:
        return Path(self.base_dir, _expanded(self.bus.home, "[bus] home"))

    def outbox_path(self) -> Path:
        return self.home_path() / self.outbox.path

    def archive_path(self) -> Path:
        return self._resolve(self.archive.path if self.archive else "archive.db")

    def transport_name(self, name: str) -> str:
        """The configured transport ``name`` means: ``"local"`` (what an App made in code uses when
        it names none) is the only transport there is, when none has that name."""
        return (only_transport(self.transports) or name) if name == "local" else name

    def transport_options(self, name: str) -> tuple[str, dict[str, Any]]:
        name = self.transport_name(name)
        try:
            options = dict(self.transports[name])
        except KeyError:
            known = ", ".join(sorted(self.transports)) or "none"
            raise ConfigError(f"no transport named {name!r} is configured (configured: {known})") from None
        kind = options.pop("kind", None)
        if not isinstance(kind, str):
            raise ConfigError(f'[transports.{name}] needs kind = "embedded" | "amqp" | ...')
        if kind == "embedded":  # its file is under home, beside the outbox, wherever the command runs
            options.setdefault("path", "broker.db")
        if isinstance(options.get("path"), str):
            options["path"] = str(self._resolve(options["path"]))
        for key in ("ca_file", "cert_file", "key_file"):  # beside the config, never under home
            if isinstance(options.get(key), str) and options[key]:
                options[key] = str(Path(self.base_dir, options[key]))
        return kind, options

    def _resolve(self, path: str) -> Path:
        # the embedded broker's file lives under home; other files beside the config
        candidate = _expanded(path, "a file path")
        if candidate.is_absolute():
            return candidate
        if candidate.parent == Path("."):
            return self.home_path() / candidate
        return Path(self.base_dir) / candidate


def _expanded(path: str, what: str) -> Path:
    """``path`` with a leading ``~`` or ``~user`` as that user's home."""
    try:
        return Path(path).expanduser()
    except RuntimeError:  # no such user, or no home to be found (an unknown uid, no $HOME)
        raise ConfigError(f"{what} {path!r}: no home folder is known for that user") from None


def default_config(base_dir: str | Path = ".") -> Config:
    """Everything on the embedded default: one SQLite outbox, one SQLite broker."""
    return _with_defaults(Config(base_dir=str(base_dir)))


def _with_defaults(config: Config) -> Config:
    transports = config.transports or {"local": {"kind": "embedded", "path": "broker.db"}}
    connectors = config.connectors
    if not connectors and "local" in transports:
        connectors = {"local": ConnectorConfig(transport="local")}
    if config.archive is not None and config.archive.from_outbox():
        connectors = _archive_connector(config.archive, connectors, transports)
    consumers, reactor = config.consumers, config.reactor
    only = only_transport(transports)
    if only is not None:  # a section that names no transport means the one there is
        consumers = {name: _on(table, only) for name, table in consumers.items()}
        reactor = _on(reactor, only)
    return msgspec.structs.replace(
        config, transports=transports, connectors=connectors, consumers=consumers, reactor=reactor
    )


def only_transport(transports: dict[str, Any]) -> str | None:
    """The transport that ``"local"`` (what a consumer uses when it names none) stands for when no
    transport has that name and exactly one is configured; None otherwise."""
    return next(iter(transports)) if "local" not in transports and len(transports) == 1 else None


S = TypeVar("S", ConsumerConfig, ReactorSection)


def _on(table: S, only: str) -> S:
    return msgspec.structs.replace(table, transport=only) if table.transport == "local" else table


def _archive_connector(
    section: ArchiveSection, connectors: dict[str, ConnectorConfig], transports: dict[str, Any]
) -> dict[str, ConnectorConfig]:
    """The dispatcher's ``archive`` connector: the outbox's events reach the archive as they reach
    any connector (a cursor, retries, and a purge of the outbox that waits for it). Its transport
    is the archive itself (``tidings.archive.sink``), which the Bus builds: it is no broker."""
    name = ARCHIVE_CONNECTOR
    if name in connectors and connectors[name].transport != name:
        raise ConfigError(f'[connectors.{name}] is taken by [archive] from = "outbox": rename the connector')
    if name in transports:  # the archive's connector would go to the archive, not to this broker
        raise ConfigError(f'[transports.{name}] is taken by [archive] from = "outbox": rename the transport')
    connector = ConnectorConfig(
        transport=name, batch_size=section.batch_size, retry_schedule=[1.0, 5.0, 30.0]
    )
    return {**connectors, name: connector}


def archives_outbox(config: Config, connector: str) -> bool:
    """Whether ``connector`` is the archive's own (its transport is the archive, not a broker)."""
    return connector == ARCHIVE_CONNECTOR and config.archive is not None and config.archive.from_outbox()


def find_config(
    path: str | Path | None = None,
    *,
    cwd: Path | None = None,
    system: Path = SYSTEM_FILE,
) -> tuple[Path | None, str]:
    """The config file to read and why it was chosen; ``(None, ...)`` for the embedded default.

    ``--config``, then ``$TIDINGS_CONFIG``, then ``tidings.toml`` here or in a parent folder (up
    to the repository's root, so a file outside the project is never picked up by accident; with
    no repository around, only here), then the system-wide file.
    """
    if path:
        return Path(path), "--config"
    if os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV]), f"${CONFIG_ENV}"
    here = (cwd or Path.cwd()).resolve()
    for folder in _project_folders(here):
        if (folder / DEFAULT_FILE).is_file():  # named as short as it can be, for error messages
            if folder == here:
                return Path(DEFAULT_FILE) if cwd is None else here / DEFAULT_FILE, "found in this folder"
            return folder / DEFAULT_FILE, "found in a parent folder"
    if system.is_file():
        return system, "system-wide"
    return None, EMBEDDED_DEFAULT


def _project_folders(here: Path) -> list[Path]:
    """``here`` and its parents up to the repository's root; only ``here`` outside a repository."""
    folders = []
    for folder in (here, *here.parents):
        folders.append(folder)
        if any((folder / marker).exists() for marker in REPOSITORY_MARKERS):
            return folders
    return [here]


def load_config(path: str | Path | None = None) -> Config:
    """The config :func:`find_config` finds, else the embedded default."""
    file, why = find_config(path)
    if file is None:
        return default_config()
    # /dev/urandom never ends; a named pipe waits for a writer that may never come
    if file.is_dir() or file.is_char_device() or file.is_block_device() or file.is_fifo():
        raise ConfigError(f"config file {str(file)!r} ({why}) is a directory, a device or a pipe, not a file")
    try:
        raw = tomllib.loads(file.read_text(encoding="utf-8"))
        config = parse_config(raw, base_dir=file.resolve().parent, origin=str(file))
    except FileNotFoundError:
        raise ConfigError(f"config file {str(file)!r} ({why}) does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {str(file)!r} cannot be read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {str(file)!r} is not valid TOML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"config file {str(file)!r} nests tables or lists too deeply") from None
    return msgspec.structs.replace(config, origin=f"{file} ({why})")


#: Config's fields that are no keys of the file
COMPUTED = ("base_dir", "origin", "expanded")


def parse_config(raw: dict[str, Any], *, base_dir: str | Path = ".", origin: str = "config") -> Config:
    for computed in COMPUTED:
        if computed in raw:
            raise ConfigError(f"{origin}: unknown key {computed!r}")
    # named tables first, so an error can say [connectors.rabbit] rather than [connectors[...]]
    reactor = raw.get("reactor")
    named = (
        ("connectors", ConnectorConfig, raw.get("connectors")),
        ("consumers", ConsumerConfig, raw.get("consumers")),
        ("relays", RelayConfig, raw.get("relays")),
        ("reactor.rules", ReactorRule, reactor.get("rules") if isinstance(reactor, dict) else None),
    )
    for section, cls, tables in named:
        for name, table in tables.items() if isinstance(tables, dict) else ():
            try:
                msgspec.convert(table, cls, strict=True)
            except msgspec.ValidationError as exc:
                raise ConfigError(f"{origin}: {_in_table(exc, f'{section}.{name}', cls)}") from None
    try:
        config = msgspec.convert(raw, Config, strict=True)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{origin}: {_in_table(exc, shape=Config)}") from None
    config = _with_defaults(msgspec.structs.replace(config, base_dir=str(base_dir)))
    config = _expand_sections(config, origin)
    _resolve_format_files(config)
    from tidings.config_checks import check_config  # it needs this module's sections: imported late

    check_config(config, origin)
    return config


def _resolve_format_files(config: Config) -> None:
    """Files named in format options (a format plug-in's ``paths``, such as fedmsg's signing key)
    are relative to the config file's folder, as a transport's ``ca_file`` is, not to wherever the
    command runs. PEM text given in place of a file name stays as it is."""
    from tidings.format import format_plugin  # formats are plug-ins: found when a config names one

    sources = config.archive.sources if config.archive and not config.archive.from_outbox() else []
    tables = [table for _, _, table in config.formatted()] + list(sources)
    for table in tables:
        if not table.format_options:
            continue
        try:
            paths = format_plugin(table.format).paths
        except ConfigError:
            continue  # an unknown format: the checks below say so, naming the table
        for key in paths:
            value = table.format_options.get(key)
            if isinstance(value, str) and value and "-----BEGIN" not in value:
                table.format_options[key] = str(Path(config.base_dir, value))


#: sections of the config file that a plug-in owns, from the ``tidings.sections`` entry points:
#: name → ``module:expand(config, name, table, where)``, which checks the table and returns what it
#: stands for as tables of the core's own sections (``{"transports": {...}, "connectors": {...},
#: "relays": {...}}``): ``[bridges.NAME]`` is two relays, a connector and two transports. It imports
#: nothing heavy, so a config is checked without the plug-in's extras.
SECTIONS = Registry("tidings.sections", {}, "config section")
#: the sections an expansion may add to, and what their tables are
_EXPANDABLE: dict[str, type[msgspec.Struct] | None] = {
    "transports": None,
    "connectors": ConnectorConfig,
    "relays": RelayConfig,
}


def _expand_sections(config: Config, origin: str) -> Config:
    for section, tables in (("bridges", config.bridges),):
        for name, table in tables.items():
            where = f"{origin}: [{section}.{name}]"
            added = SECTIONS.attribute(section)(config, name, table, where) or {}
            config = _with_added(config, added, where)
    return config


def _with_added(config: Config, added: dict[str, dict[str, Any]], where: str) -> Config:
    """``config`` with a plug-in section's tables added; a name already taken is an error."""
    changes: dict[str, dict[str, Any]] = {}
    for section, tables in added.items():
        shape = _EXPANDABLE[section]
        merged = dict(getattr(config, section))
        for name, table in tables.items():
            if name in merged:
                raise ConfigError(f"{where} needs [{section}.{name}], which is configured already")
            try:
                merged[name] = table if shape is None else msgspec.convert(table, shape, strict=True)
            except msgspec.ValidationError as exc:
                raise ConfigError(f"{where}: [{section}.{name}] {explain(exc)}") from None
        changes[section] = merged
    names = [(section, name) for section, tables in added.items() for name in tables]
    return msgspec.structs.replace(config, **changes, expanded=[*config.expanded, *names])


def _in_table(exc: msgspec.ValidationError, table: str = "", shape: type = Any) -> str:
    # msgspec's "Expected `int` >= 1 - at `$.bus.max_depth`" as "[bus] max_depth: expected int >= 1"
    said = explain(exc, table)
    key, sep, message = said.partition(": ")
    if not sep or said.startswith("unknown key"):
        where = said.partition(" in [")[2].rstrip("]")
        known = known_keys(shape, where.removeprefix(table).strip(".") if table else where)
        said = said if " in [" in said else f"{said} in [top level]"
        return f"{said} (known: {', '.join(known)})" if known else said
    if message.startswith("invalid enum value"):  # msgspec does not say which values are
        choices = _choices(shape, str(exc).partition(" - at `")[2].rstrip("`"))
        message += f" (one of: {', '.join(map(str, choices))})" if choices else ""
    section, _, leaf = key.rpartition(".")
    return f"[{section}] {leaf}: {message}" if section else f"{key}: {message}"


def known_keys(shape: Any, path: str) -> list[str]:
    """The keys the table at ``path`` (``bus``, ``transports.local``; "" the top level) of
    ``shape`` takes, when it is a struct (a table of named tables has no fixed keys)."""
    for part in [p for p in path.split(".") if p]:
        while typing.get_origin(shape) in (typing.Union, types.UnionType, Annotated):
            shape = next(a for a in typing.get_args(shape) if a is not type(None))
        try:
            shape = typing.get_type_hints(shape).get(part)
        except TypeError:
            return []
    while typing.get_origin(shape) in (typing.Union, types.UnionType, Annotated):
        shape = next(a for a in typing.get_args(shape) if a is not type(None))
    if isinstance(shape, type) and issubclass(shape, msgspec.Struct):
        return [f.encode_name for f in msgspec.structs.fields(shape) if f.encode_name not in COMPUTED]
    return []


def _choices(shape: Any, path: str) -> tuple[Any, ...]:
    """The values a Literal field at ``path`` (msgspec's ``$.bus.log_level``) of ``shape`` takes."""
    for part in path.removeprefix("$").strip(".").split("."):
        # X | None, Annotated[X, ...]: X
        while typing.get_origin(shape) in (typing.Union, types.UnionType, Annotated):
            shape = next(a for a in typing.get_args(shape) if a is not type(None))
        try:
            shape = typing.get_type_hints(shape).get(part)
        except TypeError:  # not a struct: a dict's key, a list's index
            return ()
    return typing.get_args(shape) if typing.get_origin(shape) is Literal else ()
