"""Helpers for testing code that publishes and consumes with tidings.

    from tidings.testing import assert_published, deliver, mock_sends, published

With pytest they come with a plug-in (``bus`` and ``tidings_config`` fixtures, see
:mod:`tidings.testing.plugin`); without it, :func:`temporary_bus` makes a Bus the same way.
Everything runs on the real embedded default: an outbox and a journal in a temporary folder, the
consumer runtime's own code for handing messages to handlers. See ``docs/testing.md``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

from tidings.bus import Bus
from tidings.config import default_config
from tidings.testing.delivering import DeliveryReport, EventOutcome, State, deliver, deliver_sync
from tidings.testing.matching import Expected, body_difference
from tidings.testing.published import assert_published, on_the_wire, published
from tidings.testing.sends import mock_sends

__all__ = [
    "DeliveryReport",
    "EventOutcome",
    "Expected",
    "State",
    "assert_published",
    "body_difference",
    "deliver",
    "deliver_sync",
    "mock_sends",
    "on_the_wire",
    "published",
    "temporary_bus",
]


@contextmanager
def temporary_bus() -> Iterator[Bus]:
    """A Bus on the embedded default in a temporary folder, closed and removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="tidings-test-") as folder:
        bus = Bus(default_config(folder))
        try:
            yield bus
        finally:
            bus.close()
