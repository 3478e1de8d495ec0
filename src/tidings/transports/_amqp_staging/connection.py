"""One broker connection that reopens on demand and restores what was declared on it."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable

import aiormq
from aiormq.abc import AbstractChannel, AbstractConnection

from tidings.errors import ConnectionLost

from .options import Options, connect_error, reason

log = logging.getLogger("tidings.transports.amqp")

#: consumers reconnect after 0.5 s, 1 s, 2 s, ... up to 15 s, each stretched by a random 50-150 %
BACKOFF_BASE, BACKOFF_CAP = 0.5, 15.0
CLOSE_TIMEOUT = 5.0

Restore = Callable[[AbstractConnection], Awaitable[None]]


def backoff(failures: int) -> float:
    """Capped exponential delay with jitter, so many consumers do not come back in step."""
    return min(BACKOFF_CAP, BACKOFF_BASE * 2 ** min(failures - 1, 16)) * (0.5 + random.random())


async def open_connection(options: Options, role: str) -> AbstractConnection:
    """A new connection, or a one-line :class:`TransportError` within the connect timeout."""
    connection = aiormq.Connection(options.connection_url(role), **options.connection_kwargs())
    try:
        await asyncio.wait_for(connection.connect(), options.connect_timeout)
    except Exception as exc:
        await close_quietly(connection)
        raise connect_error(exc, options.where, options.connect_timeout) from None
    return connection


async def close_quietly(thing: AbstractConnection | AbstractChannel | None) -> None:
    if thing is None or thing.is_closed:
        return
    try:
        await asyncio.wait_for(thing.close(), CLOSE_TIMEOUT)
    except (TimeoutError, OSError, aiormq.exceptions.AMQPError, RuntimeError):
        pass  # it is going away either way; the broker requeues what was unacknowledged


class Link:
    """A connection for one role (publishing or consuming), reopened when found closed.

    RabbitMQ throttles a publishing connection as a whole (flow control, alarms),
    so publishers and consumers get a connection each: a blocked publisher never
    stalls the acks of a consumer.
    """

    def __init__(self, options: Options, role: str, restore: Restore) -> None:
        self.options = options
        self.role = role
        self._restore = restore
        self.connection: AbstractConnection | None = None
        #: how many times it opened; above 1 the link has reconnected
        self.opened = 0
        self._lock = asyncio.Lock()

    @property
    def is_open(self) -> bool:
        return self.connection is not None and not self.connection.is_closed

    async def ensure(self) -> AbstractConnection:
        """The open connection; one attempt to (re)open it, restoring the topology after a drop."""
        if self.connection is not None and not self.connection.is_closed:
            return self.connection
        async with self._lock:
            if self.connection is not None and not self.connection.is_closed:
                return self.connection
            await self.close()
            connection = await open_connection(self.options, self.role)
            if self.opened:  # a reconnect: queues or exchanges may have gone with a broker restart
                try:
                    await self._restore(connection)
                except BaseException:
                    await close_quietly(connection)
                    raise
                log.info("%s connection to %s reopened, topology restored", self.role, self.options.where)
            self.opened += 1
            self.connection = connection
            return connection

    async def channel(self) -> AbstractChannel:
        connection = await self.ensure()
        try:
            return await connection.channel(publisher_confirms=True, on_return_raises=True)
        except (aiormq.exceptions.AMQPError, OSError, RuntimeError) as exc:
            raise ConnectionLost(f"cannot open a channel on {self.options.where}: {reason(exc)}") from None

    async def close(self) -> None:
        connection, self.connection = self.connection, None
        await close_quietly(connection)
