"""What a configuration must hold together beyond each key's type (:func:`check_config`).

Each option's type and range is msgspec's to check (:mod:`tidings.config`); here is what spans
keys and sections: a transport's options are its plug-in's, a format exists and takes its
options, patterns and filters compile, what a section names is configured, a relay's topic
template makes topics. Every failure is a one-line :class:`ConfigError` naming the file and key.
"""

from __future__ import annotations

import string

import msgspec

from tidings.config import Config, ConsumerConfig, archives_outbox
from tidings.errors import ConfigError, InvalidTopic
from tidings.filters import FIELDS, compile_filter, is_field
from tidings.format import format_plugin
from tidings.plugins import explain
from tidings.topics import validate_pattern, validate_topic
from tidings.transport import transport_plugin


def check_config(config: Config, origin: str) -> None:
    """Raise ConfigError for the first thing in ``config`` that cannot work."""
    _check_names(config, origin)
    _check_transports(config, origin)
    _check_formats(config, origin)
    _check_patterns(config, origin)
    _check_references(config, origin)
    _check_relays_and_rules(config, origin)
    _check_archive(config, origin)


def _check_names(config: Config, origin: str) -> None:
    """Every table's name says something: an empty one (``[consumers.""]``) names nothing."""
    named = {
        "transports": config.transports,
        "connectors": config.connectors,
        "consumers": config.consumers,
        "relays": config.relays,
        "reactor.rules": config.reactor.rules,
    }
    for section, tables in named.items():
        if any(not name.strip() for name in tables):
            raise ConfigError(f'{origin}: [{section}.""]: a name cannot be empty')


def _check_transports(config: Config, origin: str) -> None:
    """Each transport's options, checked by its plug-in (without importing its broker library)."""
    for name, table in config.transports.items():
        options = dict(table)
        kind = options.pop("kind", None)
        if not isinstance(kind, str):
            raise ConfigError(f'{origin}: [transports.{name}] needs kind = "embedded" | "amqp" | ...')
        transport_plugin(kind).parse(options, f"{origin}: [transports.{name}]")


def _check_formats(config: Config, origin: str) -> None:
    """Each connector's, consumer's and relay's format exists, and its options are the format's."""
    for section, name, table in config.formatted():
        where = f"{origin}: [{section}.{name}]"
        try:
            plugin = format_plugin(table.format)
        except ConfigError as exc:
            raise ConfigError(f"{where} format: {exc}") from None
        plugin.parse(table.format_options, f"{where} format_options")


def _check_patterns(config: Config, origin: str) -> None:
    for name, connector in config.connectors.items():
        _check_bindings(connector.topics, f"{origin}: [connectors.{name}] topics")
        if connector.filter is not None:
            compile_filter(connector.filter, f"{origin}: [connectors.{name}] filter")
    for name, consumer in config.consumers.items():
        _check_bindings(consumer.bindings, f"{origin}: [consumers.{name}] bindings")


def _check_archive(config: Config, origin: str) -> None:
    section = config.archive
    if section is None:
        return
    if section.store == "postgresql" and not section.url:
        raise ConfigError(f'{origin}: [archive] store = "postgresql" needs url = "postgresql://..."')
    for pattern, name in section.fields.items():
        try:
            validate_pattern(pattern)
            format_plugin(name)
        except (ConfigError, InvalidTopic) as exc:
            raise ConfigError(f"{origin}: [archive] fields: {exc}") from None
    if section.sources == []:  # `tidings archive` would end at once, having archived nothing
        raise ConfigError(
            f"{origin}: [archive] from = [] names no source: list the broker queues to archive, "
            'or leave from out to archive the outbox (from = "outbox")'
        )
    for number, source in enumerate([] if section.from_outbox() else section.sources, 1):
        where = f"{origin}: [archive] from, source {number}"
        if source.transport not in config.transports:
            raise ConfigError(f"{where} names transport {source.transport!r}, which is not configured")
        try:
            format_plugin(source.format).parse(source.format_options, f"{where} format_options")
            for pattern in source.bindings:
                validate_pattern(pattern)
        except InvalidTopic as exc:
            raise ConfigError(f"{where} bindings: {exc}") from None
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None


def _check_references(config: Config, origin: str) -> None:
    for section, tables in (("connectors", config.connectors), ("consumers", config.consumers)):
        for name, table in tables.items():
            if section == "connectors" and archives_outbox(config, name):
                continue
            if table.transport not in config.transports:
                known = ", ".join(sorted(config.transports))
                # a consumer's default: it named none, and there are several (a connector must name one)
                if section == "consumers" and table.transport == "local":
                    raise ConfigError(
                        f'{origin}: [{section}.{name}] needs transport = "NAME" (configured: {known})'
                    )
                raise ConfigError(
                    f"{origin}: [{section}.{name}] names transport {table.transport!r}, "
                    f"which is not configured (configured: {known})"
                )


def _check_relays_and_rules(config: Config, origin: str) -> None:
    """Filters compile, commands are commands, and what they name is configured."""
    for name, relay in config.relays.items():
        where = f"{origin}: [relays.{name}]"
        if relay.app:
            raise ConfigError(f"{where} app: a relay's handler is the relay itself; remove app")
        if relay.filter is not None:
            compile_filter(relay.filter, f"{where} filter")
        _check_known(config, where, relay.transport)
        check_topic_template(relay.topic, f"{where} topic")
        _check_bindings(relay.bindings, f"{where} bindings")
        for connector in relay.connectors:
            if connector not in config.connectors:
                known = ", ".join(sorted(config.connectors)) or "none"
                raise ConfigError(
                    f"{where} connectors: {connector!r} is not configured (configured: {known})"
                )
        if relay.watch:
            try:
                watched = msgspec.convert(relay.watch, ConsumerConfig, strict=True)
            except msgspec.ValidationError as exc:
                raise ConfigError(f"{where} watch: {explain(exc)}") from None
            _check_known(config, f"{where} watch", watched.transport)
            _check_bindings(watched.bindings, f"{where} watch bindings")
    reactor = config.reactor
    if reactor.rules:
        _check_known(config, f"{origin}: [reactor]", reactor.transport)
        try:
            format_plugin(reactor.format)
        except ConfigError as exc:
            raise ConfigError(f"{origin}: [reactor] format: {exc}") from None
    for name, rule in reactor.rules.items():
        where = f"{origin}: [reactor.rules.{name}]"
        if bool(rule.command) == bool(rule.call):
            raise ConfigError(f'{where}: give either command = [...] or call = "module:function"')
        if rule.command and not rule.command[0]:
            raise ConfigError(f"{where} command: the first item is the program to run, not empty")
        _check_substitutions(rule.command, f"{where} command")
        if rule.match is not None:
            compile_filter(rule.match, f"{where} match")
        _check_bindings(rule.bindings, f"{where} bindings")


def _check_substitutions(command: list[str], where: str) -> None:
    """Each ``$path`` of a command names a field an event can have: a typo would dead-letter
    every event, as a filter's is refused when the config is read."""
    from tidings.reactor import paths_in  # (it imports the consumer runtime: only when needed)

    for arg in command:
        for path in paths_in(arg):
            if not is_field(path):
                raise ConfigError(
                    f"{where}: {arg!r}: {path!r} is not a field: {FIELDS} (a literal ${{ is written $${{)"
                )


def _check_bindings(patterns: list[str], where: str) -> None:
    for pattern in patterns:
        try:
            validate_pattern(pattern)
        except InvalidTopic as exc:
            raise ConfigError(f"{where}: {exc}") from None


def check_topic_template(template: str, where: str) -> str:
    """A relay's topic template: it names only ``{topic}`` or word numbers ``{0}``, ``{1}`` ...
    (no conversions or format specs), and what it makes is a topic (with ``x`` for each)."""
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    sample = ""
    for literal, name, spec, conversion in parts:
        sample += literal
        if name is None:
            continue
        if name != "topic" and not name.isdigit():
            raise ConfigError(f"{where}: {{{name}}} is neither {{topic}} nor a word number like {{0}}")
        if spec or conversion:
            raise ConfigError(f"{where}: {{{name}}} takes no conversion or format spec")
        sample += "x"
    try:
        validate_topic(sample)
    except InvalidTopic as exc:
        raise ConfigError(f"{where}: {template!r} makes no valid topic: {exc}") from None
    return template


def _check_known(config: Config, where: str, transport: str) -> None:
    if transport not in config.transports:
        known = ", ".join(sorted(config.transports))
        raise ConfigError(
            f"{where} names transport {transport!r}, which is not configured (configured: {known})"
        )
