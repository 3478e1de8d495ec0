"""The filter language of relays and reactor rules: which events pass.

A filter is written in TOML as a table with one test, or a combination of them::

    filter = { all = [
        { topic = "org.lava.*.testjob" },                     # an AMQP pattern
        { field = "data.status", equals = "Complete" },
        { field = "data.device_type", in = ["x15", "bbb"] },
        { not = { field = "username", regex = "^ci-" } },
    ] }

Tests:

- ``topic = PATTERN`` (AMQP: ``*`` one word, ``#`` any) or ``topic_regex = REGEX``;
- ``field = PATH`` with one of ``equals``, ``not_equals``, ``in``, ``not_in``, ``regex``
  (``re.search``; a value that is not text is matched as its JSON), ``gt``/``ge``/``lt``/``le``
  (numbers only: anything else does not match), ``exists = true|false``;
- ``all = [...]``, ``any = [...]``, ``not = {...}``; a list alone means ``all``.

A PATH is ``topic``, ``id``, ``source``, ``type``, ``time``, ``username`` (the ``username``
header, else the source: who sent it, as ReactOBus and fedmsg say), ``headers.NAME``, or
``data.A.B`` / ``body.A.B`` into the body (a number walks into a list: ``data.builds.0.arch``).
A path that does not exist makes every test but ``exists = false`` and ``not_*`` false; it
never raises. A filter that cannot be meant is a :class:`ConfigError` naming where it is.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from re import _constants as re_constants  # the parsed form of a pattern, to look for nested repeats
from re import _parser as re_parser
from typing import Any

import regex

from tidings.errors import ConfigError, InvalidEvent, InvalidTopic
from tidings.event import Event, dumps
from tidings.topics import topic_matches, validate_pattern

Predicate = Callable[[Event], bool]

#: the value of a path that does not exist (distinct from a JSON null)
MISSING: Any = object()

_COMPARISONS: dict[str, Callable[[Any, Any], bool]] = {
    "gt": lambda a, b: a > b,
    "ge": lambda a, b: a >= b,
    "lt": lambda a, b: a < b,
    "le": lambda a, b: a <= b,
}
#: seconds one regular expression may take on one value; past it the event is refused (a backstop
#: for slow patterns the check at load does not see, such as ``(a|aa)+``)
REGEX_TIMEOUT = 0.25


class FilterTimeout(InvalidEvent):
    """A filter's regular expression took longer than :data:`REGEX_TIMEOUT` on an event."""


_FIELD_TESTS = ("equals", "not_equals", "in", "not_in", "regex", "exists", *_COMPARISONS)
_ENVELOPE = ("topic", "id", "source", "type", "time", "username")
#: what a field may be, for messages that name a wrong one
FIELDS = "topic, id, source, type, time, username, headers.NAME or data.PATH"


def compile_filter(spec: Any, where: str = "filter") -> Predicate:
    """A predicate for ``spec`` (a table or a list of tables, as read from TOML)."""
    if isinstance(spec, list):
        if not spec:  # as {all = []}: an empty list says nothing (pass everything? nothing?)
            raise ConfigError(f"{where}: a non-empty list of filters (leave the filter out to pass all)")
        return _all([compile_filter(item, f"{where}[{n}]") for n, item in enumerate(spec)])
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{where}: a filter is a table or a list of tables, not {type(spec).__name__}")
    keys = set(spec)
    for combinator in ("all", "any"):
        if combinator in keys:
            _only(spec, where, {combinator})
            items = spec[combinator]
            if not isinstance(items, list) or not items:
                raise ConfigError(f"{where}.{combinator}: a non-empty list of filters")
            parts = [compile_filter(item, f"{where}.{combinator}[{n}]") for n, item in enumerate(items)]
            return _all(parts) if combinator == "all" else _any(parts)
    if "not" in keys:
        _only(spec, where, {"not"})
        inner = compile_filter(spec["not"], f"{where}.not")
        return lambda event: not inner(event)
    if "topic" in keys:
        _only(spec, where, {"topic"})
        return _topic_pattern(spec["topic"], where)
    if "topic_regex" in keys:
        _only(spec, where, {"topic_regex"})
        search = _regex(spec["topic_regex"], f"{where}.topic_regex")
        return lambda event: search(event.topic)
    if "field" in keys:
        return _field_test(spec, where)
    raise ConfigError(
        f"{where}: say what to test: topic, topic_regex, field (with {', '.join(_FIELD_TESTS)}), "
        f"all, any or not; found {', '.join(sorted(keys)) or 'nothing'}"
    )


def lookup(event: Event, path: str) -> Any:
    """The value at ``path`` in ``event`` (see the module's doc), or :data:`MISSING`."""
    head, _, rest = path.partition(".")
    if head in ("data", "body"):
        return _walk(event.body, rest) if rest else event.body
    if head == "headers":
        return event.headers.get(rest, MISSING) if rest else event.headers
    if rest:
        return MISSING
    if head == "username":
        return event.headers.get("username", event.source)
    if head == "time":
        return event.time.isoformat()
    return getattr(event, head, MISSING) if head in _ENVELOPE else MISSING


def as_text(value: Any) -> str:
    """A value as text, the way ReactOBus shows it: strings as they are, everything else as JSON."""
    return value if isinstance(value, str) else dumps(value).decode()  # InvalidEvent if it cannot be


# -- the parts -------------------------------------------------------------------------------------


def _all(parts: list[Predicate]) -> Predicate:
    return lambda event: all(part(event) for part in parts)


def _any(parts: list[Predicate]) -> Predicate:
    return lambda event: any(part(event) for part in parts)


def _only(spec: Mapping[str, Any], where: str, allowed: set[str]) -> None:
    extra = sorted(set(spec) - allowed)
    if extra:
        raise ConfigError(f"{where}: {', '.join(extra)} cannot be combined with {', '.join(sorted(allowed))}")


def _topic_pattern(pattern: Any, where: str) -> Predicate:
    if not isinstance(pattern, str):
        raise ConfigError(f"{where}.topic: a pattern is text, not {type(pattern).__name__}")
    try:
        validate_pattern(pattern)
    except InvalidTopic as exc:
        raise ConfigError(f"{where}.topic: {exc}") from None
    return lambda event: topic_matches(pattern, event.topic)


def _regex(expression: Any, where: str) -> Callable[[str], bool]:
    """A test that ``expression`` is found in a text, bounded by :data:`REGEX_TIMEOUT`.

    The pattern is checked with Python's ``re`` (its error messages, and the look for nested
    repetitions) and run with the ``regex`` package, which can stop a search that runs too long."""
    if not isinstance(expression, str):
        raise ConfigError(f"{where}: a regular expression is text, not {type(expression).__name__}")
    try:
        re.compile(expression)
    except re.error as exc:
        raise ConfigError(f"{where}: bad regular expression {expression!r}: {exc}") from None
    if _nested_repeat(re_parser.parse(expression)):
        raise ConfigError(
            f"{where}: {expression!r} repeats a repetition with nothing fixed beside it, which can "
            "take exponential time on some "
            "input and stop every event behind it; make the inner one possessive (a++) or atomic "
            "((?>...)), or write it without the nesting"
        )
    try:
        bounded = regex.compile(expression)
    except regex.error as exc:
        raise ConfigError(f"{where}: bad regular expression {expression!r}: {exc}") from None

    def search(text: str) -> bool:
        try:
            return bounded.search(text, timeout=REGEX_TIMEOUT) is not None
        except TimeoutError:
            raise FilterTimeout(
                f"{where}: {expression!r} took longer than {REGEX_TIMEOUT:g} s on this event"
            ) from None

    return search


_REPEATS = (re_constants.MAX_REPEAT, re_constants.MIN_REPEAT)
#: what matches one character of a known set: a required one splits a repeated body unambiguously
_ONE_CHARACTER = (re_constants.LITERAL, re_constants.NOT_LITERAL, re_constants.IN)


def _nested_repeat(parsed: Any, inside: bool = False) -> bool:
    """Whether an unbounded repetition holds a variable repetition with nothing required beside
    it (``(a+)+``, ``(a*)*``, ``(\\d+x?)+``, ``(\\w+\\s?)*``): Python's backtracking can take
    exponential time on such a pattern (ReDoS). A body with a required character, as in
    ``(\\w+\\.)+`` or ``[a-z]+(\\.[a-z]+)*``, is taken: the heuristic catches the classic forms, not
    every slow pattern. Possessive repetitions and atomic groups do not backtrack."""
    for op, av in parsed:
        if op in _REPEATS:
            least, most, body = av
            if inside and least != most and most > 1:
                return True
            unbounded = most == re_constants.MAXREPEAT
            if _nested_repeat(body, inside or (unbounded and not _has_required_character(body))):
                return True
            continue
        if op is re_constants.SUBPATTERN:
            parts = [av[3]]
        elif op is re_constants.BRANCH:
            parts = av[1]
        elif op in (re_constants.ASSERT, re_constants.ASSERT_NOT):
            parts = [av[1]]
        else:
            continue
        if any(_nested_repeat(part, inside) for part in parts):
            return True
    return False


def _has_required_character(parsed: Any) -> bool:
    """Whether every match of ``parsed`` holds a character of a set (a literal, a class) at a
    place no variable repetition moves."""
    for op, av in parsed:
        if op in _ONE_CHARACTER:
            return True
        if op is re_constants.SUBPATTERN and _has_required_character(av[3]):
            return True
        if op in _REPEATS and av[0] == av[1] >= 1 and _has_required_character(av[2]):
            return True
        if op is re_constants.BRANCH and all(_has_required_character(branch) for branch in av[1]):
            return True
    return False


def _field_test(spec: Mapping[str, Any], where: str) -> Predicate:
    path = spec["field"]
    if not isinstance(path, str) or not is_field(path):
        raise ConfigError(f"{where}.field: {path!r} is not a field: {FIELDS}")
    tests = [key for key in spec if key != "field"]
    if len(tests) != 1 or tests[0] not in _FIELD_TESTS:
        raise ConfigError(
            f"{where}: a field needs exactly one test of {', '.join(_FIELD_TESTS)}; "
            f"found {', '.join(tests) or 'none'}"
        )
    test, expected = tests[0], spec[tests[0]]
    check = _value_test(test, expected, f"{where}.{test}")
    return lambda event: check(lookup(event, path))


def _value_test(test: str, expected: Any, where: str) -> Callable[[Any], bool]:
    if test == "equals":
        return lambda value: value is not MISSING and _same(value, expected)
    if test == "not_equals":
        return lambda value: value is MISSING or not _same(value, expected)
    if test in ("in", "not_in"):
        if not isinstance(expected, list) or not expected:  # [] would never (or always) match
            raise ConfigError(f"{where}: a list of one or more values")

        def inside(value: Any) -> bool:
            return value is not MISSING and any(_same(value, item) for item in expected)

        return inside if test == "in" else (lambda value: not inside(value))
    if test == "regex":
        search = _regex(expected, where)
        return lambda value: value is not MISSING and search(as_text(value))
    if test == "exists":
        if not isinstance(expected, bool):
            raise ConfigError(f"{where}: true or false")
        return lambda value: (value is not MISSING) is expected
    if not _is_number(expected) or math.isnan(expected):  # nothing compares with nan
        raise ConfigError(f"{where}: a number to compare with, not {expected!r}")
    compare = _COMPARISONS[test]
    return lambda value: _is_number(value) and compare(value, expected)


def _same(value: Any, expected: Any) -> bool:
    """Equal as JSON values are: ``1 == 1.0`` but ``True != 1`` and ``"1" != 1``."""
    if isinstance(value, bool) or isinstance(expected, bool):
        return isinstance(value, bool) and isinstance(expected, bool) and value is expected
    return bool(value == expected) and (
        type(value) is type(expected) or (_is_number(value) and _is_number(expected))
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _walk(value: Any, path: str) -> Any:
    for step in path.split("."):
        if isinstance(value, Mapping):
            value = value.get(step, MISSING)
        elif isinstance(value, list) and step.isdigit() and int(step) < len(value):
            value = value[int(step)]
        else:
            return MISSING
        if value is MISSING:
            return MISSING
    return value


def is_field(path: str) -> bool:
    """Whether ``path`` names a field an event can have (what :func:`lookup` takes)."""
    head, dot, rest = path.partition(".")
    if head in ("data", "body"):
        return not dot or all(rest.split("."))
    if head == "headers":
        return bool(rest)
    return head in _ENVELOPE and not dot
