"""Who may see and do what: tokens, the CSRF check and the security headers.

Reading public events needs nothing. The read token shows private events too; the admin
token allows that and the actions (retry, drop). A token comes as ``Authorization: Bearer``
(programs) or in the cookie the login form sets (the page). A form that changes something
also carries a CSRF token equal to the one in its cookie (double submit): another site can
make a browser send our cookies, but it cannot read them to put the same value in the form.
"""

from __future__ import annotations

import enum
import hmac
import os
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tidings.config import WebSection

READ_TOKEN_ENV = "TIDINGS_WEB_READ_TOKEN"
ADMIN_TOKEN_ENV = "TIDINGS_WEB_ADMIN_TOKEN"
TOKEN_COOKIE = "tidings_token"
CSRF_COOKIE = "tidings_csrf"
CSRF_FIELD = "csrf"

#: scripts and styles only from files we serve: an injected <script> or inline handler never runs
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


class Role(enum.IntEnum):
    """What a request may do; each role includes the ones below it."""

    PUBLIC = 0
    READER = 1
    ADMIN = 2


@dataclass(frozen=True, slots=True)
class Tokens:
    read: str = ""
    admin: str = ""

    @classmethod
    def of(cls, settings: WebSection) -> Tokens:
        """The configured tokens; the environment fills those the file leaves empty."""
        return cls(
            settings.read_token or os.environ.get(READ_TOKEN_ENV, ""),
            settings.admin_token or os.environ.get(ADMIN_TOKEN_ENV, ""),
        )

    def role(self, given: str) -> Role:
        # compare_digest: how long a comparison takes says nothing about how much of a token matched
        if given and self.admin and hmac.compare_digest(given.encode(), self.admin.encode()):
            return Role.ADMIN
        if given and self.read and hmac.compare_digest(given.encode(), self.read.encode()):
            return Role.READER
        return Role.PUBLIC


def bearer_token(authorization: str) -> str:
    """The token of an ``Authorization: Bearer TOKEN`` header's value, or ""."""
    scheme, _, value = authorization.partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""


def given_token(request: Request) -> str:
    return bearer_token(request.headers.get("authorization", "")) or request.cookies.get(TOKEN_COOKIE, "")


def role_of(request: Request) -> Role:
    tokens: Tokens = request.app.state.tokens
    return tokens.role(given_token(request))


def csrf_token(request: Request) -> str:
    """The CSRF token forms carry: the cookie's, or a new one (set by :class:`SecurityHeaders`)."""
    existing = request.cookies.get(CSRF_COOKIE, "")
    if existing:
        return existing
    fresh = request.scope.setdefault("tidings.csrf", secrets.token_urlsafe(32))
    return str(fresh)


def csrf_ok(request: Request, submitted: str) -> bool:
    cookie = request.cookies.get(CSRF_COOKIE, "")
    return bool(cookie) and hmac.compare_digest(cookie.encode(), submitted.encode())


class RefuseUnknownBearer:
    """A program that sends a Bearer token none of ours matches gets 401, not the public view:
    a mistyped or rotated token should fail loudly, not quietly hide the private events. (A
    stale cookie stays a public visit: the page offers its login.)"""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            given = bearer_token(Headers(scope=scope).get("authorization", ""))
            tokens: Tokens = scope["app"].state.tokens
            if given and tokens.role(given) == Role.PUBLIC:
                refusal = JSONResponse(
                    {"error": "the Bearer token is not one of this server's tokens"},
                    status_code=401,
                    headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
                )
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)


class SecurityHeaders:
    """Adds the CSP and its companions to every response, and the CSRF cookie when one was made."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self.app(scope, receive, self._sender(scope, send))

    def _sender(self, scope: Scope, send: Send) -> Callable[[Message], Awaitable[None]]:
        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += SECURITY_HEADERS
                fresh = scope.get("tidings.csrf")
                if fresh:
                    cookie = f"{CSRF_COOKIE}={fresh}; Path=/; SameSite=Strict; HttpOnly"
                    if scope.get("scheme") == "https":
                        cookie += "; Secure"
                    headers.append((b"set-cookie", cookie.encode()))
                message = {**message, "headers": headers}
            await send(message)

        return sending
