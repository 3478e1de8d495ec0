"""The Taskcluster queue's exchanges (docs/systems/taskcluster.md).

Facts (taskcluster/taskcluster, services/queue/src/exchanges.js): one topic exchange per event
kind under ``exchange/taskcluster-queue/v1/``; the primary routing key is
``primary.<taskId>.<runId>.<workerGroup>.<workerId>.<provisionerId>.<workerType>.<schedulerId>
.<taskGroupId>.<reserved>`` (``buildCommonRoutingKey``; task-group-resolved, task-group-sealed
and task-group-priority-changed have ``primary.<taskGroupId>.<schedulerId>.<reserved>``,
``buildTaskGroupRoutingKey``) with word size limits (taskId 22, runId 3, the others 38, reserved
1), ``_`` for a missing word; task routes are CC'd as ``route.<route>`` (``commonCCBuilder``);
``commonMessageBuilder`` sets ``version: 1``. The exchanges and their routing keys are those the
official client declares (taskcluster 113, ``taskcluster/generated/queueevents.py``). lib-pulse
publishes them persistent, ``application/json``, content encoding ``utf-8``
(libraries/pulse/src/publisher.js, ``PulsePublisher._send``).
A route is any string of 1 to 249 characters, at most 64 of them, no two alike
(services/queue/schemas/v1/task.yml, ``routes``): dots, commas, ``*`` and ``#`` included.
Binding patterns follow the official clients: a missing word is ``*``, a missing multi-word
entry ``#``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from tidings.archive import SearchFields
from tidings.errors import DecodeError, InvalidEvent
from tidings.event import Event, dumps, loads
from tidings.format import stable_id
from tidings.plugins import Plugin, Settings
from tidings.transport import WireMessage

PREFIX = "exchange/taskcluster-queue/v1/"
#: the task definition schema's limits on ``routes`` (services/queue/schemas/v1/task.yml)
MAX_ROUTE_LENGTH, MAX_ROUTES = 249, 64
#: the event header that carries a task's routes: a JSON array, so any allowed string survives
ROUTES_HEADER = "taskcluster_routes"
#: a message that came without a message id gets the same event id on every redelivery
_ID_NAMESPACE = uuid.UUID("3d1f6a0e-9c2b-4b7d-a6e4-2f8c5b1d7e60")


@dataclass(frozen=True, slots=True)
class Word:
    name: str
    max_size: int
    required: bool = False
    multiple: bool = False


def _common(has_run: bool = False, has_worker: bool = False) -> tuple[Word, ...]:
    return (
        Word("taskId", 22, True),
        Word("runId", 3, has_run),
        Word("workerGroup", 38, has_worker),
        Word("workerId", 38, has_worker),
        Word("provisionerId", 38, True),
        Word("workerType", 38, True),
        Word("schedulerId", 38, True),
        Word("taskGroupId", 22, True),
        Word("reserved", 1, multiple=True),
    )


def _task_group() -> tuple[Word, ...]:
    return (
        Word("taskGroupId", 22, True),
        Word("schedulerId", 38, True),
        Word("reserved", 1, multiple=True),
    )


#: the words of a task message's routing key taken from its status, and from the message itself
STATUS_WORDS = ("taskId", "provisionerId", "workerType", "schedulerId", "taskGroupId")
RUN_WORDS = ("runId", "workerGroup", "workerId")

#: exchange → routing key words after the constant "primary"
EXCHANGES: dict[str, tuple[Word, ...]] = {
    "task-defined": _common(),
    "task-pending": _common(has_run=True),
    "task-running": _common(has_run=True, has_worker=True),
    "artifact-created": _common(has_run=True, has_worker=True),
    "task-completed": _common(has_run=True, has_worker=True),
    "task-failed": _common(),
    "task-exception": _common(),
    "task-group-resolved": _task_group(),
    "task-group-sealed": _task_group(),
    # the queue's message has no run words: "_" (services/queue/src/api.js, changeTaskPriority)
    "task-priority-changed": _common(),
    "task-group-priority-changed": _task_group(),
}


def _words(exchange: str) -> tuple[Word, ...]:
    try:
        return EXCHANGES[exchange]
    except KeyError:
        raise InvalidEvent(
            f"unknown Taskcluster queue exchange {exchange!r} (known: {', '.join(EXCHANGES)})"
        ) from None


def routing_key(exchange: str, fields: Mapping[str, Any]) -> str:
    """The primary routing key, as the queue builds it (refusing what the queue would refuse)."""
    parts = ["primary"]
    for word in _words(exchange):
        value = fields.get(word.name)
        if value is None or value == "":
            if word.required:
                raise InvalidEvent(f"Taskcluster {exchange}: routing key word {word.name} is required")
            parts.append("_")
            continue
        text = str(value)
        if "." in text and not word.multiple:
            raise InvalidEvent(f"Taskcluster {exchange}: {word.name} {text!r} may not contain '.'")
        if len(text) > word.max_size and not word.multiple:
            raise InvalidEvent(f"Taskcluster {exchange}: {word.name} {text!r} is longer than {word.max_size}")
        parts.append(text)
    return ".".join(parts)


def binding_pattern(exchange: str, **fields: Any) -> str:
    """A binding pattern from partial fields: a missing word ``*``, a missing multi-word entry ``#``."""
    parts = ["primary"]
    for word in _words(exchange):
        value = fields.pop(word.name, None)
        parts.append(str(value) if value is not None else ("#" if word.multiple else "*"))
    if fields:
        raise InvalidEvent(f"Taskcluster {exchange}: no routing key words {', '.join(sorted(fields))}")
    return ".".join(parts)


def route_allowed(route: str, scopes: Iterable[str]) -> bool:
    """Does a scope ``queue:route:<route>`` (a trailing ``*`` matches any suffix) allow this route?"""
    wanted = f"queue:route:{route}"
    return any(scope == wanted or (scope.endswith("*") and wanted.startswith(scope[:-1])) for scope in scopes)


def check_routes(routes: Iterable[str], scopes: Iterable[str]) -> None:
    scopes = list(scopes)
    refused = [r for r in routes if not route_allowed(r, scopes)]
    if refused:
        raise InvalidEvent(
            f"not allowed to publish on route(s) {', '.join(refused)}: the scopes lack "
            f"queue:route:{refused[0]}"
        )


def validate_routes(routes: Iterable[Any]) -> list[str]:
    """The routes as a list, refusing what Taskcluster's task schema refuses."""
    checked = list(routes)
    if len(checked) > MAX_ROUTES:
        raise InvalidEvent(f"a Taskcluster task has at most {MAX_ROUTES} routes, not {len(checked)}")
    for route in checked:
        if not isinstance(route, str) or not 1 <= len(route) <= MAX_ROUTE_LENGTH:
            raise InvalidEvent(
                f"Taskcluster route {route!r} must be a string of 1 to {MAX_ROUTE_LENGTH} characters"
            )
    if len(set(checked)) != len(checked):
        raise InvalidEvent("Taskcluster routes must be unique")
    return checked


def routes_header(routes: Iterable[str]) -> str:
    return dumps(validate_routes(routes)).decode()


def routes_of(event: Event) -> list[str]:
    """The routes an event carries (a JSON array; a comma-joined list from tidings before 0.2)."""
    raw = event.headers.get(ROUTES_HEADER)
    if not raw:
        return []
    text = str(raw)
    if not text.startswith("["):
        return [route for route in text.split(",") if route]
    return validate_routes(loads(text))


def words_of(exchange: str, message: Mapping[str, Any]) -> dict[str, Any]:
    """The routing key words the queue takes from a message (``commonRoutingKeyBuilder``: the
    status and the run's words; ``taskGroupRoutingKeyBuilder``: the group's), those it has."""
    if _words(exchange) == EXCHANGES["task-group-resolved"]:
        found = {name: message.get(name) for name in ("taskGroupId", "schedulerId")}
    else:
        status = message.get("status")
        status = status if isinstance(status, Mapping) else {}
        found = {name: status.get(name) for name in STATUS_WORDS}
        found.update({name: message.get(name) for name in RUN_WORDS})
    return {name: value for name, value in found.items() if value is not None}


def _agreeing_words(exchange: str, message: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    """The message's words and those given; a given word the message says otherwise is refused
    (the queue builds the key from the message: a key that contradicts it routes wrongly)."""
    found = words_of(exchange, message)
    for name, value in given.items():
        if name in found and str(found[name]) != str(value):
            raise InvalidEvent(
                f"Taskcluster {exchange}: routing key word {name} {value!r} is not the message's "
                f"{found[name]!r}"
            )
    return {**found, **given}


def task_event(
    exchange: str,
    message: dict[str, Any],
    *,
    routes: Iterable[str] = (),
    scopes: Iterable[str] | None = None,
    **fields: Any,
) -> Event:
    """An event for a queue exchange; its routing key words come from the message as the queue
    takes them (``fields`` may add the words a message lacks). ``scopes`` (when given) must
    allow every route, checked now."""
    routes = validate_routes(routes)
    if scopes is not None:
        check_routes(routes, scopes)
    body = {**message, "version": 1}
    headers: dict[str, Any] = {"taskcluster_exchange": exchange}
    if routes:
        headers[ROUTES_HEADER] = routes_header(routes)
    return Event.create(
        routing_key(exchange, _agreeing_words(exchange, message, fields)),
        body,
        source="taskcluster-queue",
        type=f"taskcluster.{exchange}.v1",
        headers=headers,
    )


class TaskclusterFormat:
    """Format ``taskcluster``; option ``prefix`` (the exchange prefix)."""

    name = "taskcluster"

    def __init__(self, prefix: str = PREFIX) -> None:
        self.prefix = prefix

    def encode(self, event: Event) -> WireMessage:
        exchange = event.headers.get("taskcluster_exchange")
        if not isinstance(exchange, str) or exchange not in EXCHANGES:
            raise InvalidEvent("a Taskcluster event needs its exchange (header taskcluster_exchange)")
        routes = routes_of(event)
        return WireMessage(
            routing_key=event.topic,
            body=dumps(event.body),
            message_id=event.id,
            content_type="application/json",
            content_encoding="utf-8",  # as lib-pulse's publisher sets it
            timestamp=event.time,
            exchange=self.prefix + exchange,
            cc=[f"route.{r}" for r in routes],
            properties={"delivery_mode": 2},
        )

    def decode(self, message: WireMessage) -> Event:
        exchange = (message.exchange or "").removeprefix(self.prefix)
        if exchange not in EXCHANGES:
            raise DecodeError(f"not a Taskcluster queue exchange: {message.exchange!r}")
        body = loads(message.body)
        if not isinstance(body, dict):
            raise DecodeError("a Taskcluster message body must be a JSON object")
        routes = [key.removeprefix("route.") for key in message.cc if key.startswith("route.")]
        headers = {"taskcluster_exchange": exchange}
        if routes:
            try:
                headers[ROUTES_HEADER] = routes_header(routes)
            except InvalidEvent as exc:
                raise DecodeError(f"Taskcluster message: {exc}") from None
        return Event.create(
            message.routing_key,
            body,
            source="taskcluster-queue",
            type=f"taskcluster.{exchange}.v1",
            headers=headers,
            id=message.message_id or stable_id(message, _ID_NAMESPACE, exchange, *message.cc),
            time=message.timestamp,
        )

    def search_fields(self, event: Event) -> SearchFields:
        """The task group as a container (task messages carry it in ``status``; a resolved
        group at the top level); the worker that ran it as the agent."""
        status = event.body.get("status")
        status = status if isinstance(status, dict) else {}
        group = status.get("taskGroupId") or event.body.get("taskGroupId")
        worker = event.body.get("workerId")
        return SearchFields(
            containers=(group,) if isinstance(group, str) and group else (),
            agent=worker if isinstance(worker, str) and worker else None,
        )


class TaskclusterOptions(Settings):
    #: the exchanges' common prefix (``exchange/taskcluster-queue/v1/``)
    prefix: str = PREFIX


PLUGIN = Plugin("taskcluster", "tidings.formats.taskcluster:TaskclusterFormat", TaskclusterOptions)
