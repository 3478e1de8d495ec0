"""ReactOBus configurations as tidings configurations, so a lab can switch without rewriting its own.

ReactOBus (github.com/ivoire/ReactOBus) reads a YAML file with ``inputs`` (``ZMQSub``,
``ZMQPull``), ``outputs`` (``ZMQPub``, ``ZMQPush``), ``reactor`` rules and a ``db``; its messages
are the five frames LAVA publishes (topic, uuid, datetime, username, JSON data), and its filters
and rules match one ``field`` (``topic``, ``uuid``, ``datetime``, ``username``, ``data`` or
``data.KEY``) against regular expressions with ``re.match`` — anchored at the start.
:func:`convert` gives the equivalent tidings configuration: a ZeroMQ transport and a relay per
input, a ZeroMQ transport and a connector per output, a reactor rule per rule. What has no
equivalent is listed in :attr:`Converted.notes`, which the command prints as comments.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tidings.errors import ConfigError

#: ReactOBus's field names → tidings.filters paths
FIELDS = {"topic": "topic", "uuid": "id", "datetime": "time", "username": "username", "data": "data"}


@dataclass
class Converted:
    config: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def load_yaml(text: str) -> dict[str, Any]:
    try:
        import yaml
    except ImportError:
        raise ConfigError("reading a ReactOBus file needs PyYAML: pip install 'tidings[reactobus]'") from None

    class NoAliases(yaml.SafeLoader):
        """ReactOBus files need no anchors; refusing aliases refuses 'billion laughs' files."""

        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                raise ConfigError("YAML aliases (*name) are not accepted in a ReactOBus configuration")
            return super().compose_node(parent, index)

    try:
        loaded = yaml.load(text, Loader=NoAliases)  # a SafeLoader underneath
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {exc}".splitlines()[0]) from None
    except RecursionError:
        raise ConfigError("the YAML is nested too deeply to be a ReactOBus configuration") from None
    if not isinstance(loaded, dict):
        raise ConfigError("a ReactOBus configuration is a YAML mapping (inputs, outputs, reactor, db)")
    return loaded


#: the top-level keys of a ReactOBus configuration (ReactOBus's README)
REACTOBUS_KEYS = ("inputs", "outputs", "reactor", "db", "core")


def convert(reactobus: dict[str, Any]) -> Converted:
    unknown = sorted(str(key) for key in reactobus if key not in REACTOBUS_KEYS)
    if unknown:  # a typo, or another program's file: an empty conversion would say nothing of it
        raise ConfigError(
            f"{', '.join(unknown)}: not a key of a ReactOBus configuration ({', '.join(REACTOBUS_KEYS)})"
        )
    converted = Converted({"transports": {}, "connectors": {}, "relays": {}})
    for n, item in enumerate(_list(reactobus, "inputs")):
        _input(converted, item, f"inputs[{n}]")
    for n, item in enumerate(_list(reactobus, "outputs")):
        _output(converted, item, f"outputs[{n}]")
    reactor = reactobus.get("reactor")
    if reactor is not None and not isinstance(reactor, dict):
        raise ConfigError("reactor: a mapping (rules, workers)")
    if reactor:
        _reactor(converted, reactor)
    if "db" in reactobus:
        converted.notes.append(
            "db: ReactOBus stored every message with SQLAlchemy; tidings keeps the outbox's history "
            "for [outbox] retention (see docs/relay.md)"
        )
    if "core" in reactobus:
        converted.notes.append("core: ReactOBus's internal sockets have no equivalent (nothing to set)")
    converted.config = {key: value for key, value in converted.config.items() if value}
    return converted


def matcher(field_name: str, patterns: Any, where: str) -> dict[str, Any]:
    """A ReactOBus field match as a tidings filter (``re.match`` is a search anchored at the start)."""
    path = _path(field_name, where)
    listed = patterns if isinstance(patterns, list) else [patterns]
    if not listed or not all(isinstance(pattern, str | int | float) for pattern in listed):
        raise ConfigError(f"{where}: patterns: a regular expression or a list of them")
    tests = [{"field": path, "regex": f"^(?:{pattern})"} for pattern in listed]
    return tests[0] if len(tests) == 1 else {"any": tests}


def argument(arg: str) -> str:
    """``$uuid`` → ``$id``, ``$data.job`` unchanged: ReactOBus arguments as reactor arguments."""
    if arg.startswith("$"):
        return "$" + _path(arg[1:], "exec.args")
    return arg


# -- the parts -------------------------------------------------------------------------------------


def _input(converted: Converted, item: Any, where: str) -> None:
    name, kind, options = _pipe(item, where)
    if kind != "ZMQSub":
        converted.notes.append(f"{where} {name}: {kind} has no tidings equivalent (only ZMQSub inputs)")
        return
    _no_encryption(converted, options, where, name)
    _unused(converted, name, where)
    converted.config["transports"][name] = {"kind": "zeromq", "endpoint": options["url"]}
    relay: dict[str, Any] = {"transport": name, "format": "lava", "bindings": ["#"]}
    filters = _filters(options, where)
    if filters:
        relay["filter"] = filters
    converted.config["relays"][name] = relay


def _output(converted: Converted, item: Any, where: str) -> None:
    name, kind, options = _pipe(item, where)
    if kind != "ZMQPub":
        converted.notes.append(f"{where} {name}: {kind} has no tidings equivalent (only ZMQPub outputs)")
        return
    _no_encryption(converted, options, where, name)
    _unused(converted, name, where)
    converted.config["transports"][name] = {"kind": "zeromq", "endpoint": options["url"]}
    converted.config["connectors"][name] = {"transport": name, "format": "lava"}
    if options.get("filters"):
        converted.notes.append(
            f"{where} {name}: output filters have no equivalent; a connector takes topic patterns "
            "(topics = [...]); filter in the relays instead"
        )
    if options.get("heartbeat"):
        converted.notes.append(f"{where} {name}: heartbeats are not sent")


def _reactor(converted: Converted, reactor: dict[str, Any]) -> None:
    rules: dict[str, Any] = {}
    listed = reactor.get("rules") or []
    if not isinstance(listed, list):
        raise ConfigError("reactor.rules: a list")
    for n, rule in enumerate(listed):
        where = f"reactor.rules[{n}]"
        if not (isinstance(rule, dict) and _text(rule.get("name")) and isinstance(rule.get("exec"), dict)):
            raise ConfigError(f"{where}: a rule has a name, a match and an exec (a mapping with a path)")
        if str(rule["name"]) in rules:
            raise ConfigError(f"{where}: the name {rule['name']!r} is used twice")
        match = rule.get("match") or {}
        if not isinstance(match, dict):
            raise ConfigError(f"{where}: match: a mapping (field, patterns)")
        patterns = match.get("patterns", match.get("pattern"))
        executing = rule["exec"]
        if not _text(executing.get("path")) or not isinstance(executing.get("args") or [], list):
            raise ConfigError(f"{where}: exec: a path, and args as a list")
        args = [str(arg) for arg in executing.get("args") or []]
        if any(arg.startswith("stdin:") for arg in args):
            converted.notes.append(
                f"{where} {rule['name']}: stdin: arguments dropped; "
                "the command reads the event as JSON on stdin"
            )
        rules[str(rule["name"])] = {
            "match": matcher(str(match.get("field", "topic")), patterns, where),
            "command": [str(executing["path"]), *(argument(a) for a in args if not a.startswith("stdin:"))],
            "timeout": float(executing.get("timeout", 60)),
        }
    if rules:
        # the rules' queues (retries, dead letters) live on the embedded broker, under a name
        # no input or output took
        local = "local" if "local" not in converted.config["transports"] else "reactor-local"
        converted.config["transports"][local] = {"kind": "embedded"}
        converted.config["connectors"].setdefault(local, {"transport": local})
        converted.config["reactor"] = {
            "transport": local,
            "workers": int(reactor.get("workers") or 4),
            "rules": rules,
        }


def _pipe(item: Any, where: str) -> tuple[str, str, dict[str, Any]]:
    if not isinstance(item, dict) or not _text(item.get("class")) or not _text(item.get("name")):
        raise ConfigError(f"{where}: an input or output has a class, a name and options")
    options = item.get("options") or {}
    if not isinstance(options, dict):
        raise ConfigError(f"{where} {item['name']}: options: a mapping (url, filters ...)")
    if not _text(options.get("url")):
        raise ConfigError(f"{where} {item['name']}: options.url is missing")
    return str(item["name"]), str(item["class"]), options


def _filters(options: dict[str, Any], where: str) -> list[dict[str, Any]]:
    return [
        matcher(str(f.get("field")), f.get("patterns", f.get("pattern")), f"{where}.filters[{n}]")
        for n, f in enumerate(options.get("filters") or [])
    ]


def _no_encryption(converted: Converted, options: dict[str, Any], where: str, name: str) -> None:
    if options.get("encryption"):
        converted.notes.append(
            f"{where} {name}: CURVE encryption is not supported by tidings' ZeroMQ transport"
        )


def _path(name: str, where: str) -> str:
    head, dot, rest = name.partition(".")
    if head not in FIELDS or (dot and head != "data"):
        raise ConfigError(
            f"{where}: unknown ReactOBus field {name!r} (topic, uuid, datetime, username, data.KEY)"
        )
    return FIELDS[head] + (f".{rest}" if dot else "")


def _text(value: Any) -> bool:
    """Whether a name or path is given: text, not empty (YAML's null is no name)."""
    return isinstance(value, str) and bool(value)


def _unused(converted: Converted, name: str, where: str) -> None:
    if name in converted.config["transports"]:
        raise ConfigError(f"{where}: the name {name!r} is used twice (inputs and outputs share names)")


def _list(reactobus: dict[str, Any], key: str) -> list[Any]:
    value = reactobus.get(key) or []
    if not isinstance(value, list):
        raise ConfigError(f"{key}: a list")
    return value
