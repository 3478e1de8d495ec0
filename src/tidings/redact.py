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
#: a query parameter whose value is a secret, or a ``key=value`` one (a PostgreSQL connection
#: string: ``host=db password='a b'``), its value quoted or not
_SECRET_PARAMETER = re.compile(
    r"(?P<name>(?:(?<=[?&;\s])|^)"
    r"(?:password|passwd|pass|pwd|secret|token|api[_-]?key|access[_-]?key|sasl[_.]password)\s*=\s*)"
    r"(?P<value>'(?:[^'\\]|\\.)*'?|[^&#\s\"']*)",
    re.IGNORECASE,
)


#: ``user:password@host`` with no ``scheme://`` before it (a URL typed without it, quoted back
#: by a library: ``guest:secret@localhost``, ``postgres:/user:pw@db``)
_BARE_USERINFO = re.compile(r"(?P<user>(?<![\w.~%+:-])[\w.~%+-]+:)(?P<password>[^\s\"'<>@/]+)(?=@[\w\[])")

#: a STOMP frame's password header, as stomp.py logs the CONNECT frame it sends at DEBUG
#: (to the end of its line, or of the escaped one in a logged frame: a passcode may hold spaces or quotes)
_STOMP_PASSCODE = re.compile(r"(?P<name>\b(?i:passcode):)(?P<value>(?:(?!\\[nr])[^\r\n])*)")


def _masked_userinfo(rest: str) -> str | None:
    """``rest`` (what follows ``scheme://``) with its password masked, or None when it holds no
    userinfo: no '@', or the last '@' is in a path or a query (``host/a@b``). The last '@' counts:
    an unencoded one may sit in a password."""
    userinfo, at, host = rest.rpartition("@")
    user, colon, _ = userinfo.partition(":")
    if not at or any(c in user for c in "/?#") or (not colon and "/" in userinfo):
        return None
    return f"{user}:{MASK}@{host}" if colon else f"{MASK}@{host}"  # "token@host": all of it secret


def _mask_authority(match: re.Match[str]) -> str:
    rest = match["authority"]
    masked = _masked_userinfo(rest)
    if masked is None:  # then only the authority proper, before any path or query, may hold one
        end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
        masked = _masked_userinfo(rest[:end])
        if masked is None:
            return match[0]
        masked += rest[end:]
    return f"{match['scheme']}{masked}"


def redact(text: str) -> str:
    """``text`` with every URL password and secret query value replaced by ``***``."""
    if "://" not in text and "=" not in text and "passcode:" not in text and "@" not in text:
        return text  # nothing that could hold one: the common case, free
    text = _AUTHORITY.sub(_mask_authority, text)
    text = _BARE_USERINFO.sub(lambda m: m["user"] + MASK, text)
    text = _STOMP_PASSCODE.sub(lambda m: m["name"] + MASK, text)
    return _SECRET_PARAMETER.sub(lambda m: m["name"] + MASK, text)


def mask_url(url: object) -> str:
    """A URL as it may be shown. Known to be one URL (a configured one), its password is
    everything between the user's ':' and the last '@', whatever characters it holds (quotes
    and spaces too, which end a URL found in running text)."""
    text = str(url)
    scheme, sep, rest = text.partition("://")
    # "amqps//u:p@h", "guest:secret@host": a URL with a typo, the host only (a libpq "key=value"
    # string, whose password may hold an '@', is masked by its keys below)
    if not sep and "@" in text and "=" not in text:
        return redact(f"{MASK}@{text.rpartition('@')[2]}")
    masked = _masked_userinfo(rest) if sep else None
    return redact(f"{scheme}://{masked}" if masked is not None else text)


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
