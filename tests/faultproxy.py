"""A small TCP fault proxy for the fault tests: it sits between tidings and a broker.

Faults, switched on and off while traffic flows:

* ``latency(ms, jitter_ms)`` — every chunk waits before it is forwarded;
* ``blackhole()``            — connections stay open, nothing is forwarded either way;
* ``reset_all()``            — every open connection is reset (RST) now;
* ``slice()``                — data is forwarded in 1-byte writes;
* ``cut_after(n)``           — each new connection is reset after n bytes towards the broker
                                (a frame cut in the middle);
* ``heal()``                 — back to a plain pipe.

It listens on 127.0.0.1 only; the upstream is a loopback broker.
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct
from dataclasses import dataclass, field


@dataclass
class Faults:
    latency: float = 0.0
    jitter: float = 0.0
    blackhole: bool = False
    slice: bool = False
    cut_after: int | None = None


@dataclass(eq=False)  # identity-hashed: pipes live in a set
class _Pipe:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter
    sent_up: int = 0
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


class FaultProxy:
    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.faults = Faults()
        self.port = 0
        self.connections = 0
        self._pipes: set[_Pipe] = set()
        self._server: asyncio.base_events.Server | None = None
        self._rng = random.Random(42)
        self._healed = asyncio.Event()
        self._healed.set()

    async def start(self, port: int = 0) -> FaultProxy:
        """Listen on ``port`` (0: any free one); a broker "appears" when its proxy starts."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        self.reset_all()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def url(self, user: str = "guest", password: str = "guest") -> str:
        return f"amqp://{user}:{password}@127.0.0.1:{self.port}/"

    # -- switching faults ------------------------------------------------------------

    def heal(self) -> None:
        self.faults = Faults()
        self._healed.set()

    def latency(self, ms: float, jitter_ms: float = 0.0) -> None:
        self.faults.latency, self.faults.jitter = ms / 1000, jitter_ms / 1000

    def blackhole(self) -> None:
        self.faults.blackhole = True
        self._healed.clear()

    def slice(self) -> None:
        self.faults.slice = True

    def cut_after(self, n: int) -> None:
        self.faults.cut_after = n

    def reset_all(self) -> int:
        pipes = list(self._pipes)
        for pipe in pipes:
            self._reset(pipe)
        return len(pipes)

    # -- plumbing ----------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        self.connections += 1
        pipe = _Pipe(writer, up_writer)
        self._pipes.add(pipe)
        pipe.tasks = [
            asyncio.create_task(self._pump(reader, up_writer, pipe, towards_broker=True)),
            asyncio.create_task(self._pump(up_reader, writer, pipe, towards_broker=False)),
        ]
        await asyncio.gather(*pipe.tasks, return_exceptions=True)
        self._pipes.discard(pipe)
        for w in (writer, up_writer):
            w.close()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, pipe: _Pipe, *, towards_broker: bool
    ) -> None:
        try:
            while data := await reader.read(65536):
                await self._healed.wait()  # a blackhole holds everything back
                await self._delay()
                if towards_broker and self.faults.cut_after is not None:
                    room = self.faults.cut_after - pipe.sent_up
                    if room <= len(data):
                        await self._write(writer, data[: max(room, 0)])
                        self._reset(pipe)
                        return
                    pipe.sent_up += len(data)
                await self._write(writer, data)
        except (ConnectionError, OSError):
            self._reset(pipe)

    async def _delay(self) -> None:
        f = self.faults
        if f.latency or f.jitter:
            await asyncio.sleep(max(0.0, f.latency + self._rng.uniform(-f.jitter, f.jitter)))

    async def _write(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        if self.faults.slice:
            for i in range(len(data)):
                writer.write(data[i : i + 1])
                await writer.drain()
        else:
            writer.write(data)
            await writer.drain()

    def _reset(self, pipe: _Pipe) -> None:
        """Close both sides with RST (SO_LINGER 0), as a dying peer or a middlebox would."""
        for writer in (pipe.client, pipe.upstream):
            sock = writer.get_extra_info("socket")
            if sock is not None:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                except OSError:
                    pass  # already closed
            writer.transport.abort()
        for task in pipe.tasks:
            task.cancel()
        self._pipes.discard(pipe)
