"""Wire messages as Kafka records, and back: topics, keys, headers (no Kafka library needed).

A record carries the message body as its value and, following the CloudEvents Kafka binding
in binary mode, its attributes as headers: a format's own headers as they are (the native
format's ``ce_*``), ``content-type``, and what Kafka has no field for under ``x-tidings-``
names — the routing key (a topic holds many), the message id, CC keys. Header values are
bytes: typed values travel as JSON (:mod:`tidings.textheaders`).

Which topic a message goes to is a template: ``{exchange}`` (the default: one topic per
connector, the routing key in a header) or words of the routing key (``bugzilla.{0}``: one
topic per first word). Kafka's topic names are 1 to 249 of ``[a-zA-Z0-9._-]``, and neither
``.`` nor ``..``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any
from urllib.parse import unquote

from tidings.errors import InvalidEvent
from tidings.event import dumps, loads
from tidings.redact import mask_url
from tidings.textheaders import from_text, to_bytes, utc_moment
from tidings.transport import WireMessage

ROUTING_KEY_HEADER = "x-tidings-routing-key"
MESSAGE_ID_HEADER = "x-tidings-message-id"
CC_HEADER = "x-tidings-cc"
EXCHANGE_HEADER = "x-tidings-exchange"
CONTENT_TYPE_HEADER = "content-type"
CONTENT_ENCODING_HEADER = "content-encoding"
PROPERTIES_HEADER = "x-tidings-properties"
#: when a retried message is due again (epoch milliseconds), on a retry topic
DUE_HEADER = "x-tidings-due"
#: a retry wished for later than the longest retry topic waits goes round it again until then
NOT_BEFORE_HEADER = "x-tidings-not-before"
_OWN = (
    ROUTING_KEY_HEADER,
    MESSAGE_ID_HEADER,
    CC_HEADER,
    EXCHANGE_HEADER,
    CONTENT_TYPE_HEADER,
    CONTENT_ENCODING_HEADER,
    PROPERTIES_HEADER,
    DUE_HEADER,
    NOT_BEFORE_HEADER,
)

_TOPIC = re.compile(r"[a-zA-Z0-9._-]{1,249}")
#: host:port, an IPv6 address in brackets ([::1]:9092)
_HOST_PORT = re.compile(r"(?:[A-Za-z0-9.\-]+|\[[0-9A-Fa-f:.]+\]):\d{1,5}")
_PLACEHOLDER = re.compile(r"\{(exchange|\d+)\}")
KEYS = ("subject", "id", "none", "header:NAME", "body:PATH")


#: the topics tidings makes for a consumer's queue: its retry topics, its dead letters and those
#: dealt with (``<queue>.retry.<n>s``, ``<queue>.dead``, ``<queue>.dead.handled``)
_QUEUE_TOPIC = re.compile(r".+\.(retry\.[0-9]+s|dead|dead\.handled)")


def is_queue_topic(name: str) -> bool:
    """Is ``name`` one of the topics tidings makes for a consumer's queue (not an event topic)?"""
    return _QUEUE_TOPIC.fullmatch(name) is not None


def topic_problem(name: str) -> str:
    """Why ``name`` is not a Kafka topic name, or ""."""
    if _TOPIC.fullmatch(name) and name not in (".", ".."):
        return ""
    return f"{name!r} is not a Kafka topic name (1 to 249 of letters, digits, '.', '_', '-'; not '.' or '..')"


# -- where a message goes ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TopicTemplate:
    """``{exchange}`` and ``{0}``, ``{1}``... (routing key words) in a topic name."""

    template: str
    #: does the topic depend on the routing key (else it is one topic per exchange)?
    uses_words: bool = field(init=False)

    def __post_init__(self) -> None:
        uses = any(name != "exchange" for name in _PLACEHOLDER.findall(self.template))
        object.__setattr__(self, "uses_words", uses)  # worked out once: asked per message

    def problem(self) -> str:
        """Why the template can never make a valid topic, or ""."""
        sample = _PLACEHOLDER.sub("x", self.template)
        if "{" in sample or "}" in sample:
            return f"topic {self.template!r}: only {{exchange}} and {{0}}, {{1}}... may stand in braces"
        return topic_problem(sample) and f"topic {self.template!r}: {topic_problem(sample)}"

    def topic(self, exchange: str, routing_key: str) -> str:
        """The topic of one message; InvalidEvent when its words make no valid name."""
        if not self.uses_words:  # one topic per exchange: the same answer every time
            return _exchange_topic(self.template, exchange)
        words = routing_key.split(".")

        def fill(match: re.Match[str]) -> str:
            name = match[1]
            if name == "exchange":
                return exchange
            index = int(name)
            if index >= len(words):
                raise InvalidEvent(
                    f"routing key {routing_key!r} has no word {index} for topic {self.template!r}"
                )
            return words[index]

        name = _PLACEHOLDER.sub(fill, self.template)
        problem = topic_problem(name)
        if problem:
            raise InvalidEvent(problem)
        if is_queue_topic(name):  # it would land among a queue's retries or dead letters
            raise InvalidEvent(
                f"routing key {routing_key!r} makes the topic {name!r}, a name kept for queues"
            )
        return name

    def subscription(self, exchange: str, pattern: str) -> str:
        """The topic a binding's messages are in, or a ``^regex`` of the topics they may be in."""
        words = pattern.split(".")
        known = words[: words.index("#")] if "#" in words else words  # words at a fixed place
        exact, regex = [], []
        # re.split with a group: literal text at even places, placeholder names at odd ones
        for place, part in enumerate(_PLACEHOLDER.split(self.template)):
            if place % 2 == 0:
                value: str | None = part
            elif part == "exchange":
                value = exchange
            else:
                index = int(part)
                value = known[index] if index < len(known) and known[index] != "*" else None
            exact.append(value)
            regex.append(re.escape(value) if value is not None else "[a-zA-Z0-9_-]+")
        if all(value is not None for value in exact):
            return "".join(value for value in exact if value is not None)
        return "^" + "".join(regex) + "$"


@lru_cache(maxsize=1024)
def _exchange_topic(template: str, exchange: str) -> str:
    name = template.replace("{exchange}", exchange)
    problem = topic_problem(name)
    if problem:
        raise InvalidEvent(problem)
    return name


def key_problem(spec: str) -> str:
    """Why a ``key`` option is refused, or ""."""
    if spec in ("subject", "id", "none"):
        return ""
    kind, _, name = spec.partition(":")
    if kind in ("header", "body") and name:
        return ""
    return f"key must be one of {', '.join(KEYS)}, not {spec!r}"


def key_of(message: WireMessage, spec: str) -> bytes | None:
    """The record key: what keeps one object's messages in one partition, in order."""
    if spec == "subject":
        return message.routing_key.encode()
    if spec == "id":
        return (message.message_id or "").encode() or None
    if spec == "none":
        return None
    kind, _, name = spec.partition(":")
    value: Any = message.headers.get(name) if kind == "header" else _at_path(message.body, name)
    if value is None:
        return None
    return value.encode() if isinstance(value, str) else dumps(value)


def _at_path(body: bytes, path: str) -> Any:
    try:
        value: Any = loads(body)
    except InvalidEvent:
        return None
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


# -- records --------------------------------------------------------------------------------


@dataclass(slots=True)
class Record:
    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]
    #: CreateTime in epoch milliseconds (0: let the client stamp it)
    timestamp: int

    def size(self) -> int:
        """Its size as librdkafka measures it against ``message.max.bytes`` (value, key, and each
        header's name and value with their two length prefixes, at most 5 bytes each)."""
        headers = sum(len(name) + len(value) + 10 for name, value in self.headers)
        return len(self.value) + len(self.key or b"") + headers


def to_record(
    message: WireMessage, topic: str, key: bytes | None, extra: dict[str, Any] | None = None
) -> Record:
    own: dict[str, Any] = {ROUTING_KEY_HEADER: message.routing_key}
    if message.message_id:
        own[MESSAGE_ID_HEADER] = message.message_id
    if message.content_type:
        own[CONTENT_TYPE_HEADER] = message.content_type
    if message.content_encoding:
        own[CONTENT_ENCODING_HEADER] = message.content_encoding
    if message.cc:
        own[CC_HEADER] = list(message.cc)
    if message.exchange:
        own[EXCHANGE_HEADER] = message.exchange
    if message.properties or message.priority is not None:
        properties = {k: v for k, v in message.properties.items() if k != "delivery_mode"}
        if message.priority is not None:
            properties["priority"] = message.priority
        if properties:
            own[PROPERTIES_HEADER] = properties
    headers = to_bytes({**message.headers, **own, **extra} if extra else {**message.headers, **own})
    stamp = int(message.timestamp.timestamp() * 1000) if message.timestamp is not None else 0
    return Record(topic, key, message.body, headers, stamp)


def from_record(
    headers: Sequence[tuple[str, bytes | None]] | None, value: bytes | None, timestamp_ms: int | None
) -> tuple[WireMessage, dict[str, Any]]:
    """The wire message, and tidings' own headers apart (attempts, due time, dead-letter reasons)."""
    text = {name: (raw or b"").decode("utf-8", "replace") for name, raw in headers or ()}
    every = from_text(text)
    own = {name: every.pop(name) for name in _OWN if name in every}
    properties = own.get(PROPERTIES_HEADER) if isinstance(own.get(PROPERTIES_HEADER), dict) else {}
    priority = properties.pop("priority", None)
    # a CloudEvents producer that knows nothing of tidings says the topic in ce_subject only
    routing_key = own.get(ROUTING_KEY_HEADER) or every.get("ce_subject") or ""
    message = WireMessage(
        routing_key=str(routing_key),
        body=value or b"",
        headers=every,
        message_id=_text_or_none(own.get(MESSAGE_ID_HEADER)),
        content_type=_text_or_none(own.get(CONTENT_TYPE_HEADER)),
        content_encoding=_text_or_none(own.get(CONTENT_ENCODING_HEADER)),
        timestamp=utc_moment(timestamp_ms / 1000) if timestamp_ms else None,
        priority=priority if isinstance(priority, int) else None,
        exchange=_text_or_none(own.get(EXCHANGE_HEADER)),
        cc=[key for key in _list(own.get(CC_HEADER)) if isinstance(key, str)],
        properties=properties,
    )
    return message, own


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _text_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


# -- where to connect ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Servers:
    """``kafka[s]://[user:password@]host:port[,host:port...]``: the bootstrap servers, SASL, TLS."""

    hosts: tuple[str, ...]
    username: str | None
    password: str | None
    tls: bool

    @classmethod
    def parse(cls, url: str) -> Servers:
        scheme, sep, rest = url.partition("://")
        if not sep or scheme not in ("kafka", "kafkas"):
            raise ValueError(
                f"url must be kafka://host:port[,host:port...] (or kafkas:// for TLS), not {mask_url(url)!r}"
            )
        authority, _, tail = rest.partition("/")
        if tail or "?" in authority or "#" in authority:
            raise ValueError(
                f"url {mask_url(url)!r} takes no path or ?options: set them as the transport's options"
            )
        userinfo, at, hostlist = authority.rpartition("@")
        hosts = tuple(h for h in hostlist.split(",") if h)
        if not hosts or any(not _HOST_PORT.fullmatch(h) for h in hosts):
            raise ValueError("url must name at least one host:port (kafka://host:port[,host:port...])")
        if any(not 0 < int(h.rpartition(":")[2]) < 65536 for h in hosts):
            raise ValueError(f"url {mask_url(url)!r} needs ports from 1 to 65535")
        user, colon, password = userinfo.partition(":") if at else ("", "", "")
        return cls(hosts, unquote(user) or None, unquote(password) if colon else None, scheme == "kafkas")

    def client_config(self, sasl_mechanism: str) -> dict[str, Any]:
        config: dict[str, Any] = {"bootstrap.servers": ",".join(self.hosts)}
        if self.username is not None:
            config["security.protocol"] = "SASL_SSL" if self.tls else "SASL_PLAINTEXT"
            config["sasl.mechanism"] = sasl_mechanism
            config["sasl.username"] = self.username
            config["sasl.password"] = self.password or ""
        elif self.tls:
            config["security.protocol"] = "SSL"
        return config


def names(topics: Iterable[str]) -> str:
    return ", ".join(sorted(topics))
