"""What ``tidings doctor`` checks on RabbitMQ beyond connecting: queues, bindings, permissions.

AMQP 0-9-1 can check that a queue exists (a passive declare) but has no way to ask
whether a binding exists or what the user may do. RabbitMQ's management HTTP API can
(``/api/queues/{vhost}/{queue}/bindings``, ``/api/permissions/{vhost}/{user}``), so
those checks use it when it answers, and say plainly that they were skipped when it
does not. Each problem is one line with what to do about it.
"""

from __future__ import annotations

import re
from typing import Any, Protocol
from urllib.parse import quote

import aiormq
from yarl import URL

from tidings.redact import mask_url
from tidings.transport import Findings, QueueSpec, Topology


class Broker(Protocol):
    """What the checks need of the AMQP transport (:class:`~.transport.AmqpTransport`)."""

    url: URL

    async def open_connection(self) -> aiormq.abc.AbstractConnection: ...


MANAGEMENT_PORT = 15672


async def verify(transport: Broker, topology: Topology, management_url: str | None) -> Findings:
    """Check ``topology`` (what the config expects) against the broker; nothing is created."""
    findings = Findings()
    for queue in topology.queues:
        if not await _queue_exists(transport, queue.name):
            findings.problems.append(
                f"queue {queue.name!r} does not exist: run `tidings consume` or `tidings serve` to create it"
            )
    api = _management(transport, management_url)
    try:
        user = await api.get("/api/whoami")
    except PermissionError as exc:
        findings.notes.append(
            f"bindings and permissions not checked: {exc}; a user with the management tag can check them"
        )
        return findings
    except OSError as exc:
        findings.notes.append(f"bindings and permissions not checked: management API unreachable ({exc})")
        return findings
    vhost = transport.url.path[1:] or "/"  # "/%2Fpublic_pubsub" is the vhost "/public_pubsub"
    await _check_bindings(api, vhost, topology.queues, findings)
    await _check_permissions(api, vhost, str(user["name"]), topology, findings)
    return findings


async def _queue_exists(transport: Broker, name: str) -> bool:
    connection = await transport.open_connection()
    try:
        channel = await connection.channel()
        await channel.queue_declare(name, passive=True)
        return True
    except aiormq.exceptions.ChannelNotFoundEntity:
        return False
    finally:
        await connection.close()


async def _check_bindings(api: _Api, vhost: str, queues: list[QueueSpec], findings: Findings) -> None:
    for queue in queues:
        try:
            found = await api.get(f"/api/queues/{_part(vhost)}/{_part(queue.name)}/bindings")
        except LookupError:
            continue  # the queue is missing: reported already
        existing = {(b["source"], b["routing_key"]) for b in found}
        for binding in queue.bindings:
            if (binding.exchange, binding.pattern) not in existing:
                findings.problems.append(
                    f"queue {queue.name!r} is not bound to exchange {binding.exchange!r} with "
                    f"{binding.pattern!r}: run `tidings consume` or `tidings serve` to bind it"
                )


async def _check_permissions(
    api: _Api, vhost: str, user: str, topology: Topology, findings: Findings
) -> None:
    try:
        granted = await api.get(f"/api/permissions/{_part(vhost)}/{_part(user)}")
    except LookupError:
        findings.problems.append(f"user {user!r} has no permissions on vhost {vhost!r}")
        return
    except PermissionError as exc:  # only administrators may read permissions
        findings.notes.append(f"permissions not checked: {exc}; an administrator can check them")
        return
    for exchange in topology.exchanges:
        _need(findings, granted, "write", exchange.name, f"publish to exchange {exchange.name!r}", user)
        if not exchange.passive:
            _need(findings, granted, "configure", exchange.name, f"declare exchange {exchange.name!r}", user)
    for queue in topology.queues:
        _need(findings, granted, "read", queue.name, f"consume from queue {queue.name!r}", user)
        _need(findings, granted, "configure", queue.name, f"declare queue {queue.name!r}", user)
        for binding in queue.bindings:
            _need(findings, granted, "read", binding.exchange, f"bind to exchange {binding.exchange!r}", user)


def _need(findings: Findings, granted: dict[str, Any], kind: str, name: str, what: str, user: str) -> None:
    # RabbitMQ matches a permission's regular expression against the resource name
    if not re.match(granted.get(kind) or "^$", name):
        findings.problems.append(
            f"user {user!r} may not {what} ({kind} permission is {granted.get(kind)!r}): "
            f"rabbitmqctl set_permissions can grant it"
        )


class _Api:
    def __init__(self, base: str, auth: tuple[str, str]) -> None:
        self.base = base.rstrip("/")
        self.auth = auth

    async def get(self, path: str) -> Any:
        """The JSON at ``path``.

        Raises LookupError (404), PermissionError (the user may not see it), OSError (unreachable).
        """
        import httpx

        try:
            async with httpx.AsyncClient(timeout=5.0) as client:
                response = await client.get(self.base + path, auth=self.auth)
        except httpx.HTTPError as exc:
            raise OSError(f"{mask_url(self.base)}: {type(exc).__name__}") from None
        if response.status_code == 404:
            raise LookupError(path)
        if response.status_code in (401, 403):
            raise PermissionError(f"the management API refused {path} to this user ({response.status_code})")
        if response.status_code != 200:
            raise OSError(f"{mask_url(self.base)} answered {response.status_code} for {path}")
        return response.json()


def _management(transport: Broker, management_url: str | None) -> _Api:
    """The management API: at ``management_url`` with its own credentials if it has them, else at the
    broker's host with the broker's."""
    url = transport.url
    if management_url is None:
        return _Api(f"http://{url.host}:{MANAGEMENT_PORT}", (url.user or "guest", url.password or "guest"))
    given = URL(management_url)
    user, password = given.user or url.user or "guest", given.password or url.password or "guest"
    return _Api(str(given.with_user(None)), (user, password))


def _part(name: str) -> str:
    return quote(name, safe="")  # a vhost "/" is "%2F" in the API's paths
