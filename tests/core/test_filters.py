"""The filter language of relays and reactor rules."""

from __future__ import annotations

import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.errors import ConfigError
from tidings.event import Event
from tidings.filters import MISSING, REGEX_TIMEOUT, FilterTimeout, compile_filter, lookup
from tidings.topics import topic_matches

JOB = Event.create(
    "org.lavasoftware.lab.testjob",
    {
        "job": 42,
        "status": "Complete",
        "device_type": "x15",
        "health": 0.5,
        "tags": ["a", "b"],
        "builds": [{"arch": "arm64"}],
        "ok": True,
        "note": None,
    },
    source="lava",
    headers={"username": "lavaserver"},
)


@pytest.mark.parametrize(
    ("spec", "passes"),
    [
        ({"topic": "org.lavasoftware.*.testjob"}, True),
        ({"topic": "org.lavasoftware.#"}, True),
        ({"topic": "org.*.testjob"}, False),
        ({"topic_regex": r"\.testjob$"}, True),
        ({"field": "data.status", "equals": "Complete"}, True),
        ({"field": "data.status", "equals": "complete"}, False),
        ({"field": "data.job", "equals": 42}, True),
        ({"field": "data.job", "equals": "42"}, False),  # text is not a number
        ({"field": "data.ok", "equals": 1}, False),  # true is not 1
        ({"field": "data.device_type", "in": ["x15", "bbb"]}, True),
        ({"field": "data.device_type", "not_in": ["x15"]}, False),
        ({"field": "data.missing", "not_in": ["x15"]}, True),
        ({"field": "data.status", "not_equals": "Incomplete"}, True),
        ({"field": "data.job", "gt": 41}, True),
        ({"field": "data.health", "le": 0.5}, True),
        ({"field": "data.status", "gt": 1}, False),  # not a number: no match, no error
        ({"field": "data.tags", "regex": '"b"'}, True),  # matched as its JSON
        ({"field": "data.builds.0.arch", "equals": "arm64"}, True),
        ({"field": "data.builds.1.arch", "exists": True}, False),
        ({"field": "data.note", "exists": True}, True),  # null is there
        ({"field": "data.no.such.path", "exists": False}, True),
        ({"field": "data.no.such.path", "equals": "x"}, False),
        ({"field": "username", "regex": "^lava"}, True),
        ({"field": "source", "equals": "lava"}, True),
        ({"field": "headers.username", "equals": "lavaserver"}, True),
        ({"all": [{"topic": "#"}, {"field": "data.status", "equals": "Complete"}]}, True),
        ({"any": [{"topic": "nope"}, {"field": "data.job", "lt": 0}]}, False),
        ({"not": {"field": "data.status", "equals": "Complete"}}, False),
        ([{"topic": "#"}, {"field": "data.device_type", "equals": "x15"}], True),
    ],
)
def test_a_filter_passes_what_it_says(spec: Any, passes: bool) -> None:
    assert compile_filter(spec)(JOB) is passes


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"field": "data.x", "equal": 1}, "filter: a field needs exactly one test of equals"),
        ({"field": "data.x"}, "found none"),
        ({"field": "data..x", "equals": 1}, "filter.field: 'data..x' is not a field"),
        ({"field": "bogus", "equals": 1}, "'bogus' is not a field"),
        ({"topic": "a..b"}, "filter.topic: invalid pattern"),
        ({"topic_regex": "("}, "filter.topic_regex: bad regular expression"),
        ({"all": [{"topic": "#"}, {"field": "data.x", "gt": "ten"}]}, "filter.all[1].gt: a number"),
        ({"any": []}, "filter.any: a non-empty list"),
        ({"field": "data.x", "in": "x15"}, "filter.in: a list of one or more values"),
        ({"field": "data.x", "not_in": []}, "filter.not_in: a list of one or more values"),
        ({"field": "data.x", "gt": float("nan")}, "filter.gt: a number to compare with, not nan"),
        ({"field": "data.x", "exists": "yes"}, "filter.exists: true or false"),
        ({"topic": "#", "field": "data.x"}, "cannot be combined"),
        ({"nope": 1}, "say what to test"),
        ("topic", "a filter is a table"),
    ],
)
def test_a_filter_that_cannot_be_meant_is_a_config_error_saying_where(spec: Any, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        compile_filter(spec, "filter")
    assert message in str(info.value)


WORD = st.sampled_from(["a", "b", "lab", "testjob", "x"])
TOPIC = st.lists(WORD, min_size=1, max_size=5).map(".".join)
PATTERN = st.lists(st.one_of(WORD, st.just("*"), st.just("#")), min_size=1, max_size=5).map(".".join)


@given(PATTERN, TOPIC)
def test_a_topic_filter_is_the_topic_matcher(pattern: str, topic: str) -> None:
    event = Event.create(topic, {})
    assert compile_filter({"topic": pattern})(event) is topic_matches(pattern, topic)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text("abc", min_size=1, max_size=2), inner, max_size=3)
    ),
    max_leaves=10,
)
PATH = st.lists(st.sampled_from(["a", "b", "c", "0", "1", "ab"]), min_size=1, max_size=4).map(".".join)


@given(st.dictionaries(st.text("abc", min_size=1, max_size=2), JSON, max_size=4), PATH, JSON)
def test_any_path_on_any_body_answers_without_raising(body: dict[str, Any], path: str, value: Any) -> None:
    event = Event.create("a.b", body)
    found = lookup(event, f"data.{path}")
    exists = compile_filter({"field": f"data.{path}", "exists": True})(event)
    assert exists is (found is not MISSING)
    for test in ("equals", "not_equals", "regex", "gt"):
        expected = value if test in ("equals", "not_equals") else ("." if test == "regex" else 0)
        if test == "gt" and not isinstance(expected, int | float):
            continue
        spec = {"field": f"data.{path}", test: expected}
        try:
            verdict = compile_filter(spec)(event)
        except ConfigError:
            continue  # a TOML-impossible value (None) refused when compiled, never when matching
        assert isinstance(verdict, bool)
    assert compile_filter({"not": {"field": f"data.{path}", "exists": True}})(event) is not exists


@pytest.mark.parametrize("regex", [r"^(a+)+$", "(a*)*", r"(\d+x?)+", r"(\w+\s?)*$", "(?=(a+)+)b", "x|(a+)+"])
def test_a_regex_that_can_take_exponential_time_is_refused(regex: str) -> None:
    with pytest.raises(ConfigError, match="repeats a repetition"):
        compile_filter({"field": "data.a", "regex": regex}, "[relays.x] filter")


@pytest.mark.parametrize(
    ("regex", "value", "passes"),
    [
        ("^(ab|cd)+$", "abcdab", True),
        (r"^org\.linaro\..*$", "org.linaro.validation", True),
        ("^(a++)+$", "a" * 40 + "!", False),  # possessive: no backtracking, answered at once
        ("^(?>a+)+!", "a" * 40 + "!", True),
        ("(ab){2,}", "xababy", True),
        ("^(a+){2}$", "a", False),
        (r"^org\.linaro\.(\w+\.)+testjob$", "org.linaro." + "a." * 30 + "x", False),  # linear: a '.' splits
        (r"[a-z]+(\.[a-z]+)*$", "a.b" * 20 + "!", False),
        ("(?:[^,]+,)*end", "a," * 30 + "x", False),
        (r"(\d{4}-\d{2}-\d{2} ?)+", "2026-12-01 2026-12-02", True),
        ("^(x{2})+$", "xxxx", True),
    ],
)
def test_regexes_without_nested_repetition_are_taken(regex: str, value: str, passes: bool) -> None:
    test = compile_filter({"field": "data.a", "regex": regex}, "[relays.x] filter")
    assert test(Event.create("a.b", {"a": value})) is passes


@pytest.mark.parametrize("spec", [[], {"not": []}, {"all": []}, {"any": []}])
def test_an_empty_list_says_nothing_and_is_refused(spec: Any) -> None:
    with pytest.raises(ConfigError, match="a non-empty list of filters"):
        compile_filter(spec, "[relays.x] filter")


@pytest.mark.parametrize(
    "spec",
    [
        {"field": "data.a", "regex": "^(a|aa)+$"},  # overlapping alternatives: the check at load misses it
        {"topic_regex": "^(a|aa)+$"},
    ],
)
def test_a_regex_that_runs_too_long_refuses_that_event_in_bounded_time(spec: dict[str, str]) -> None:
    test = compile_filter(spec, "[relays.x] filter")
    slow = Event.create("a" * 60 + ".b", {"a": "a" * 60 + "!"})
    started = time.monotonic()
    with pytest.raises(
        FilterTimeout, match=r"\[relays.x\] filter\.(regex|topic_regex): .* took longer than 0.25 s"
    ):
        test(slow)
    assert time.monotonic() - started < REGEX_TIMEOUT + 2
    assert test(Event.create("aaaa", {"a": "aaaa"})) is True  # the next event is tested as usual
