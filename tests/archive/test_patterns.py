"""AMQP topic patterns in SQL find exactly what tidings.topics.topic_matches says, on every store."""

from __future__ import annotations

import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tidings.archive import Archive, Archived, Query
from tidings.archive.patterns import category_hint, compile_pattern, python_regex
from tidings.event import Event
from tidings.topics import topic_matches

# few words, so that generated patterns and topics often meet; "a.b" style words with punctuation
# that a regular expression or GLOB would misread
WORDS = ["a", "b", "c", "x+y", "1", "_", "%", "[z]", "d$", "org", "fedoraproject", "io", "centos"]
topic_st = st.lists(st.sampled_from(WORDS), min_size=1, max_size=5).map(".".join)
pattern_st = st.lists(st.sampled_from([*WORDS[:4], *WORDS[-4:], "*", "#"]), min_size=1, max_size=6).map(
    ".".join
)
#: every topic the stores hold for the property below
TOPICS = sorted(
    {
        ".".join(w)
        for n in (1, 2, 3)
        for w in __import__("itertools").product(["a", "b", "x+y", "%"], repeat=n)
    }
    | {f"org.fedoraproject.{env}.{app}.x" for env in ("prod", "stg") for app in ("a", "b", "org")}
    | {"org.fedoraproject.prod", "org.centos.prod.a", "io.fedoraproject.a.b"}
)


def matches_by_translation(pattern: str, topic: str) -> bool:
    compiled = compile_pattern(pattern)
    if compiled.exact is not None:
        return topic == compiled.exact
    if compiled.regex is None:
        return not compiled.prefix or topic == compiled.prefix or topic.startswith(compiled.prefix + ".")
    return topic.startswith(compiled.prefix) and python_regex(compiled.regex).match("." + topic) is not None


@settings(max_examples=2000, deadline=None)
@given(pattern_st, topic_st)
def test_the_translation_agrees_with_topic_matches(pattern: str, topic: str) -> None:
    assert matches_by_translation(pattern, topic) == topic_matches(pattern, topic)


@settings(max_examples=2000, deadline=None)
@given(pattern_st, topic_st)
def test_a_category_hint_is_the_category_of_every_matching_topic(pattern: str, topic: str) -> None:
    hint = category_hint(pattern)
    if hint is not None and topic_matches(pattern, topic):
        assert Archived(0, Event.create(topic, {})).category == hint


def test_the_expression_is_anchored_and_escaped() -> None:
    assert compile_pattern("a.*.c").regex == r"^\.a\.[^.]+\.c$"
    assert compile_pattern("a.b.#") == compile_pattern("a.b.#.#")
    assert re.fullmatch(compile_pattern("x+y.#.c").regex or "", ".x+y.q.c")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(pattern_st, min_size=1, max_size=3), st.booleans())
def test_a_store_finds_what_topic_matches_finds(archive: Archive, patterns: list[str], negate: bool) -> None:
    if archive.last_seq() == 0:
        archive.ingest([Event.create(topic, {}) for topic in TOPICS])
    query = Query(not_topics=patterns) if negate else Query(topics=patterns)
    found = {a.event.topic for a in archive.search(query, limit=len(TOPICS) + 1).items}
    expected = {t for t in TOPICS if any(topic_matches(p, t) for p in patterns) != negate}
    assert found == expected
