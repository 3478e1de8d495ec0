"""JSON Schema registry: one document per event type and version, compiled once.

Schemas come from three places, later ones overriding earlier ones:

1. the packs shipped with tidings (``tidings/schemas/packs/<system>/<type>.json``);
2. the ``tidings.schemas`` entry-point group: each entry point is a callable
   returning ``{type: schema}`` or a directory path (a package of schemas);
3. directories named in the config (``[schemas] dirs``).

The file stem is the type name (``kcidb.checkout.v1.json`` → ``kcidb.checkout.v1``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import jsonschema_rs
import orjson

from tidings.errors import ConfigError, SchemaError, UnknownSchema

PACKS = Path(__file__).parent / "packs"


class SchemaRegistry:
    """Maps event types to JSON Schema documents and their compiled validators."""

    def __init__(self, schemas: Mapping[str, dict[str, Any]] | None = None) -> None:
        self._schemas: dict[str, dict[str, Any]] = {}
        self._origin: dict[str, str] = {}
        self._validators: dict[str, Any] = {}
        for type_, schema in (schemas or {}).items():
            self.add(type_, schema, origin="code")

    @classmethod
    def default(cls, dirs: Iterable[str | Path] = ()) -> SchemaRegistry:
        """Built-in packs, then entry points, then the given directories."""
        registry = cls()
        registry.add_directory(PACKS, origin="built-in")
        for ep in entry_points(group="tidings.schemas"):
            registry.add_entry_point(ep.name, ep.load())
        for directory in dirs:
            path = Path(directory)
            if not path.is_dir():
                raise ConfigError(f"schema directory {str(path)!r} does not exist")
            registry.add_directory(path, origin=str(path))
        return registry

    def add(self, type_: str, schema: dict[str, Any], *, origin: str = "code") -> None:
        if not isinstance(schema, dict):
            raise ConfigError(f"schema for {type_!r} ({origin}) is not a JSON object")
        self._schemas[type_] = schema
        self._origin[type_] = origin
        self._validators.pop(type_, None)

    def add_directory(self, directory: Path, *, origin: str) -> None:
        for path in sorted(directory.rglob("*.json")):
            try:
                schema = orjson.loads(path.read_bytes())
            except orjson.JSONDecodeError as exc:
                raise ConfigError(f"schema file {path.name} is not valid JSON: {exc}") from None
            self.add(path.stem, schema, origin=origin)

    def add_entry_point(self, name: str, provided: Any) -> None:
        found = provided() if callable(provided) else provided
        if isinstance(found, str | Path):
            self.add_directory(Path(found), origin=f"entry point {name}")
        elif isinstance(found, Mapping):
            for type_, schema in found.items():
                self.add(type_, schema, origin=f"entry point {name}")
        else:
            raise ConfigError(f"schema entry point {name!r} gave neither a directory nor a mapping")

    # -- lookup ---------------------------------------------------------------------

    def __contains__(self, type_: object) -> bool:
        return type_ in self._schemas

    def types(self) -> list[str]:
        return sorted(self._schemas)

    def schema(self, type_: str) -> dict[str, Any]:
        try:
            return self._schemas[type_]
        except KeyError:
            raise UnknownSchema(_unknown_message(type_, self._schemas), type_=type_) from None

    def origin(self, type_: str) -> str:
        return self._origin.get(type_, "?")

    def validator(self, type_: str) -> Any:
        """The compiled validator of a type; compiled on first use, then cached."""
        validator = self._validators.get(type_)
        if validator is None:
            try:
                validator = jsonschema_rs.validator_for(self.schema(type_))
            except (ValueError, jsonschema_rs.ValidationError) as exc:
                raise SchemaError(f"schema {type_!r} is itself invalid: {exc}", type_=type_) from None
            self._validators[type_] = validator
        return validator

    def validate(self, type_: str, body: Any) -> None:
        """Raise :class:`SchemaError` naming the first failing field, or return."""
        validator = self.validator(type_)
        if validator.is_valid(body):  # the fast path: no error objects built
            return
        error = next(iter(validator.iter_errors(body)))
        path = "/".join(str(part) for part in error.instance_path) or "(body)"
        raise SchemaError(f"{type_}: {path}: {error.message}", type_=type_, path=path)


def _unknown_message(type_: str, known: Mapping[str, Any]) -> str:
    close = [name for name in known if name.rsplit(".", 1)[0] == type_.rsplit(".", 1)[0]]
    hint = f" (did you mean {', '.join(sorted(close))}?)" if close else ""
    return f"unknown event type {type_!r}: no schema is registered for it{hint}"
