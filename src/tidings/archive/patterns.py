"""AMQP topic patterns as SQL: an index-friendly prefix plus an exact regular expression.

A pattern's words before its first wildcard are a literal prefix every matching topic starts
with, so a range on the topic index narrows the rows; the rest is checked exactly. The regular
expression is matched against ``"." + topic``: every word of the topic then starts with its own
dot, and ``#`` (zero or more words) becomes ``(\\.[^.]+)*`` without special cases at the ends.
Topics the archive holds have no empty words (``tidings.topics.validate_topic``), so ``[^.]+`` is
one word. The expression is in the subset POSIX ARE (PostgreSQL's ``~``) and Python's ``re`` share.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from tidings.topics import collapse_any_runs

ONE, ANY = "*", "#"


@dataclass(frozen=True, slots=True)
class TopicPattern:
    """What SQL needs to find a pattern's topics."""

    #: a topic without wildcards: compare with ``=``
    exact: str | None
    #: every matching topic starts with this ("" : no narrowing)
    prefix: str
    #: matched against ``'.' || topic``; None when the prefix alone is exact: then the pattern
    #: was ``a.b.#``, matched by ``a.b`` itself and by every topic starting with ``a.b.``
    regex: str | None


@lru_cache(maxsize=1024)
def compile_pattern(pattern: str) -> TopicPattern:
    words = list(collapse_any_runs(pattern.split(".")))
    pattern = ".".join(words)
    if ONE not in words and ANY not in words:
        return TopicPattern(pattern, pattern, None)
    literal = []
    for word in words:
        if word in (ONE, ANY):
            break
        literal.append(word)
    rest = words[len(literal) :]
    # "a.b.#" (or "a.b.#.#"): the topic is "a.b" or starts with "a.b.": the prefix says it all
    if all(word == ANY for word in rest):
        return TopicPattern(None, ".".join(literal), None)
    prefix = ".".join(literal) + "." if literal else ""
    return TopicPattern(None, prefix, to_regex(pattern))


def to_regex(pattern: str) -> str:
    """The anchored expression ``'.' + topic`` must match for ``topic`` to match ``pattern``."""
    parts = []
    for word in pattern.split("."):
        if word == ONE:
            parts.append(r"\.[^.]+")
        elif word == ANY:
            parts.append(r"(\.[^.]+)*")
        else:
            parts.append(r"\." + _literal(word))
    return "^" + "".join(parts) + "$"


def _literal(word: str) -> str:
    # every non-alphanumeric character escaped: both ARE and re read "\x" as x for punctuation
    return "".join(c if c.isalnum() or c == "_" else "\\" + c for c in word)


def prefix_upper(prefix: str) -> str:
    """The smallest string above every string starting with ``prefix`` (for ``topic < ?``)."""
    return prefix + "\U0010ffff"


@lru_cache(maxsize=1024)
def python_regex(expression: str) -> re.Pattern[str]:
    return re.compile(expression)


#: datagrepper's category is the fourth word of topics under these two words (Archived.category)
_ORGS, _PROJECTS = ("org", "io", "com"), ("fedoraproject", "centos")


@lru_cache(maxsize=1024)
def category_hint(pattern: str) -> str | None:
    """The category every topic matching ``pattern`` has, when the pattern fixes it; else None.

    A search by pattern is ordered by time: with the category known, the (category, time) index
    gives the rows in that order already (``org.fedoraproject.*.bodhi.#`` reads bodhi's newest
    rows, not every Fedora row sorted), and the topic is checked on those alone.
    """
    words = pattern.split(".")
    if words[0] in (ONE, ANY):
        return None
    if words[0] not in _ORGS:
        return words[0]  # a topic starting with another word is its own category
    if len(words) < 4 or words[1] not in _PROJECTS or ANY in words[:4] or words[3] == ONE:
        return None
    return words[3]
