"""The JSON API: datagrepper's /raw and /id, /v2/search with keyset cursors, /stream (SSE)."""

from __future__ import annotations

import dataclasses
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tidings.archive import Archive, Archived
from tidings.event import dumps
from tidings.textheaders import whole_number
from tidings.web import query as q
from tidings.web.access import Role, role_of
from tidings.web.stream import sse


class Json(JSONResponse):
    """orjson: the same JSON the rest of tidings writes (times, big integers)."""

    def render(self, content: Any) -> bytes:
        return dumps(content)


def _archive(request: Request) -> Archive:
    archive: Archive = request.app.state.archive
    return archive


def _private(request: Request) -> bool:
    return role_of(request) >= Role.READER


SEARCH_PARAMETERS = q.FILTERS | {"limit", "order", "cursor"}
STREAM_PARAMETERS = q.FILTERS | {"backlog", "last_event_id"}


def _given(params: Any) -> dict[str, Any]:
    """The parameters as the request gave them: a repeated one as the list of its values."""
    given: dict[str, Any] = {}
    for key in params:
        values = params.getlist(key)
        given[key] = values if len(values) > 1 else values[0]
    return given


def bad(message: str, **extra: Any) -> Json:
    return Json({"error": message, **extra}, status_code=400)


def body_refused(request: Request) -> Json | None:
    """A POST with a body: refused (400). Its parameters, like datagrepper's, are read from the
    query string alone, and a form's filters left unread would widen the search to everything."""
    if request.method != "POST":
        return None
    length = request.headers.get("content-length", "0").strip()
    if length in ("", "0") and "transfer-encoding" not in request.headers:
        return None
    return bad(
        "POST takes its parameters in the query string, as GET does (the body is not read): "
        f"{request.url.path}?topic=...&rows_per_page=..."
    )


async def raw(request: Request) -> Response:
    """datagrepper's /raw: numbered pages, an exact total, its response shape."""
    params = request.query_params
    if (refused := body_refused(request)) is not None:
        return refused
    try:
        q.refuse_unsupported(params)
        window = q.time_range(params)
        page = q.integer(params, "page", 1, 1, q.MAX_PAGE)
        rows = q.integer(params, "rows_per_page", q.ROWS_PER_PAGE, 1, q.MAX_ROWS_PER_PAGE)
        order = q.order_of(params)
        query = q.query_of(params, window, include_private=_private(request))
    except q.BadRequest as exc:
        return bad(str(exc), arguments=_given(params))
    found = await run_in_threadpool(
        lambda: _archive(request).numbered(query, page=page, rows_per_page=rows, order=order)
    )
    arguments = {
        "start": window.start,
        "end": window.end,
        "delta": window.delta,
        "topics": list(query.topics),
        "not_topics": list(query.not_topics),
        "categories": list(query.categories),
        "users": list(query.users),
        "packages": list(query.packages),
        "contains": list(query.contains),
        "page": page,
        "rows_per_page": rows,
        "order": order,
    }
    messages, size = [], 0
    for item in found.items:  # each written once, counted as it is (a page is bounded by bytes)
        messages.append(dumps(q.raw_message(item)))
        size += len(messages[-1])
        if size > q.PAGE_BYTES and len(messages) > 1:
            return bad(
                f"page {page} of {rows} rows holds more than {q.PAGE_BYTES // 2**20} MiB of events; "
                f"ask for fewer rows_per_page (at most {len(messages) - 1} of these fit), or page "
                "through /v2/search, whose pages end early by bytes",
                arguments=_given(params),
            )
    rest = {"count": len(messages), "pages": found.pages, "total": found.total, "arguments": arguments}
    return _listing("raw_messages", messages, rest)


async def by_id(request: Request) -> Response:
    """datagrepper's /id?id=: one message in /raw's form; private ones need the read token."""
    if (refused := body_refused(request)) is not None:
        return refused
    event_id = request.query_params.get("id", "")
    if not event_id:
        return bad("missing_argument", argument="id")
    found = await run_in_threadpool(
        lambda: _archive(request).get(event_id, include_private=_private(request))
    )
    if found is None:  # a private event is as absent as an unknown one: its existence is private too
        return Json({"error": "not_found"}, status_code=404)
    return Json(q.raw_message(found))


async def search(request: Request) -> Response:
    """Keyset pages (``cursor`` from the previous page's ``next_cursor``), no OFFSET, no count."""
    params = request.query_params
    try:
        q.refuse_unknown(params, SEARCH_PARAMETERS)
        limit = q.integer(params, "limit", q.SEARCH_LIMIT, 1, q.MAX_SEARCH_LIMIT)
        order = q.order_of(params)
        query = q.query_of(params, q.time_range(params), include_private=_private(request))
    except q.BadRequest as exc:
        return bad(str(exc))
    cursor = params.get("cursor") or None
    try:
        kept, next_cursor, estimate = await q.budgeted_page(
            _archive(request), query, _encoded, limit=limit, cursor=cursor, order=order
        )
    except ValueError as exc:  # a cursor the store cannot read
        return bad(f"cursor: {exc}")
    following = None
    if next_cursor:
        # relative: the Host header is the client's to say, not a place to send the next request
        following = f"{request.url.path}?{request.url.include_query_params(cursor=next_cursor).query}"
    rest = {"next_cursor": next_cursor, "next": following, "estimated_total": estimate}
    return _listing("items", [data for _, data in kept], rest)


def _listing(key: str, encoded: list[bytes], rest: dict[str, Any]) -> Response:
    """``{key: [...], **rest}`` with the items as they were encoded while their bytes were counted
    (not a second time)."""
    return Response(
        b'{"%s":[' % key.encode() + b",".join(encoded) + b"]," + dumps(rest)[1:],
        media_type="application/json",
    )


def _encoded(item: Archived) -> bytes:
    return dumps(q.envelope(item))


def resume_point(request: Request) -> int | None:
    """``Last-Event-ID`` (a reconnecting browser sends it) or ``?last_event_id=``: a seq."""
    raw = request.headers.get("last-event-id") or request.query_params.get("last_event_id") or ""
    if not raw:
        return None
    seq = whole_number(raw)
    if seq is None or seq >= 2**63:
        raise q.BadRequest(f"Last-Event-ID must be an event's seq, not {raw[:40]!r}")
    return seq


async def stream(request: Request) -> Response:
    """SSE: ``topic`` patterns and the other filters of /v2/search, from ``Last-Event-ID`` on
    (else the last ``backlog`` events, default 0, then what comes)."""
    params = request.query_params
    try:
        q.refuse_unknown(params, STREAM_PARAMETERS)
        window = q.time_range(params)
        if not params.get("end") and not params.get("start"):
            # "the last hour" on a live stream: from then on, and what comes (an end that
            # start + delta gives, as an end given, stays: the stream's filters are the search's)
            window = dataclasses.replace(window, end=None)
        query = q.query_of(params, window, include_private=_private(request))
        after = resume_point(request)
        count = q.integer(params, "backlog", 0, 0, q.MAX_SEARCH_LIMIT)
    except q.BadRequest as exc:
        return bad(str(exc))
    body = sse(_archive(request), request.app.state.live, query, after, count)
    headers = {"cache-control": "no-store", "x-accel-buffering": "no"}
    return StreamingResponse(body, media_type="text/event-stream", headers=headers)


ROUTES = [
    Route("/raw", raw, methods=["GET", "POST"]),
    Route("/raw/", raw, methods=["GET", "POST"]),
    Route("/id", by_id, methods=["GET", "POST"]),
    Route("/id/", by_id, methods=["GET", "POST"]),
    Route("/v2/search", search),
    Route("/stream", stream),
]
