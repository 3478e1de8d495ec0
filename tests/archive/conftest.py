"""The archive's stores, each test on a fresh one: SQLite in a temporary folder, PostgreSQL in a
schema of its own on 127.0.0.1:5432 (dropped afterwards). PostgreSQL down: skipped here, a
failure with CI=true (tests/conftest.py's require_service)."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require_service
from tidings.archive import Archive

PG_URL = os.environ.get("TIDINGS_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
_schemas = itertools.count()


def sqlite_archive(path: Path) -> Archive:
    from tidings.archive.sqlite import SqliteArchive

    return SqliteArchive(path / "archive.db")


@pytest.fixture
def pg_schema() -> Iterator[str]:
    """A schema no other test (or test run) uses, dropped when the test ends."""
    require_service("127.0.0.1", 5432, "PostgreSQL")
    import psycopg

    name = f"tidings_test_{os.getpid()}_{next(_schemas)}"
    yield name
    with psycopg.connect(PG_URL, autocommit=True) as db:
        db.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    return request.param


@pytest.fixture
def archive(store: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Archive]:
    if store == "sqlite":
        opened = sqlite_archive(tmp_path)
    else:
        from tidings.archive.postgres import PostgresArchive

        opened = PostgresArchive(PG_URL, schema=request.getfixturevalue("pg_schema"))
    yield opened
    opened.close()
