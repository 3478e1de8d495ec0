"""The HTML pages: live stream, search, one event, connectors, consumer queues, login.

Templates autoescape every value; the pages carry no inline script (the CSP forbids it): the
little JavaScript there is lives in ``static/app.js``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from jinja2 import Environment, FileSystemLoader
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from tidings.archive import Archive
from tidings.bus import Bus
from tidings.errors import TidingsError
from tidings.event import pretty
from tidings.outbox import MAX_SEQ
from tidings.web import ops
from tidings.web import query as q
from tidings.web.access import TOKEN_COOKIE, Role, bearer_token, csrf_ok, csrf_token, role_of

HERE = Path(__file__).parent
TEMPLATES = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=True)
#: the search page's filters, in the order its form shows them
FILTERS = ("topic", "not_topic", "category", "user", "package", "contains", "start", "end")


def render(request: Request, name: str, status: int = 200, **values: Any) -> HTMLResponse:
    role = role_of(request)
    html = TEMPLATES.get_template(name).render(
        request=request,
        role=role.name.lower(),
        is_admin=role >= Role.ADMIN,
        csrf=csrf_token(request),
        path=request.url.path,
        **values,
    )
    return HTMLResponse(html, status_code=status, headers={"cache-control": "no-store"})


def _bus(request: Request) -> Bus:
    bus: Bus = request.app.state.bus
    return bus


def _archive(request: Request) -> Archive:
    archive: Archive = request.app.state.archive
    return archive


async def live(request: Request) -> Response:
    return render(request, "live.html", topic=request.query_params.get("topic", ""))


async def search(request: Request) -> Response:
    params = request.query_params
    # shown back in the form: a NUL is no character a page may hold (the query refuses it anyway)
    values = {name: params.get(name, "").replace("\x00", "\ufffd") for name in FILTERS}
    page, problem = None, ""
    if any(values.values()) or "cursor" in params or params.get("delta"):  # delta: a link's "last hour"
        try:
            query = q.query_of(params, q.time_range(params), include_private=role_of(request) >= Role.READER)
            page = await run_in_threadpool(
                lambda: _archive(request).search(query, limit=50, cursor=params.get("cursor") or None)
            )
        except (q.BadRequest, ValueError) as exc:
            problem = str(exc)
    following = ""
    if page is not None and page.next_cursor:
        following = f"{request.url.path}?{request.url.include_query_params(cursor=page.next_cursor).query}"
    return render(
        request,
        "search.html",
        400 if problem else 200,
        values=values,
        page=page,
        problem=problem,
        following=following,
    )


async def event(request: Request) -> Response:
    event_id = request.path_params["event_id"]
    private = role_of(request) >= Role.READER
    found = await run_in_threadpool(lambda: _archive(request).get(event_id, include_private=private))
    if found is None:
        return render(request, "error.html", 404, message=f"No event {event_id} (or not yours to see).")
    return render(
        request,
        "event.html",
        item=found,
        body=pretty(found.event.body).decode(),
        headers=found.event.headers,
        wires=ops.wire_forms(_bus(request), found.event),
    )


async def connectors(request: Request) -> Response:
    private = role_of(request) >= Role.READER
    views = await run_in_threadpool(lambda: ops.connectors(_bus(request), include_private=private))
    return render(request, "connectors.html", connectors=views, when=ops.when)


async def consumers(request: Request) -> Response:
    views = await ops.consumer_queues(_bus(request))
    return render(request, "consumers.html", queues=views)


# -- forms ---------------------------------------------------------------------------------


#: the largest form our pages send is a token and a few seqs
FORM_LIMIT = 64 * 1024


async def form(request: Request) -> dict[str, list[str]]:
    """An urlencoded form (the only kind our pages send), without a multipart parser; read up to
    :data:`FORM_LIMIT` bytes (anyone may post: a 400 MB body was read whole before any check)."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > FORM_LIMIT:
            raise HTTPException(413, f"a form is at most {FORM_LIMIT} bytes")
    return parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)


def refused(request: Request, message: str) -> Response:
    return render(request, "error.html", 403, message=message)


async def admin_form(request: Request) -> dict[str, list[str]] | Response:
    """The form, if the request has the admin token and, when that came in the cookie, our CSRF
    token; else a 403. (A browser sends a cookie to any site's form, never an Authorization
    header: a program with ``Authorization: Bearer`` needs no CSRF token.)"""
    fields = await form(request)
    by_header = bool(bearer_token(request.headers.get("authorization", "")))
    if not by_header and not csrf_ok(request, (fields.get("csrf") or [""])[0]):
        return refused(request, "This form is stale or came from another site (CSRF check failed).")
    if role_of(request) < Role.ADMIN:
        return refused(request, "Retrying, dropping and replaying need the admin token: log in first.")
    return fields


def _seqs(fields: dict[str, list[str]]) -> list[int] | str | None:
    """The entries a form names; None for all of them (no seq given); the bad value as text if
    one is not a seq (a mistyped seq must not act on every entry)."""
    values = fields.get("seq", [])
    for value in values:
        if not (value.isascii() and value.isdigit() and 0 < int(value) <= MAX_SEQ):
            return value
    return [int(v) for v in values] or None


async def connector_action(request: Request) -> Response:
    fields = await admin_form(request)
    if isinstance(fields, Response):
        return fields
    bus, name, action = _bus(request), request.path_params["name"], request.path_params["action"]
    if name not in bus.config.connectors or action not in ("retry", "drop"):
        return render(request, "error.html", 404, message=f"No connector {name} or action {action}.")
    seqs = _seqs(fields)
    if isinstance(seqs, str):
        return render(request, "error.html", 400, message=f"{seqs[:40]!r} is not an entry's seq.")
    if action == "retry":
        await run_in_threadpool(lambda: bus.outbox.retry_dead(name, seqs))
    else:
        table = "backlog" if (fields.get("table") or ["dead"])[0] == "backlog" else "dead"
        await run_in_threadpool(lambda: bus.outbox.drop(name, table, seqs))
    return RedirectResponse(f"/connectors#connector-{name}", status_code=303)


async def replay_event(request: Request) -> Response:
    """Send one archived event again to the connectors (ids kept, marked as replayed): admin only."""
    from tidings.replay import marked, send_again

    fields = await admin_form(request)
    if isinstance(fields, Response):
        return fields
    bus, event_id = _bus(request), request.path_params["event_id"]
    found = await run_in_threadpool(lambda: _archive(request).get(event_id, include_private=True))
    if found is None:
        return render(request, "error.html", 404, message=f"No event {event_id}.")
    chosen = [name for name in fields.get("connector", []) if name in bus.config.connectors] or None
    try:
        counts = await send_again(bus, [marked(found.event)], chosen)
    except TidingsError as exc:
        return render(request, "error.html", 502, message=f"The replay failed: {exc}")
    said = "; ".join(f"{name}: sent {sent} of {sent + failed}" for name, (sent, failed) in counts.items())
    return render(
        request,
        "error.html",
        200,
        message=f"Replayed {event_id} (id kept). {said or 'No connector takes it.'}",
    )


async def login(request: Request) -> Response:
    if request.method in ("GET", "HEAD"):  # Starlette answers HEAD with the GET's headers
        return render(request, "login.html", problem="")
    fields = await form(request)
    if not csrf_ok(request, (fields.get("csrf") or [""])[0]):
        return refused(request, "This form is stale or came from another site (CSRF check failed).")
    token = (fields.get("token") or [""])[0]
    if request.app.state.tokens.role(token) == Role.PUBLIC:
        return render(request, "login.html", 403, problem="That token is not one of this page's tokens.")
    response = RedirectResponse("/", status_code=303)
    response.set_cookie(
        TOKEN_COOKIE, token, httponly=True, samesite="strict", secure=request.url.scheme == "https"
    )
    return response


async def logout(request: Request) -> Response:
    fields = await form(request)
    if not csrf_ok(request, (fields.get("csrf") or [""])[0]):
        return refused(request, "This form is stale or came from another site (CSRF check failed).")
    response = RedirectResponse("/", status_code=303)
    response.delete_cookie(TOKEN_COOKIE)
    return response


ROUTES = [
    Route("/", live),
    Route("/search", search),
    # ids from other systems may hold a '/' (a path, a URL): the whole rest of the path is the id
    Route("/event/{event_id:path}/replay", replay_event, methods=["POST"]),
    Route("/event/{event_id:path}", event),
    Route("/connectors", connectors),
    Route("/connectors/{name}/{action:str}", connector_action, methods=["POST"]),
    Route("/consumers", consumers),
    Route("/login", login, methods=["GET", "POST"]),
    Route("/logout", logout, methods=["POST"]),
    Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
]
