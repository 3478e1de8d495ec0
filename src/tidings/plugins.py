"""The one shape of a plug-in (a transport or a format), and how plug-ins are found.

A plug-in is described by a :class:`Plugin`: its name, the ``module:attribute`` of the
class that does the work (imported only when one is made), the struct its options are
checked with (``Settings``, read when the configuration is loaded, without importing the
broker library), and the pip extra that installs what it needs. The descriptor lives in a
module that imports nothing heavy — the package's ``__init__`` — so a config naming a
transport whose library is missing still loads, and ``tidings doctor`` can say which
extra to install.

Plug-ins are found by name: the built-in ones listed once in :mod:`tidings.transport` and
:mod:`tidings.format`, then the entry-point groups ``tidings.transports`` and
``tidings.formats``. An entry point may name a :class:`Plugin` or, more simply, a class
(its constructor then gets the options unchecked).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import import_module
from importlib.metadata import entry_points
from pathlib import Path
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from tidings.errors import ConfigError


class Settings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Base of a plug-in's options: unknown keys are refused, every value is checked."""


#: a plug-in's timeout or interval: above 0 and at most a day (inf and nan are refused at load,
#: rather than overflowing a client library's milliseconds later)
Timeout = Annotated[float, Meta(gt=0, le=86_400)]


@dataclass(frozen=True, slots=True)
class Plugin:
    #: the name a config uses (``kind = "amqp"``, ``format = "cki"``)
    name: str
    #: ``module:attribute`` of the class; imported when one is made, never before
    factory: str
    #: its options; None: passed to the class unchecked
    settings: type[Settings] | None = None
    #: ``pip install 'tidings[EXTRA]'`` installs what it needs ("" : nothing beyond tidings)
    extra: str = ""
    #: top-level modules it imports, checked without importing them (``missing()``)
    requires: tuple[str, ...] = ()
    #: options that name a file: a relative one is taken from the config file's folder
    paths: tuple[str, ...] = ()

    def parse(self, options: Mapping[str, Any], where: str) -> dict[str, Any]:
        """The options, checked against ``settings``: a one-line ConfigError naming the key if wrong."""
        if self.settings is None:
            return dict(options)
        try:
            parsed = msgspec.convert(dict(options), self.settings, strict=True)
        except msgspec.ValidationError as exc:
            said = explain(exc)
            if said.startswith("unknown key"):
                known = [f.encode_name for f in msgspec.structs.fields(self.settings)]
                said += f" (known: {', '.join(known) or 'none'})"
            raise ConfigError(f"{where}: {said}") from None
        return msgspec.structs.asdict(parsed)

    def missing(self) -> list[str]:
        """The required modules that are not installed."""
        return [name for name in self.requires if importlib.util.find_spec(name) is None]

    def load(self, what: str) -> Any:
        """The class, imported now; a missing package is a one-line ConfigError naming the extra."""
        module_name, _, attr = self.factory.partition(":")
        # checked first: some of them are imported only when first used (the STOMP transport's AMQP side)
        absent = self.missing()
        try:
            if absent:
                raise ImportError(name=absent[0])
            return getattr(import_module(module_name), attr)
        except ImportError as exc:
            install = f"pip install 'tidings[{self.extra}]'" if self.extra else "reinstall tidings"
            raise ConfigError(
                f"{what} {self.name!r} needs a package that is not installed ({exc.name}): {install}"
            ) from None

    def build(self, what: str, options: Mapping[str, Any], where: str) -> Any:
        cls = self.load(what)
        try:
            return cls(**self.parse(options, where))
        except TypeError as exc:  # a class without settings: its own signature decides
            given = ", ".join(sorted(options)) or "none"
            detail = "" if "takes no arguments" in str(exc) else f" ({exc})"  # (no class names for none)
            raise ConfigError(
                f"{where}: {what} {self.name!r} does not take the option(s) {given}{detail}"
            ) from None
        except ConfigError as exc:  # what only the class itself can check (a library's own settings)
            raise ConfigError(str(exc) if str(exc).startswith(where) else f"{where}: {exc}") from None


def explain(exc: msgspec.ValidationError, table: str = "") -> str:
    """msgspec's "Expected `int` >= 1 - at `$.a.b`" as "a.b: expected int >= 1"."""
    message, _, where = str(exc).partition(" - at `")
    if message.startswith("Object contains unknown field `"):
        message = "unknown key '" + message.removeprefix("Object contains unknown field `").rstrip("`") + "'"
    message = message.replace("`", "")
    path = where.rstrip("`").removeprefix("$").lstrip(".")
    key = ".".join(part for part in (table, path) if part)
    if message.startswith("unknown key"):
        return f"{message}" + (f" in [{key}]" if key else "")
    message = message[0].lower() + message[1:]
    return f"{key}: {message}" if key else message


class Registry:
    """The plug-ins of one kind: the built-in ones, then those of an entry-point group."""

    def __init__(
        self, group: str, builtin: Mapping[str, str], what: str, unknown: type[ConfigError] = ConfigError
    ) -> None:
        #: name → ``module:attribute`` of a Plugin (or of a bare class, for entry points)
        self.group, self.builtin, self.what, self.unknown = group, dict(builtin), what, unknown

    def names(self) -> dict[str, str]:
        found = dict(self.builtin)
        for ep in entry_points(group=self.group):
            found[ep.name] = ep.value
        return found

    def find(self, name: str) -> Plugin:
        """The plug-in registered as ``name`` (a bare class is described as a plug-in without settings)."""
        found = self.attribute(name)
        return found if isinstance(found, Plugin) else Plugin(name, self.names()[name])

    def attribute(self, name: str) -> Any:
        """What is registered as ``name``, imported (a Plugin, a class, a function)."""
        target = self.names().get(name)
        if target is None:
            known = ", ".join(sorted(self.names()))
            raise self.unknown(f"unknown {self.what} {name!r} (known: {known})")
        module_name, _, attr = target.partition(":")
        try:
            return getattr(import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"{self.what} {name!r} cannot be loaded from {target}: {exc}") from None


def import_object(target: str, what: str = "", *, beside: str | None = None) -> Any:
    """``module:attribute``, imported; every way that can fail is a ConfigError naming the module.

    The current folder's modules are importable, as with ``python -m``: a service's own code
    (``myservice:app``) is found where the command runs — and, named in a config file (its
    folder given as ``beside``), beside that file too, wherever the command runs.
    """
    import sys

    module_name, sep, attr = target.partition(":")
    label = f"{what} " if what else ""
    if not sep or not module_name or not attr.isidentifier():
        raise ConfigError(f"{label}{target!r} is not MODULE:ATTRIBUTE")
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")
    if beside is not None and str(Path(beside).resolve()) not in sys.path:
        sys.path.insert(1, str(Path(beside).resolve()))  # after the current folder
    try:
        module = import_module(module_name)
    except SyntaxError as exc:
        place = f"{exc.filename}:{exc.lineno}" if exc.filename else module_name
        raise ConfigError(
            f"{label}cannot import {module_name!r}: SyntaxError in {place}: {exc.msg}"
        ) from None
    except Exception as exc:  # the module raised while it was imported: its author's error, said as such
        raise ConfigError(f"{label}cannot import {module_name!r}: {type(exc).__name__}: {exc}") from None
    except SystemExit as exc:  # (it would end the command with no word of why)
        raise ConfigError(f"{label}cannot import {module_name!r}: it called sys.exit({exc.code!r})") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ConfigError(f"{label}module {module_name!r} has no attribute {attr!r}") from None
