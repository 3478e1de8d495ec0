"""``mock_sends``: what a block publishes on one Bus, captured and compared with what was expected.

In the spirit of fedora-messaging's ``fedora_messaging.testing.mock_sends``: the events are not
stored in the bus's outbox (so no dispatcher ever sends them); on a clean exit from the block
they must match the expected ones, in order, one for one. Unlike it, nothing process-wide is
patched: the given Bus alone publishes into a throwaway outbox of its own while the block runs,
and ``publish()`` still checks every event (schema, size, depth) exactly as it always does.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from tidings.event import Event
from tidings.outbox import Outbox
from tidings.testing.matching import Check, Expected, check, describe

if TYPE_CHECKING:
    from tidings.bus import Bus


@contextmanager
def mock_sends(bus: Bus, *expected: Expected) -> Iterator[list[Event]]:
    """Capture what the block publishes on ``bus``; on exit, assert it is ``expected``.

    Each expected item is a topic pattern, a ``(pattern, body_subset)`` tuple or a callable
    taking the Event (see :mod:`tidings.testing.matching`). The yielded list holds the
    published events once the block is done. Raises AssertionError with an item-by-item
    comparison when the count or any item differs.
    """
    checks = [check(item, f"mock_sends: expected item {n}") for n, item in enumerate(expected, 1)]
    sent: list[Event] = []
    with tempfile.TemporaryDirectory(prefix="tidings-mock-sends-") as folder:
        capture = Outbox(Path(folder) / "captured.db")
        try:
            with bus.diverted(capture):
                yield sent
            sent.extend(capture.history())
        finally:
            capture.close()
    problem = compare(checks, sent)
    if problem is not None:
        raise AssertionError(problem)


def compare(checks: list[Check], sent: list[Event]) -> str | None:
    """None when ``sent`` is what ``checks`` expect, one for one in order; else the comparison."""
    lines, wrong = [], len(checks) != len(sent)
    for n in range(max(len(checks), len(sent))):
        shown, difference = checks[n] if n < len(checks) else ("nothing more", None)
        if n >= len(sent):
            lines.append(f"  {n + 1}. MISSING  expected {shown}")
            continue
        why = difference(sent[n]) if difference is not None else "not expected"
        wrong = wrong or why is not None
        mark = "ok      " if why is None else "EXTRA   " if difference is None else "MISMATCH"
        lines.append(f"  {n + 1}. {mark} expected {shown}\n       published {describe(sent[n])}")
        if why is not None and difference is not None:
            lines.append(f"       {why}")
    if not wrong:
        return None
    return f"mock_sends: expected {len(checks)} event(s), {len(sent)} published:\n" + "\n".join(lines)
