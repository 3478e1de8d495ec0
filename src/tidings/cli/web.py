"""``tidings web``: the query API and the page over the archive; ``tidings serve`` adds them too."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import msgspec
import typer

from tidings.bus import Bus
from tidings.cli import app, err
from tidings.cli.commands import ConfigOpt, LogOpt, load_bus, until_signalled
from tidings.config import WebSection, listen_problem
from tidings.errors import ConfigError

ListenOpt = Annotated[
    str | None,
    typer.Option(
        "--listen",
        metavar="HOST:PORT",
        help="Address to listen on (default: [web] listen, else 127.0.0.1:8080).",
        show_default=False,
    ),
]


def web_settings(bus: Bus, listen: str | None = None) -> WebSection:
    settings = bus.config.web or WebSection()
    if listen is None:
        return settings
    problem = listen_problem(listen)
    if problem:
        raise ConfigError(f"--listen {problem}")
    return msgspec.structs.replace(settings, listen=listen)


def web_runner(bus: Bus, settings: WebSection) -> Callable[[asyncio.Event], Awaitable[None]]:
    """``run(stop)``: the page and API until ``stop``, the archive opened and closed around it."""
    try:
        from tidings.web.serving import bind, open_archive, run_web
    except ImportError as exc:
        raise ConfigError(f"the web page needs {exc.name}: pip install 'tidings[web]'") from None
    sock = bind(settings.listen)  # a bad or taken address is told before anything starts
    try:
        archive = open_archive(bus)
    except BaseException:
        sock.close()
        raise

    async def run(stop: asyncio.Event) -> None:
        try:
            await run_web(bus, archive, settings, stop, sock)
        finally:
            archive.close()

    return run


def warn_if_nothing_archives(bus: Bus) -> None:
    """Without [archive] nothing fills the archive: say so, rather than show an empty page."""
    if bus.config.archive is None:
        err.print(
            "tidings: warning: no [archive] in the config: nothing archives events, so this shows "
            "only what an earlier [archive] stored (docs/archive.md)",
            highlight=False,
            markup=False,
        )


@app.command()
def web(listen: ListenOpt = None, config: ConfigOpt = None, log_level: LogOpt = None) -> None:
    """Serve the query API (datagrepper's /raw and /id, /v2/search, /stream) and the web page.

    Public events are readable by anyone who reaches the address; private ones need [web]
    read_token (or $TIDINGS_WEB_READ_TOKEN), retry and drop need admin_token
    ($TIDINGS_WEB_ADMIN_TOKEN). Ctrl-C or SIGTERM stops it.

    Example: tidings web --listen 0.0.0.0:8080
    """
    bus = load_bus(config, log_level)
    settings = web_settings(bus, listen)
    run: Any = web_runner(bus, settings)
    warn_if_nothing_archives(bus)
    err.print(f"serving the page on http://{settings.listen}/ — Ctrl-C to stop", highlight=False)
    asyncio.run(until_signalled(run))
