"""The pytest plugin, registered by entry point (``pytest11``): installing tidings makes its
fixtures available to every test suite, with nothing to import.

* ``tidings_config`` — the configuration ``bus`` is built from: the embedded default under the
  test's ``tmp_path``. Override it in a conftest.py to test with your own connectors or schemas.
* ``bus`` — a :class:`~tidings.bus.Bus` on that configuration (no server; nothing written outside
  ``tmp_path``), closed after the test.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tidings.bus import Bus
from tidings.config import Config, default_config


@pytest.fixture
def tidings_config(tmp_path: Path) -> Config:
    """The embedded default with its home under ``tmp_path``."""
    return default_config(tmp_path)


@pytest.fixture
def bus(tidings_config: Config) -> Iterator[Bus]:
    """A Bus on ``tidings_config``, closed after the test."""
    opened = Bus(tidings_config)
    try:
        yield opened
    finally:
        opened.close()
