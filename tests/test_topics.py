"""Routing keys, binding patterns and the topic matcher (no broker needed).

The edge-case table was checked against RabbitMQ (see test_topics_rabbitmq.py);
the property tests compare with two reference definitions written here from
the AMQP rules, independently of the implementation.
"""

from __future__ import annotations

import re
from functools import cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule

from tidings.errors import InvalidTopic
from tidings.topics import TopicMatcher, topic_matches, validate_pattern, validate_topic

# -- reference definitions ----------------------------------------------------------------


def reference_words(text: str) -> tuple[str, ...]:
    """RabbitMQ's split: the empty string is no words at all."""
    return tuple(text.split(".")) if text else ()


def reference_recursive(pattern: str, topic: str) -> bool:
    """The rules read literally, one pattern word at a time."""

    @cache
    def match(p: tuple[str, ...], t: tuple[str, ...]) -> bool:
        if not p:
            return not t
        head, rest = p[0], p[1:]
        if head == "#":
            return match(rest, t) or (bool(t) and match(p, t[1:]))
        return bool(t) and head in ("*", t[0]) and match(rest, t[1:])

    return match(reference_words(pattern), reference_words(topic))


def reference_regex(pattern: str, topic: str) -> bool:
    """The rules as a regular expression over words each followed by a NUL terminator."""
    parts = []
    for word in reference_words(pattern):
        if word == "#":
            parts.append("(?:[^\0]*\0)*")
        elif word == "*":
            parts.append("[^\0]*\0")
        else:
            parts.append(re.escape(word) + "\0")
    subject = "".join(word + "\0" for word in reference_words(topic))
    return re.fullmatch("".join(parts), subject) is not None


# -- edge cases (each row agrees with RabbitMQ 3.10) -----------------------------------------

EDGE_CASES = [
    # the empty key has zero words
    ("#", "", True),
    ("#.#", "", True),
    ("", "", True),
    ("*", "", False),
    ("#.*", "", False),
    ("a.#", "", False),
    ("", "a", False),
    # '#' matches zero words, at either end or in the middle
    ("a.#", "a", True),
    ("#.b", "b", True),
    ("a.#.c", "a.c", True),
    ("a.#.c", "a.b.b.c", True),
    ("a.#.c", "a.c.d", False),
    ("#", "a.b.c", True),
    ("#.#.#.#.a", "a", True),
    ("#.#.#.#.a", "b.a.b", False),
    # '*' matches exactly one word, and an empty word is a word
    ("*", "a", True),
    ("*", "a.b", False),
    ("a.*", "a", False),
    ("a.*", "a.", True),
    ("*.a", ".a", True),
    ("a.*.b", "a..b", True),
    ("a.*.b", "a.b", False),
    ("*.*", ".", True),
    ("*", ".", False),
    # dots in patterns are separators too, so empty pattern words are literal empty words
    (".", ".", True),
    ("a.", "a.", True),
    ("a.", "a", False),
    ("#.", "a.", True),
    ("#.", "a", False),
    (".#", ".a", True),
    ("a..b", "a..b", True),
    ("a..b", "a.b", False),
    # wildcards count only as whole pattern words; in a key they are plain words
    ("a*", "a*", True),
    ("a*", "ab", False),
    ("#a", "a", False),
    ("a.*", "a.*", True),
    ("a.#", "a.#", True),
    ("*", "#", True),
    ("a", "*", False),
    ("a.b", "a.b", True),
    ("a.b", "a.B", False),
    ("é.*", "é.ü", True),
]


@pytest.mark.parametrize(("pattern", "topic", "expected"), EDGE_CASES)
def test_edge_cases(pattern: str, topic: str, expected: bool) -> None:
    assert topic_matches(pattern, topic) is expected
    assert reference_recursive(pattern, topic) is expected
    assert reference_regex(pattern, topic) is expected
    matcher: TopicMatcher[str] = TopicMatcher()
    matcher.add(pattern, "hit")
    assert matcher.match(topic) == ({"hit"} if expected else set())


def test_many_hashes_stay_fast() -> None:
    # A naive backtracking matcher takes exponential time here.
    pattern = ".".join(["#"] * 40 + ["a"] + ["#"] * 40 + ["b"])
    topic = ".".join(["a"] * 120)
    assert not topic_matches(pattern, topic)
    assert topic_matches(pattern, topic + ".b")
    matcher: TopicMatcher[int] = TopicMatcher()
    for n in range(1, 30):
        matcher.add(".".join(["#"] * n + ["a"] + ["#"] * n + ["b"]), n)
    assert matcher.match(topic) == set()
    assert matcher.match(topic + ".b") == set(range(1, 30))


# -- validators -----------------------------------------------------------------------------

GOOD_TOPICS = ["a", "a.b.c", "datawarehouse.checkout.new", "x-1_y", "é.ü", "a" * 255, "é" * 127]


@pytest.mark.parametrize("topic", GOOD_TOPICS)
def test_valid_topics(topic: str) -> None:
    assert validate_topic(topic) is topic
    assert validate_pattern(topic) is topic


def test_a_remembered_topic_comes_back_as_the_callers_own_object() -> None:
    first, second = "".join(["svc.", "build.done"]), "".join(["svc.", "build.done"])
    assert first is not second  # equal, not the same object: the second check is answered from memory
    assert validate_topic(first) is first
    assert validate_topic(second) is second


@pytest.mark.parametrize("pattern", ["#", "*", "a.#", "#.a", "a.*.b", "*.*", "#.#", "a.#.*.b"])
def test_valid_patterns(pattern: str) -> None:
    assert validate_pattern(pattern) is pattern


BAD_TOPICS = [
    (None, "a topic must be a str, not NoneType"),
    (b"a.b", "a topic must be a str, not bytes"),
    ("", "a topic must not be empty"),
    ("a..b", "invalid topic 'a..b': empty word 2 of 3"),
    (".a", "invalid topic '.a': empty word 1 of 2"),
    ("a.", "invalid topic 'a.': empty word 2 of 2"),
    (".", "invalid topic '.': empty word 1 of 2"),
    ("a b", "invalid topic 'a b': contains whitespace or control character U+0020"),
    ("a\tb", "invalid topic 'a\\tb': contains whitespace or control character U+0009"),
    ("a\nb", "invalid topic 'a\\nb': contains whitespace or control character U+000A"),
    ("a\u200bb", "contains whitespace or control character U+200B"),
    ("a\u00a0b", "contains whitespace or control character U+00A0"),
    ("a" * 256, "256 bytes of UTF-8, the limit is 255"),
    ("é" * 128, "256 bytes of UTF-8, the limit is 255"),
    ("a.*", "invalid topic 'a.*': word 2 '*' contains a wildcard"),
    ("#", "invalid topic '#': word 1 '#' contains a wildcard"),
    ("a.b#", "word 2 'b#' contains a wildcard"),
]


@pytest.mark.parametrize(("topic", "message"), BAD_TOPICS)
def test_invalid_topics(topic: str, message: str) -> None:
    with pytest.raises(InvalidTopic) as raised:
        validate_topic(topic)
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


BAD_PATTERNS = [
    (None, "a pattern must be a str, not NoneType"),
    ("", "a pattern must not be empty"),
    ("a..#", "invalid pattern 'a..#': empty word 2 of 3"),
    ("#.", "invalid pattern '#.': empty word 2 of 2"),
    ("a*", "invalid pattern 'a*': word 1 'a*' mixes a wildcard with other characters"),
    ("a.b#", "invalid pattern 'a.b#': word 2 'b#' mixes a wildcard"),
    ("**", "word 1 '**' mixes a wildcard"),
    ("#*", "word 1 '#*' mixes a wildcard"),
    ("a. #", "contains whitespace or control character U+0020"),
    ("#." * 128, "256 bytes of UTF-8, the limit is 255"),
]


@pytest.mark.parametrize(("pattern", "message"), BAD_PATTERNS)
def test_invalid_patterns(pattern: str, message: str) -> None:
    with pytest.raises(InvalidTopic) as raised:
        validate_pattern(pattern)
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


def test_huge_topic_is_truncated_in_the_message() -> None:
    with pytest.raises(InvalidTopic) as raised:
        validate_topic("x" * 10_000 + "..")
    message = str(raised.value)
    assert len(message) < 200
    assert "(10002 characters)" in message


# -- properties against the references --------------------------------------------------------

# A tiny alphabet, empty word and wildcards included, so that matches are frequent.
pattern_words = st.sampled_from(["a", "b", "c", "*", "#", ""])
key_words = st.sampled_from(["a", "b", "c", ""])
patterns = st.lists(pattern_words, max_size=7).map(".".join) | st.text(alphabet="ab.*#", max_size=10)
keys = st.lists(key_words, max_size=8).map(".".join) | st.text(alphabet="ab.*#", max_size=10)


@settings(max_examples=2000)
@given(patterns, keys)
def test_topic_matches_agrees_with_references(pattern: str, topic: str) -> None:
    expected = reference_regex(pattern, topic)
    assert reference_recursive(pattern, topic) is expected  # the two references agree
    assert topic_matches(pattern, topic) is expected


@settings(max_examples=500)
@given(st.lists(patterns, max_size=30), st.lists(keys, min_size=1, max_size=10))
def test_matcher_agrees_with_scanning_the_patterns(bound: list[str], probes: list[str]) -> None:
    matcher: TopicMatcher[int] = TopicMatcher()
    for number, pattern in enumerate(bound):
        matcher.add(pattern, number)
    assert len(matcher) == len(bound)
    for topic in probes:
        expected = {n for n, pattern in enumerate(bound) if reference_regex(pattern, topic)}
        assert matcher.match(topic) == expected


@settings(max_examples=200)
@given(st.lists(patterns, max_size=10), st.lists(keys, min_size=1, max_size=20))
def test_remembered_answers_stay_right_when_the_cache_overflows(bound: list[str], probes: list[str]) -> None:
    matcher: TopicMatcher[int] = TopicMatcher()
    matcher.CACHE_SIZE = 3  # type: ignore[misc]  # tiny, so that it is cleared again and again
    for number, pattern in enumerate(bound):
        matcher.add(pattern, number)
    for topic in probes + probes[::-1]:
        expected = {n for n, pattern in enumerate(bound) if reference_regex(pattern, topic)}
        assert matcher.match(topic) == expected
    assert len(matcher._cache) <= 3


@given(st.lists(key_words.filter(bool), min_size=1, max_size=8).map(".".join))
def test_validated_topics_match_themselves(topic: str) -> None:
    validate_topic(topic)
    assert topic_matches(validate_pattern(topic), topic)
    assert topic_matches("#", topic)


class MatcherModel(RuleBasedStateMachine):
    """Any sequence of add and remove leaves the matcher equal to a plain list of bindings."""

    bindings = Bundle("bindings")

    def __init__(self) -> None:
        super().__init__()
        self.matcher: TopicMatcher[str] = TopicMatcher()
        self.model: list[tuple[str, str]] = []

    @rule(target=bindings, pattern=patterns, value=st.sampled_from(["x", "y", "z"]))
    def add(self, pattern: str, value: str) -> tuple[str, str]:
        self.matcher.add(pattern, value)
        if (pattern, value) not in self.model:  # binding twice is a no-op, as in AMQP
            self.model.append((pattern, value))
        return (pattern, value)

    @rule(binding=bindings)
    def remove(self, binding: tuple[str, str]) -> None:
        if binding in self.model:
            self.matcher.remove(*binding)
            self.model.remove(binding)
        else:
            with pytest.raises(KeyError):
                self.matcher.remove(*binding)

    @rule(pattern=patterns)
    def remove_unknown(self, pattern: str) -> None:
        with pytest.raises(KeyError):
            self.matcher.remove(pattern, "never bound")

    @rule(topic=keys)
    def route(self, topic: str) -> None:
        expected = {value for pattern, value in self.model if reference_recursive(pattern, topic)}
        assert self.matcher.match(topic) == expected

    @invariant()
    def size(self) -> None:
        assert len(self.matcher) == len(self.model)

    @invariant()
    def removed_bindings_leave_no_branches(self) -> None:
        # Pruning keeps the trie no bigger than the live patterns need.
        live = {reference_words(pattern) for pattern, _ in self.model}
        prefixes = {words[:n] for words in live for n in range(1, len(words) + 1)}
        assert trie_paths(self.matcher) == prefixes


def trie_paths(matcher: TopicMatcher[str]) -> set[tuple[str, ...]]:
    paths: set[tuple[str, ...]] = set()
    todo = [((), matcher._root)]
    while todo:
        path, node = todo.pop()
        for word, child in node.children.items():
            paths.add((*path, word))
            todo.append(((*path, word), child))
    return paths


TestMatcherModel = MatcherModel.TestCase
TestMatcherModel.settings = settings(max_examples=300, stateful_step_count=40)
