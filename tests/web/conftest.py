"""The web app's fixtures: the archive (one place picks the store), a bus, the app, a live server."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
import uvicorn

from tests.archive.conftest import pg_schema  # noqa: F401 - the fixture, for the PostgreSQL store
from tests.conftest import embedded_config
from tidings.archive import Archive
from tidings.bus import Bus
from tidings.config import ConsumerConfig, WebSection
from tidings.web import create_app

READ_TOKEN = "read-token-for-tests"
ADMIN_TOKEN = "admin-token-for-tests"


@pytest.fixture(params=["sqlite", "postgresql"])
def archive(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Archive]:
    """The store the app reads: each real store (tests/archive)."""
    store: Archive
    if request.param == "sqlite":
        from tidings.archive.sqlite import SqliteArchive

        store = SqliteArchive(tmp_path / "archive.db")
    else:
        from tests.archive.conftest import PG_URL
        from tidings.archive.postgres import PostgresArchive

        store = PostgresArchive(PG_URL, schema=request.getfixturevalue("pg_schema"))
    yield store
    store.close()


@pytest.fixture
def web_bus(tmp_path: Path) -> Iterator[Bus]:
    config = embedded_config(tmp_path / "home", source="test")
    # one consumer, so that the consumers page has a queue to show
    config = msgspec.structs.replace(config, consumers={"triage": ConsumerConfig(transport="local")})
    b = Bus(config)
    yield b
    b.close()


@pytest.fixture
def settings() -> WebSection:
    return WebSection(read_token=READ_TOKEN, admin_token=ADMIN_TOKEN)


@pytest.fixture
def app(web_bus: Bus, archive: Archive, settings: WebSection):
    return create_app(web_bus, archive, settings)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def server(app) -> Iterator[str]:
    """The app on a real uvicorn in a thread: streams and browsers need a real socket."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    running = uvicorn.Server(config)
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not running.started:
        if time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    running.should_exit = True
    running.force_exit = True  # open event streams would otherwise hold the shutdown
    thread.join(10)
