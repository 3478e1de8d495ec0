"""The query API and the web page over the archive (``tidings web``; ``tidings serve`` with ``[web]``).

:func:`create_app` builds a Starlette app from a Bus (connectors, consumers, formats), an
:class:`~tidings.archive.Archive` (any store: the app reads it only through the protocol) and
the ``[web]`` settings. Starlette, uvicorn and jinja2 are the ``web`` extra.
"""

from __future__ import annotations

import logging

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse

from tidings.archive import Archive
from tidings.bus import Bus
from tidings.config import WebSection
from tidings.errors import StorageError
from tidings.web import api, pages
from tidings.web.access import RefuseUnknownBearer, SecurityHeaders, Tokens
from tidings.web.stream import Live

__all__ = ["Live", "create_app"]
log = logging.getLogger(__name__)


def create_app(bus: Bus, archive: Archive, settings: WebSection | None = None) -> Starlette:
    """The app; ``app.state.live.close()`` ends its streams (the server is stopping)."""
    app = Starlette(
        routes=[*api.ROUTES, *pages.ROUTES],
        middleware=[Middleware(SecurityHeaders), Middleware(RefuseUnknownBearer)],
        exception_handlers={StorageError: _store_unavailable},
    )
    app.state.bus = bus
    app.state.archive = archive
    app.state.tokens = Tokens.of(settings or WebSection())
    app.state.live = Live()
    return app


async def _store_unavailable(request: Request, exc: Exception) -> JSONResponse:
    """The archive could not answer (a PostgreSQL server away): 503 and why, in one line; the
    next request tries again (the store opens a broken connection anew)."""
    log.warning("web: %s %s: %s", request.method, request.url.path, exc)
    return JSONResponse({"error": f"the archive cannot answer now: {exc}"}, status_code=503)
