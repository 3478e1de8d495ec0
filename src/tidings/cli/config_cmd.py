"""`tidings config show|check`: which config is in force, and whether it is sound."""

from __future__ import annotations

import re
from typing import Any

import msgspec
import orjson
import tomli_w
import typer

from tidings.bus import Bus
from tidings.cli import app, err
from tidings.cli.commands import ConfigOpt, JsonOpt, check_plugins, load_bus, out
from tidings.config import Config
from tidings.errors import ConfigError
from tidings.redact import MASK, mask_url, redact
from tidings.transport import transport_plugin

config_app = typer.Typer(help="Show the configuration in force and check it.", no_args_is_help=True)
app.add_typer(config_app, name="config")

#: option names whose values are secrets wherever they appear
_SECRET_KEY = re.compile(r"pass(word|code|wd)?$|secret|token|api_?key|key_password", re.IGNORECASE)


@config_app.command("show")
def config_show(config: ConfigOpt = None, json_: JsonOpt = False) -> None:
    """Print the effective configuration (defaults filled in), where it came from, secrets masked.

    \b
    Examples:
      tidings config show
      tidings config show --json
    """
    bus = load_bus(config)
    shown = masked(effective(bus.config))
    if json_:
        print(orjson.dumps({"source": bus.config.origin, "config": shown}).decode())
        return
    print(f"# source: {bus.config.origin}")
    print(f"# relative paths are resolved in {bus.config.base_dir}")
    print(tomli_w.dumps(shown), end="")


@config_app.command("check")
def config_check(config: ConfigOpt = None) -> None:
    """Check the configuration without connecting anywhere: keys, values, patterns, and that
    every transport's and format's plug-in is installed (exit 3 if not).

    \b
    Examples:
      tidings config check
      tidings config check -c prod.toml
    """
    bus = load_bus(config)
    check_plugins(bus)
    bus.schemas.check_all()
    out.print(f"config: ok — {summary(bus)}", highlight=False)
    err.print(f"source: {bus.config.origin}", highlight=False)
    if not bus.config.connectors:
        err.print(NO_CONNECTORS, highlight=False)


NO_CONNECTORS = (
    "note: no [connectors.NAME]: published events stay in the outbox and reach no broker "
    "(with no [transports] either, the embedded default has one)"
)


def summary(bus: Bus) -> str:
    config = bus.config
    return (
        f"{len(config.transports)} transport(s), {len(config.connectors)} connector(s), "
        f"{len(config.consumers)} consumer(s), {len(bus.schemas.types())} schema(s)"
    )


def effective(config: Config) -> dict[str, Any]:
    raw: dict[str, Any] = msgspec.to_builtins(config)
    for computed in ("base_dir", "origin", "expanded"):
        raw.pop(computed, None)
    for section, name in config.expanded:  # [bridges.NAME] stands for them, and is shown
        raw[section].pop(name, None)
    for name, table in raw.get("transports", {}).items():
        raw["transports"][name] = _with_defaults(name, table)
    return {key: value for key, value in _without_none(raw).items() if value not in ({}, [])}


def _with_defaults(name: str, table: dict[str, Any]) -> dict[str, Any]:
    """A transport's table with the options its plug-in fills in (as it is shown, unchanged when
    the plug-in cannot say: not installed, or a plug-in without settings)."""
    options = {key: value for key, value in table.items() if key != "kind"}
    try:
        plugin = transport_plugin(str(table.get("kind")))
        if plugin.settings is None:
            return table
        parsed = plugin.parse(options, f"[transports.{name}]")
    except ConfigError:
        return table
    return {"kind": table.get("kind"), **msgspec.to_builtins(parsed)}


def _without_none(value: Any) -> Any:
    """``value`` without its unset options at any depth: TOML has no null (a connector's filter)."""
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_none(v) for v in value]
    return value


def masked(value: Any, key: str = "") -> Any:
    """``value`` with every secret option replaced by ``***`` and passwords in URLs masked."""
    if isinstance(value, dict):
        return {k: masked(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [masked(v, key) for v in value]
    if isinstance(value, str):
        if _SECRET_KEY.search(key) and value:
            return MASK
        # an option that holds one URL: its password is all between ':' and '@', spaces and quotes too
        return mask_url(value) if key == "url" or key.endswith("_url") else redact(value)
    return value
