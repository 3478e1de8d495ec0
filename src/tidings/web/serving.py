"""Running the app: on uvicorn inside a command's event loop, stopped by the command's signals."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import socket
from collections.abc import Iterator

import uvicorn

from tidings.archive import Archive
from tidings.bus import Bus
from tidings.config import WebSection, listen_problem
from tidings.errors import ConfigError
from tidings.web import create_app

#: seconds requests in flight get once the server stops
GRACE = 2


def split_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8080`` for IPv6) as host and port; a ConfigError if it is neither."""
    problem = listen_problem(listen)
    if problem:
        raise ConfigError(f"listen {problem}")
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


def open_archive(bus: Bus) -> Archive:
    """The archive the page reads: the store ``[archive]`` configures (SQLite under ``[bus] home``
    without one): the one place that picks it."""
    stores = importlib.import_module("tidings.archive.stores")
    store: Archive = stores.open_archive(bus.config)
    return store


class _CancelledAtShutdown(logging.Filter):
    """uvicorn cancels the requests still running when the grace is over, and logs each one's
    CancelledError with its traceback: for a stream whose client stopped reading, that is the
    stop working as meant. Its own line ("Cancel N running task(s)") stays."""

    def filter(self, record: logging.LogRecord) -> bool:
        kind = record.exc_info[0] if record.exc_info else None
        return not (kind is not None and issubclass(kind, asyncio.CancelledError))


_QUIET_CANCELS = _CancelledAtShutdown()


class _Server(uvicorn.Server):
    """uvicorn without its own signal handlers: the command's (until_signalled) stop it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def run_web(
    bus: Bus, archive: Archive, settings: WebSection, stop: asyncio.Event, sock: socket.socket | None = None
) -> None:
    """Serve the page and the API on ``sock`` (else ``settings.listen``) until ``stop`` is set."""
    sock = sock or bind(settings.listen)
    logging.getLogger("uvicorn.error").addFilter(_QUIET_CANCELS)  # (once: a set of filters)
    app = create_app(bus, archive, settings)
    config = uvicorn.Config(app, log_level="warning", lifespan="off", timeout_graceful_shutdown=GRACE)
    server = _Server(config)
    serving = asyncio.create_task(server.serve(sockets=[sock]), name="web")
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait([serving, stopping], return_when=asyncio.FIRST_COMPLETED)
    app.state.live.close()
    server.should_exit = True
    stopping.cancel()
    try:
        await serving
    finally:
        sock.close()


def bind(listen: str) -> socket.socket:
    """The listening socket, bound here so that a taken port is one line of ours (exit 3)."""
    host, port = split_listen(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family)
    except OSError as exc:  # a name that resolves to nothing has a negative errno: its own text
        why = os.strerror(exc.errno) if exc.errno and exc.errno > 0 else str(exc.strerror or exc)
        raise ConfigError(f"cannot listen on {listen}: {why}") from None
