"""Route keys against 1,000 bindings: TopicMatcher's trie against scanning every pattern.

``TopicMatcher.match`` remembers the answer for each key it has routed (a bus sees the same
topics again and again), so two figures: the trie walk a key costs the first time it is seen,
and the remembered answer every later time.

Run with ``python bench/bench_topics.py``; prints microseconds per routed key.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Set

from tidings.topics import TopicMatcher, topic_matches

BINDINGS = 1_000
KEYS = 2_000
REPEATS = 5
SEED = 7

SERVICES = [f"svc{n}" for n in range(40)]
ENTITIES = ["build", "test", "checkout", "update", "compose", "job", "artifact", "review"]
ACTIONS = ["new", "started", "finished", "failed", "deleted", "retried"]


def make_patterns(rng: random.Random) -> list[str]:
    """A realistic mix: mostly exact keys, some '*' and some '#' subscriptions."""
    patterns: set[str] = set()
    while len(patterns) < BINDINGS:
        service, entity, action = rng.choice(SERVICES), rng.choice(ENTITIES), rng.choice(ACTIONS)
        shape = rng.random()
        if shape < 0.6:
            patterns.add(f"{service}.{entity}.{action}")
        elif shape < 0.8:
            patterns.add(f"{service}.{entity}.*")
        elif shape < 0.9:
            patterns.add(f"*.{entity}.{action}")
        elif shape < 0.97:
            patterns.add(f"{service}.#")
        else:
            patterns.add(f"#.{action}")
    return sorted(patterns)


def make_keys(rng: random.Random) -> list[str]:
    return [
        f"{rng.choice(SERVICES)}.{rng.choice(ENTITIES)}.{rng.choice(ACTIONS)}"
        + ("" if rng.random() < 0.8 else ".extra")
        for _ in range(KEYS)
    ]


def best_time(route: Callable[[str], Set[int]], keys: list[str]) -> float:
    """Best of REPEATS runs, in microseconds per key (the best run has the least noise)."""
    best = float("inf")
    for _ in range(REPEATS):
        start = time.perf_counter()
        for key in keys:
            route(key)
        best = min(best, time.perf_counter() - start)
    return best / len(keys) * 1e6


def main() -> None:
    rng = random.Random(SEED)
    patterns, keys = make_patterns(rng), make_keys(rng)
    matcher: TopicMatcher[int] = TopicMatcher()
    for number, pattern in enumerate(patterns):
        matcher.add(pattern, number)

    def scan(key: str) -> set[int]:
        return {number for number, pattern in enumerate(patterns) if topic_matches(pattern, key)}

    # Both must route identically, or the timing compares different work.
    routed = [matcher.match(key) for key in keys]
    assert routed == [scan(key) for key in keys]
    average = sum(map(len, routed)) / len(keys)

    walk_us, remembered_us = best_time(matcher._walk, keys), best_time(matcher.match, keys)
    scan_us = best_time(scan, keys)
    print(f"{len(patterns)} bindings, {len(keys)} keys, {average:.1f} matching bindings per key")
    print(f"trie walk (a key seen the first time) {walk_us:9.2f} µs per route")
    print(f"remembered key (every later time)     {remembered_us:9.2f} µs per route")
    print(f"scan of topic_matches                 {scan_us:9.2f} µs per route")
    print(f"ratio scan / trie walk                {scan_us / walk_us:9.1f}x")


if __name__ == "__main__":
    main()
