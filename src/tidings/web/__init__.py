"""The query API and the web page over the archive (``tidings web``; ``tidings serve`` with ``[web]``).

:func:`create_app` builds a Starlette app from a Bus (connectors, consumers, formats), an
:class:`~tidings.archive.Archive` (any store: the app reads it only through the protocol) and
the ``[web]`` settings. Starlette, uvicorn and jinja2 are the ``web`` extra.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.middleware import Middleware

from tidings.archive import Archive
from tidings.bus import Bus
from tidings.config import WebSection
from tidings.web import api, pages
from tidings.web.access import RefuseUnknownBearer, SecurityHeaders, Tokens
from tidings.web.stream import Live

__all__ = ["Live", "create_app"]


def create_app(bus: Bus, archive: Archive, settings: WebSection | None = None) -> Starlette:
    """The app; ``app.state.live.wake()`` after an ingest shows the new events at once."""
    app = Starlette(
        routes=[*api.ROUTES, *pages.ROUTES],
        middleware=[Middleware(SecurityHeaders), Middleware(RefuseUnknownBearer)],
    )
    app.state.bus = bus
    app.state.archive = archive
    app.state.tokens = Tokens.of(settings or WebSection())
    app.state.live = Live()
    return app
