"""The CKI DataWarehouse message schema, with kcidb-io's KCIDB v5.3 object schemas inside.

Checked exactly as kcidb-io checks (``jsonschema.Draft7Validator`` with its format checker):
formats are asserted with kcidb-io's own checks (:func:`kcidb_formats`), and patterns are
read as Python's ``re`` reads them. The ``tidings.schemas`` entry point ``cki`` is
:func:`schemas`; without kcidb-io, the built-in loose schema
(``tidings/schemas/packs/cki/``) stays in force.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable
from typing import Any

from tidings.formats.cki.format import CHECKOUT_ONLY, OBJECT_TYPES, STATUSES, TYPE
from tidings.schemas import SchemaPack


def schemas() -> SchemaPack:
    """The ``tidings.schemas`` entry point: the message schema with kcidb-io's v5.3 object schemas.

    Checked exactly as kcidb-io checks (``Draft7Validator`` with its format checker): formats are
    asserted with kcidb-io's own checks (:func:`kcidb_formats`), and patterns end as Python's do.
    Without kcidb-io (``tidings[cki]``) the built-in loose schema stays in force.
    """
    if importlib.util.find_spec("kcidb_io") is None:
        return SchemaPack({})
    return SchemaPack(
        {TYPE: _full_schema}, assert_formats=True, origin="kcidb-io (KCIDB v5.3)", formats=kcidb_formats
    )


def _full_schema() -> dict[str, Any]:
    from kcidb_io.schema import V5_3

    kcidb = _portable_patterns(V5_3.json)
    per_type = [
        {
            "if": {"properties": {"object_type": {"const": kind}}},
            "then": {"properties": {"object": {"$ref": f"#/$defs/{kind}"}}},
        }
        for kind in OBJECT_TYPES
        if kind in kcidb["$defs"]
    ]
    checkout_only = {
        "if": {"properties": {"status": {"enum": list(CHECKOUT_ONLY)}}},
        "then": {"properties": {"object_type": {"const": "checkout"}}},
    }
    return {
        **message_schema(),
        "allOf": [*per_type, checkout_only],
        "$defs": kcidb["$defs"],
        "description": "A DataWarehouse message; the object is checked with KCIDB schema v5.3 (kcidb-io).",
    }


def _portable_patterns(node: Any) -> Any:
    """KCIDB's patterns as Python's ``re`` (which kcidb-io uses) reads them, for jsonschema-rs.

    KCIDB writes NUL as ``\\0``, which ECMA-262 engines want as ``\\x00``; and Python's ``$``
    also matches before one trailing newline, which Rust's does not: every ``$`` in these
    patterns is an end anchor, so it becomes ``\\n?$``.
    """
    if isinstance(node, dict):
        return {
            k: _python_pattern(v) if k == "pattern" and isinstance(v, str) else _portable_patterns(v)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_portable_patterns(item) for item in node]
    return node


def _python_pattern(pattern: str) -> str:
    return pattern.replace("\\0", "\\x00").replace("$", "\\n?$")


#: a plain absolute URL that rfc3987 always accepts (a strict subset of RFC 3986): checked here
#: in a fraction of rfc3987's time, anything else goes to rfc3987 itself
_PCHAR = r"[A-Za-z0-9._~!$&'()*+,;=:@-]"
_PLAIN_URL = re.compile(
    r"[A-Za-z][A-Za-z0-9+.-]*://[A-Za-z0-9._~!$&'()*+,;=-]*(?::[0-9]*)?"
    rf"(?:/{_PCHAR}*)*(?:\?(?:{_PCHAR}|[/?])*)?(?:#(?:{_PCHAR}|[/?])*)?"
)


def kcidb_formats() -> dict[str, Callable[[str], bool]]:
    """The ``format`` checks of KCIDB's schema, exactly kcidb-io's.

    kcidb-io validates with ``jsonschema.Draft7Validator.FORMAT_CHECKER`` (date-time through
    rfc3339-validator, uri through rfc3987, email as "contains @"); jsonschema-rs's own checks
    differ at the edges (leap seconds, year 0000, a trailing newline, Message-IDs in ``<...>``),
    so the same checker decides here.
    """
    from jsonschema import Draft7Validator

    checker = Draft7Validator.FORMAT_CHECKER

    def date_time(value: str) -> bool:
        return checker.conforms(value, "date-time")

    def uri(value: str) -> bool:
        return _PLAIN_URL.fullmatch(value) is not None or checker.conforms(value, "uri")

    def email(value: str) -> bool:
        return checker.conforms(value, "email")

    return {"date-time": date_time, "uri": uri, "email": email}


def message_schema() -> dict[str, Any]:
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"urn:tidings:schema:{TYPE}",
        "title": "CKI DataWarehouse message",
        "type": "object",
        "required": ["timestamp", "status", "object_type", "object"],
        "properties": {
            "timestamp": {"type": "string"},
            "status": {"enum": list(STATUSES)},
            "object_type": {"enum": list(OBJECT_TYPES)},
            "object": {"type": "object", "required": ["id"]},
        },
    }
