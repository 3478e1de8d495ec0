"""Routing keys and binding patterns with the exact semantics of an AMQP topic exchange.

A routing key is a list of words written with ``.`` between them.  A binding
pattern is the same, except that the word ``*`` stands for exactly one word
and ``#`` for zero or more words.  The rules follow RabbitMQ to the letter,
because events routed by an embedded transport must reach the same queues as
they would through the real broker:

* the empty string has *zero* words (so only ``#``-only patterns and the
  empty pattern match it); any other string is ``text.split(".")``, so
  ``"a."`` is ``["a", ""]`` and ``"a..b"`` has an empty middle word;
* words are compared exactly; ``*`` and ``#`` are wildcards only as whole
  words of the pattern (``"a*"`` is an ordinary word).

:func:`topic_matches` and :class:`TopicMatcher` accept any strings, as the
broker does; :func:`validate_topic` and :func:`validate_pattern` enforce the
stricter rules tidings sets for the keys and patterns it produces itself.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Hashable
from functools import lru_cache, partial
from typing import Generic, TypeVar

from tidings.errors import InvalidTopic

__all__ = ["TopicMatcher", "topic_matches", "validate_pattern", "validate_topic"]

T = TypeVar("T", bound=Hashable)

#: AMQP carries routing keys in a "short string": at most 255 bytes.
MAX_TOPIC_BYTES = 255

_ONE = "*"
_ANY = "#"
_WILDCARDS = (_ONE, _ANY)
_SHOWN_CHARS = 60  # enough to recognise a topic in an error line, short enough for a log


# -- validation -----------------------------------------------------------------------


def validate_topic(topic: str) -> str:
    """Return ``topic`` if it is a valid routing key, else raise :class:`InvalidTopic`."""
    if type(topic) is str:
        _check_topic_once(topic)
    else:
        _check_topic(topic)  # not a str: raises, naming the type
    return topic  # the caller's own object, whichever equal string the cache saw first


# every event published or decoded checks its topic, and a bus sees the same few again and
# again: remember the ones that passed (a failed check raises, and is never remembered)
@lru_cache(maxsize=4096)
def _check_topic_once(topic: str) -> None:
    _check_topic(topic)


def _check_topic(topic: str) -> None:
    _check_text(topic, "topic")
    for position, word in enumerate(topic.split("."), 1):
        if _ONE in word or _ANY in word:
            raise InvalidTopic(
                f"invalid topic {_show(topic)}: word {position} {word!r} contains a wildcard "
                "('*' and '#' are only allowed in binding patterns)"
            )


def validate_pattern(pattern: str) -> str:
    """Return ``pattern`` if it is a valid binding pattern, else raise :class:`InvalidTopic`."""
    _check_text(pattern, "pattern")
    for position, word in enumerate(pattern.split("."), 1):
        if word not in _WILDCARDS and (_ONE in word or _ANY in word):
            raise InvalidTopic(
                f"invalid pattern {_show(pattern)}: word {position} {word!r} mixes a wildcard "
                "with other characters ('*' and '#' must be whole words, as in 'a.*.b' or 'a.#')"
            )
    return pattern


def _check_text(text: object, kind: str) -> None:
    """The rules routing keys and patterns share: size, characters and empty words."""
    if not isinstance(text, str):
        raise InvalidTopic(f"a {kind} must be a str, not {type(text).__name__}")
    if not text:
        raise InvalidTopic(f"a {kind} must not be empty")
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_TOPIC_BYTES:
        raise InvalidTopic(
            f"invalid {kind} {_show(text)}: {size} bytes of UTF-8, the limit is {MAX_TOPIC_BYTES}"
        )
    # isprintable() is False for every control, format, surrogate, unassigned and
    # separator character except the plain space, which is checked separately.
    if not text.isprintable() or " " in text:
        bad = next(c for c in text if c == " " or not c.isprintable())
        raise InvalidTopic(
            f"invalid {kind} {_show(text)}: contains whitespace or control character U+{ord(bad):04X}"
        )
    words = text.split(".")
    if "" in words:
        position = words.index("") + 1
        raise InvalidTopic(
            f"invalid {kind} {_show(text)}: empty word {position} of {len(words)} "
            "(no leading, trailing or doubled '.')"
        )


def _show(text: str) -> str:
    """Quote ``text`` for a one-line message; repr() escapes control characters."""
    if len(text) > _SHOWN_CHARS:
        return f"{text[:_SHOWN_CHARS]!r}… ({len(text)} characters)"
    return repr(text)


# -- matching one pattern ---------------------------------------------------------------


def _words(text: str) -> list[str]:
    # RabbitMQ's split: the empty key is zero words, not one empty word.
    return text.split(".") if text else []


def topic_matches(pattern: str, topic: str) -> bool:
    """Whether a topic exchange would route ``topic`` to a binding with ``pattern``."""
    return _compile(pattern)(topic)


@lru_cache(maxsize=4096)
def _compile(pattern: str) -> Callable[[str], bool]:
    """Pick the cheapest test that is exact for this pattern's shape."""
    words = _words(pattern)
    if _ANY not in words and _ONE not in words:
        # The word split is one-to-one on strings, so equal words means equal strings.
        return partial(operator.eq, pattern)
    if all(word == _ANY for word in words):
        return _always
    if _ANY not in words:
        return _fixed_length_matcher(tuple(words))
    return _hash_matcher(collapse_any_runs(words))


def _always(topic: str) -> bool:
    return True


def collapse_any_runs(words: list[str]) -> tuple[str, ...]:
    """A pattern's words with each run of ``#`` as one: ``#.#`` matches exactly what ``#``
    matches, and every '#' more is more work for a matcher (exponential for a backtracking one)."""
    out: list[str] = []
    for word in words:
        if not (word == _ANY and out and out[-1] == _ANY):
            out.append(word)
    return tuple(out)


def _fixed_length_matcher(pattern: tuple[str, ...]) -> Callable[[str], bool]:
    def matches(topic: str) -> bool:
        words = _words(topic)
        return len(words) == len(pattern) and all(p in (_ONE, w) for p, w in zip(pattern, words, strict=True))

    return matches


def _hash_matcher(pattern: tuple[str, ...]) -> Callable[[str], bool]:
    """Simulate the pattern as an NFA: linear in the key, never exponential in the '#'s."""
    end = len(pattern)

    def closure(states: set[int]) -> set[int]:
        # A '#' may match zero words, so being before it also means being after it.
        # Consecutive '#' were collapsed, so one step is enough.
        return states | {i + 1 for i in states if i < end and pattern[i] == _ANY}

    start = closure({0})

    def matches(topic: str) -> bool:
        states = start
        for word in _words(topic):
            following: set[int] = set()
            for i in states:
                if i == end:
                    continue
                expected = pattern[i]
                if expected == _ANY:
                    following.add(i)  # '#' swallows this word and may swallow more
                elif expected in (_ONE, word):
                    following.add(i + 1)
            if not following:
                return False
            states = closure(following)
        return end in states

    return matches


# -- matching many patterns at once -----------------------------------------------------


class _Node(Generic[T]):
    """A trie node: the patterns sharing a prefix of words share the path to it."""

    __slots__ = ("children", "loops", "values")

    def __init__(self, loops: bool) -> None:
        self.children: dict[str, _Node[T]] = {}
        self.values: set[T] = set()
        # A node reached by a '#' edge may also swallow any number of further words.
        self.loops = loops


class TopicMatcher(Generic[T]):
    """A set of (pattern, value) bindings that routes a topic to the values bound to it.

    Like the topic exchange itself, the bindings live in a trie of pattern words,
    so routing walks only the branches a key can follow instead of testing every
    pattern. Binding the same (pattern, value) twice is a no-op, as in AMQP.
    Patterns are not validated: any string routes exactly as RabbitMQ would.
    """

    #: routing keys remembered with their answers; a bus sees the same few topics again and again
    CACHE_SIZE = 4096

    def __init__(self) -> None:
        self._root: _Node[T] = _Node(loops=False)
        self._size = 0
        self._cache: dict[str, frozenset[T]] = {}

    def add(self, pattern: str, value: T) -> None:
        """Bind ``value`` to ``pattern``."""
        node = self._root
        for word in _words(pattern):
            child = node.children.get(word)
            if child is None:
                child = node.children[word] = _Node(loops=word == _ANY)
            node = child
        if value not in node.values:
            node.values.add(value)
            self._size += 1
            self._cache.clear()

    def remove(self, pattern: str, value: T) -> None:
        """Unbind ``value`` from ``pattern``; raise :class:`KeyError` if it was not bound."""
        path = [self._root]
        words = _words(pattern)
        for word in words:
            child = path[-1].children.get(word)
            if child is None:
                raise KeyError((pattern, value))
            path.append(child)
        values = path[-1].values
        if value not in values:
            raise KeyError((pattern, value))
        values.remove(value)
        self._size -= 1
        self._cache.clear()
        self._prune(path, words)

    @staticmethod
    def _prune(path: list[_Node[T]], words: list[str]) -> None:
        # Drop the nodes this removal left empty so dead branches cost nothing to route.
        for depth in range(len(words), 0, -1):
            node = path[depth]
            if node.values or node.children:
                return
            del path[depth - 1].children[words[depth - 1]]

    def match(self, topic: str) -> frozenset[T]:
        """Every value bound to a pattern that matches ``topic``, each once."""
        found = self._cache.get(topic)
        if found is None:
            if len(self._cache) >= self.CACHE_SIZE:
                self._cache.clear()  # many distinct keys: start over rather than track ages
            found = self._cache[topic] = frozenset(self._walk(topic))
        return found

    def _walk(self, topic: str) -> set[T]:
        words = _words(topic)
        end = len(words)
        found: set[T] = set()
        # States are (node, words consumed). Remembering the visited ones bounds the
        # walk by nodes x (words + 1), however many '#' a pattern holds.
        seen: set[tuple[_Node[T], int]] = set()
        todo: list[tuple[_Node[T], int]] = [(self._root, 0)]
        while todo:
            state = todo.pop()
            if state in seen:
                continue
            seen.add(state)
            node, i = state
            children = node.children
            hash_child = children.get(_ANY)
            if hash_child is not None:
                todo.append((hash_child, i))  # '#' matching zero words here
            if i == end:
                found |= node.values
                continue
            if node.loops:
                todo.append((node, i + 1))
            literal = children.get(words[i])
            if literal is not None:
                todo.append((literal, i + 1))
            star = children.get(_ONE)
            if star is not None:
                todo.append((star, i + 1))
        return found

    def __len__(self) -> int:
        return self._size
