"""Secrets never leave the process as text: one function masks them in every message.

Every URL tidings puts into an error, a log line or the command line's output goes through
:func:`redact` (or :func:`mask_url`, the same for one URL): the password of a
``scheme://user:password@host`` becomes ``***`` (a lone ``token@host`` too), and so do the
values of query parameters that name a secret (``?password=``, ``&token=`` ...), and so does a
STOMP ``passcode:`` header (stomp.py logs the frames it sends at DEBUG). The CLI's
error line and its log handler apply it to whatever they print, so a library's message that
quotes a URL is masked as well.
"""

from __future__ import annotations

import logging
import re

MASK = "***"
#: a URL's scheme and what follows it up to a space or a quote; its userinfo is found in there
#: (a password typed with a '#', '?' or '/' in it, unencoded, still counts as one)
_AUTHORITY = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<authority>[^\s\"'<>]*)")
#: a query parameter whose value is a secret
_SECRET_PARAMETER = re.compile(
    r"(?P<name>[?&;](?:password|passwd|pass|pwd|secret|token|api[_-]?key|access[_-]?key|sasl[_.]password)=)"
    r"(?P<value>[^&#\s\"']*)",
    re.IGNORECASE,
)


#: a STOMP frame's password header, as stomp.py logs the CONNECT frame it sends at DEBUG
#: (to the end of its line, or of the escaped one in a logged frame: a passcode may hold spaces or quotes)
_STOMP_PASSCODE = re.compile(r"(?P<name>\b(?i:passcode):)(?P<value>(?:(?!\\[nr])[^\r\n])*)")


def _mask_authority(match: re.Match[str]) -> str:
    rest = match["authority"]
    userinfo, at, host = rest.rpartition("@")  # the last '@': an unencoded one may sit in a password
    user, colon, _ = userinfo.partition(":")
    # no userinfo, or an '@' further on in a path or a query ("host/a@b") when no ':' comes first
    if not at or ("/" in user or "?" in user or "#" in user) or (not colon and "/" in userinfo):
        return _mask_authority_before_path(match)
    masked = f"{user}:{MASK}" if colon else MASK  # "token@host": the whole userinfo is the secret
    return f"{match['scheme']}{masked}@{host}"


def _mask_authority_before_path(match: re.Match[str]) -> str:
    """The plain case: the userinfo is in the authority proper, before any path or query."""
    rest = match["authority"]
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    authority, tail = rest[:end], rest[end:]
    userinfo, at, host = authority.rpartition("@")
    if not at:
        return match[0]
    user, colon, _ = userinfo.partition(":")
    masked = f"{user}:{MASK}" if colon else MASK
    return f"{match['scheme']}{masked}@{host}{tail}"


def redact(text: str) -> str:
    """``text`` with every URL password and secret query value replaced by ``***``."""
    if "://" not in text and "=" not in text and "passcode:" not in text:
        return text  # nothing that could hold one: the common case, free
    text = _AUTHORITY.sub(_mask_authority, text)
    text = _STOMP_PASSCODE.sub(lambda m: m["name"] + MASK, text)
    return _SECRET_PARAMETER.sub(lambda m: m["name"] + MASK, text)


def mask_url(url: object) -> str:
    """A URL as it may be shown. Known to be one URL (a configured one), its password is
    everything between the user's ':' and the last '@', whatever characters it holds (quotes
    and spaces too, which end a URL found in running text)."""
    text = str(url)
    scheme, sep, rest = text.partition("://")
    userinfo, at, host = rest.rpartition("@")
    user, colon, _ = userinfo.partition(":")
    if sep and at and not any(c in user for c in "/?#"):
        text = f"{scheme}://{f'{user}:{MASK}' if colon else MASK}@{host}"
    return redact(text)


class RedactingFilter(logging.Filter):
    """Masks what a log record says (its message with arguments, and its exception text)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True
