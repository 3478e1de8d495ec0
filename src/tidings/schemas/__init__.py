"""JSON Schema registry: one document per event type and version, compiled once.

Schemas come from three places, later ones overriding earlier ones:

1. the packs shipped with tidings (``tidings/schemas/packs/<system>/<type>.json``);
2. the ``tidings.schemas`` entry-point group: each entry point is a callable
   returning a :class:`SchemaPack`, ``{type: schema}`` or a directory path;
3. directories named in the config (``[schemas] dirs``).

The file stem is the type name (``kcidb.checkout.v1.json`` → ``kcidb.checkout.v1``).

**The ``format`` rule.** JSON Schema 2019-09 and later make ``format`` an annotation
unless a validator is told to assert it. tidings asserts it (``date-time``, ``uri``,
``email`` ... are checked) for its own packs, for the CKI pack (kcidb-io checks
formats, and an object KCIDB refuses must be refused before it is queued) and, by
default, for a user's own schemas (``[schemas] assert_formats = false`` turns that
off). The one exception is fedora-messaging's message schemas: fedora-messaging
validates with ``jsonschema.validate`` and no format checker, so tidings validates
them the same way, formats unchecked — a message fedora-messaging accepts is
accepted here too. A pack says which rule it follows (:class:`SchemaPack`).

Schemas can be *lazy*: a pack names its types up front and loads a document only
when an event of that type is first checked, so a bus that never sees a Bodhi
message never imports Bodhi's message classes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import jsonschema_rs
import orjson

from tidings.errors import ConfigError, InvalidSchema, SchemaError, UnknownSchema

PACKS = Path(__file__).parent / "packs"

#: a schema document, or a callable that loads it when first needed
SchemaSource = dict[str, Any] | Callable[[], dict[str, Any]]
#: format name → check of a string (True: valid); built when a validator is first compiled
FormatChecks = Callable[[], Mapping[str, Callable[[str], bool]]]


@dataclass(slots=True)
class SchemaPack:
    """What a ``tidings.schemas`` entry point may return: schemas and the rule they follow.

    ``assert_formats``: True or False pins the rule for these schemas; None follows the
    configuration (``[schemas] assert_formats``), as a user's own schemas do.
    """

    schemas: Mapping[str, SchemaSource]
    assert_formats: bool | None = None
    origin: str = ""
    #: where one type comes from, when it differs by type (``schemas list`` shows it)
    origins: Mapping[str, str] = field(default_factory=dict)
    #: checks that replace jsonschema-rs's own for some formats (CKI: exactly kcidb-io's)
    formats: FormatChecks | None = None


@dataclass(slots=True)
class _Entry:
    source: SchemaSource
    origin: str
    assert_formats: bool
    formats: FormatChecks | None = None
    document: dict[str, Any] | None = None
    validator: Any = field(default=None, repr=False)


class SchemaRegistry:
    """Maps event types to JSON Schema documents and their compiled validators."""

    def __init__(
        self, schemas: Mapping[str, dict[str, Any]] | None = None, *, assert_formats: bool = True
    ) -> None:
        #: the rule for schemas whose pack does not pin one (a user's own)
        self.assert_formats = assert_formats
        self._entries: dict[str, _Entry] = {}
        for type_, schema in (schemas or {}).items():
            self.add(type_, schema, origin="code")

    @classmethod
    def default(cls, dirs: Iterable[str | Path] = (), *, assert_formats: bool = True) -> SchemaRegistry:
        """Built-in packs, then entry points, then the given directories."""
        registry = cls(assert_formats=assert_formats)
        registry.add_directory(PACKS, origin="built-in", assert_formats=True)
        for ep in entry_points(group="tidings.schemas"):
            try:
                provided = ep.load()
            except Exception as exc:  # a broken plug-in: name it, do not crash the bus with its traceback
                raise ConfigError(
                    f"schema entry point {ep.name!r} ({ep.value}) cannot be loaded: {exc}"
                ) from None
            registry.add_entry_point(ep.name, provided)
        for directory in dirs:
            path = Path(directory)
            if not path.is_dir():
                raise ConfigError(f"schema directory {str(path)!r} does not exist")
            registry.add_directory(path, origin=str(path))
        return registry

    def add(
        self,
        type_: str,
        schema: SchemaSource,
        *,
        origin: str = "code",
        assert_formats: bool | None = None,
        formats: FormatChecks | None = None,
    ) -> None:
        """Register ``schema`` (a document, or a callable loading one on first use) for ``type_``."""
        if not isinstance(schema, dict) and not callable(schema):
            raise ConfigError(f"schema for {type_!r} ({origin}) is not a JSON object")
        rule = self.assert_formats if assert_formats is None else assert_formats
        self._entries[type_] = _Entry(schema, origin, rule, formats)

    def add_directory(self, directory: Path, *, origin: str, assert_formats: bool | None = None) -> None:
        for path in sorted(directory.rglob("*.json")):
            try:
                schema = orjson.loads(path.read_bytes())
            except orjson.JSONDecodeError as exc:
                raise ConfigError(f"schema file {path.name} is not valid JSON: {exc}") from None
            self.add(path.stem, schema, origin=origin, assert_formats=assert_formats)

    def add_entry_point(self, name: str, provided: Any) -> None:
        found = provided() if callable(provided) else provided
        origin = f"entry point {name}"
        if isinstance(found, str | Path):
            self.add_directory(Path(found), origin=origin)
        elif isinstance(found, SchemaPack):
            for type_, schema in found.schemas.items():
                where = found.origins.get(type_) or found.origin or origin
                self.add(
                    type_, schema, origin=where, assert_formats=found.assert_formats, formats=found.formats
                )
        elif isinstance(found, Mapping):
            for type_, schema in found.items():
                self.add(type_, schema, origin=origin)
        else:
            raise ConfigError(f"schema entry point {name!r} gave neither a directory nor a mapping")

    # -- lookup ---------------------------------------------------------------------

    def __contains__(self, type_: object) -> bool:
        return type_ in self._entries

    def types(self) -> list[str]:
        return sorted(self._entries)

    def _entry(self, type_: str) -> _Entry:
        try:
            return self._entries[type_]
        except KeyError:
            raise UnknownSchema(_unknown_message(type_, self._entries), type_=type_) from None

    def schema(self, type_: str) -> dict[str, Any]:
        entry = self._entry(type_)
        if entry.document is None:
            source = entry.source
            try:
                document = source if isinstance(source, dict) else source()
            except Exception as exc:  # a lazy pack whose package cannot load its schema
                raise SchemaError(
                    f"schema {type_!r} ({entry.origin}) cannot be loaded: {type(exc).__name__}: {exc}",
                    type_=type_,
                ) from None
            if not isinstance(document, dict):
                raise SchemaError(f"schema {type_!r} ({entry.origin}) is not a JSON object", type_=type_)
            entry.document = document
        return entry.document

    def origin(self, type_: str) -> str:
        entry = self._entries.get(type_)
        return entry.origin if entry is not None else "?"

    def asserts_formats(self, type_: str) -> bool:
        return self._entry(type_).assert_formats

    def validator(self, type_: str) -> Any:
        """The compiled validator of a type; compiled on first use, then cached."""
        entry = self._entry(type_)
        if entry.validator is None:
            schema = self.schema(type_)
            checks = {name: _never_raising(check) for name, check in (entry.formats or dict)().items()}
            try:
                # validate_formats is given explicitly: jsonschema-rs's own default depends on
                # the draft (on for draft 4 to 7, off from 2019-09), tidings' rule does not
                entry.validator = jsonschema_rs.validator_for(
                    schema, validate_formats=entry.assert_formats, formats=checks or None
                )
            except (ValueError, jsonschema_rs.ValidationError) as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise InvalidSchema(
                    f"schema {type_!r} ({entry.origin}) is itself invalid: {first}", type_=type_
                ) from None
        return entry.validator

    def check_all(self) -> None:
        """Compile every schema now (``config check``, ``doctor``): one that cannot be compiled is
        an :class:`InvalidSchema`, before any event of its type is published or consumed."""
        for type_ in self.types():
            self.validator(type_)

    def validate(self, type_: str, body: Any) -> None:
        """Raise :class:`SchemaError` naming the first failing field, or return."""
        validator = self.validator(type_)
        if validator.is_valid(body):  # the fast path: no error objects built
            return
        error = next(iter(validator.iter_errors(body)))
        path = "/".join(str(part) for part in error.instance_path) or "(body)"
        raise SchemaError(f"{type_}: {path}: {error.message}", type_=type_, path=path)


def _never_raising(check: Callable[[str], bool]) -> Callable[[str], bool]:
    """A format check that answers False where it would raise (jsonschema-rs passes exceptions on)."""

    def safe(value: str) -> bool:
        try:
            return bool(check(value))
        except Exception:
            return False

    return safe


def _unknown_message(type_: str, known: Mapping[str, Any]) -> str:
    close = [name for name in known if name.rsplit(".", 1)[0] == type_.rsplit(".", 1)[0]]
    hint = f" (did you mean {', '.join(sorted(close))}?)" if close else ""
    return f"unknown event type {type_!r}: no schema is registered for it{hint}"
