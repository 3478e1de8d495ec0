"""What a test expects of an event, and why an event is not it, in one line.

Three kinds of expectation, the same everywhere in :mod:`tidings.testing`:

* a topic pattern (``"bodhi.update.comment"``, ``"datawarehouse.checkout.*"``);
* ``(pattern, body_subset)``: the topic matches and the body contains the subset;
* a callable taking the :class:`~tidings.event.Event`: it matches when it returns a true
  value; an ``assert`` inside it that fails says why not.

A body contains a subset as Jest's ``toMatchObject`` reads it: an object contains the keys
given (recursively; other keys may be there), a list has exactly as many items, each containing
the item given, and anything else is equal (``True`` is not ``1``). ``unittest.mock.ANY``
matches any value.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any
from unittest.mock import ANY

from tidings.event import Event, dumps, loads
from tidings.topics import topic_matches, validate_pattern

#: what mock_sends and the others accept as one expected event
Expected = str | tuple[str, Mapping[str, Any]] | Callable[[Event], object]
#: an expectation checked up front: (how it reads, why an event is not it or None)
Check = tuple[str, Callable[[Event], str | None]]

#: characters of a body shown in a message before it is cut
SHOWN = 160


def body_difference(expected: Any, actual: Any, path: str = "body") -> str | None:
    """None when ``actual`` contains ``expected`` (see the module's docstring); else the first
    place they differ, as ``body['a'][0]: expected 1, got 2``."""
    if isinstance(expected, Mapping):
        return _object_difference(expected, actual, path)
    if isinstance(expected, list | tuple):
        return _list_difference(expected, actual, path)
    if _same(expected, actual):
        return None
    return f"{path}: expected {_short(expected)}, got {_short(actual)}"


def _object_difference(expected: Mapping[str, Any], actual: Any, path: str) -> str | None:
    if not isinstance(actual, Mapping):
        return f"{path}: expected an object, got {_short(actual)}"
    for key, value in expected.items():
        if key not in actual:
            keys = ", ".join(repr(k) for k in actual) or "none"
            return f"{path}: no key {key!r} (its keys: {keys})"
        found = body_difference(value, actual[key], f"{path}[{key!r}]")
        if found is not None:
            return found
    return None


def _list_difference(expected: list[Any] | tuple[Any, ...], actual: Any, path: str) -> str | None:
    if not isinstance(actual, list):
        return f"{path}: expected a list, got {_short(actual)}"
    if len(expected) != len(actual):
        return f"{path}: expected {len(expected)} item(s), got {len(actual)}: {_short(actual)}"
    for n, (want, got) in enumerate(zip(expected, actual, strict=True)):
        found = body_difference(want, got, f"{path}[{n}]")
        if found is not None:
            return found
    return None


def _same(expected: Any, actual: Any) -> bool:
    if expected is ANY:
        return True
    if not isinstance(expected, str | int | float | bool | None):
        # a datetime, a UUID, an Enum: compared as the stored body has it, written as JSON
        try:
            expected = loads(dumps(expected))
        except Exception:  # no JSON for it: compared as it is
            pass
    # JSON's true is not 1, though Python's True == 1
    return isinstance(expected, bool) == isinstance(actual, bool) and bool(expected == actual)


def check(item: Expected, who: str = "expected") -> Check:
    """``item`` read once: a clear TypeError now rather than a confusing mismatch later."""
    if isinstance(item, str):
        validate_pattern(item)
        return repr(item), lambda event: _topic_difference(item, event)
    if isinstance(item, tuple):
        if len(item) != 2 or not isinstance(item[0], str) or not isinstance(item[1], Mapping):
            raise TypeError(f"{who}: a tuple must be (topic pattern, body subset dict), not {item!r}")
        pattern, subset = item
        validate_pattern(pattern)
        shown = f"({pattern!r}, {_short(dict(subset))})"
        return shown, lambda event: _topic_difference(pattern, event) or body_difference(subset, event.body)
    if isinstance(item, type):  # fedora-messaging's mock_sends takes message classes; a class here
        # would be called with the event and match anything
        raise TypeError(
            f"{who}: a class is not an expectation (say e.g. lambda e: e.type == 'bodhi.update.comment.v1')"
        )
    if callable(item):
        return _name_of(item), lambda event: _predicate_difference(item, event)
    raise TypeError(
        f"{who}: expected a topic pattern, a (pattern, body subset) tuple or a callable, not {item!r}"
    )


def _topic_difference(pattern: str, event: Event) -> str | None:
    if topic_matches(pattern, event.topic):
        return None
    return f"topic {event.topic!r} does not match {pattern!r}"


def _predicate_difference(predicate: Callable[[Event], object], event: Event) -> str | None:
    try:
        matched = predicate(event)
    except AssertionError as exc:  # a predicate may assert, and its message says why
        return f"{_name_of(predicate)} failed: {exc}".rstrip(": ")
    return None if matched else f"{_name_of(predicate)} returned {matched!r}"


def _name_of(predicate: Callable[..., object]) -> str:
    name = getattr(predicate, "__qualname__", None) or repr(predicate)
    return f"{name}()"


def describe(event: Event) -> str:
    """An event in one line: topic, type when it has one, and the start of its body."""
    typed = f" type={event.type}" if event.type else ""
    return f"{event.topic}{typed} {_short(event.body)}"


def _short(value: Any) -> str:
    try:
        text = dumps(value, default=repr).decode()
    except Exception:  # anything a test compares with, JSON or not
        text = repr(value)
    return text if len(text) <= SHOWN else text[: SHOWN - 3] + "..."
