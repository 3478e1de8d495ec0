"""The fault proxy itself does what the fault tests rely on (against a local echo server)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from tests.faultproxy import FaultProxy


@pytest.fixture
async def echo_proxy() -> AsyncIterator[FaultProxy]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(1024):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    proxy = await FaultProxy(server.sockets[0].getsockname()[1]).start()
    yield proxy
    await proxy.stop()
    server.close()


async def roundtrip(proxy: FaultProxy, payload: bytes = b"hello", timeout: float = 2.0) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        writer.write(payload)
        await writer.drain()
        return await asyncio.wait_for(reader.readexactly(len(payload)), timeout)
    finally:
        writer.close()


async def test_plain_pipe(echo_proxy: FaultProxy) -> None:
    assert await roundtrip(echo_proxy) == b"hello"


async def test_latency(echo_proxy: FaultProxy) -> None:
    echo_proxy.latency(100)
    start = time.monotonic()
    assert await roundtrip(echo_proxy) == b"hello"
    assert time.monotonic() - start >= 0.19  # both directions are delayed


async def test_blackhole_then_heal(echo_proxy: FaultProxy) -> None:
    echo_proxy.blackhole()
    with pytest.raises(TimeoutError):
        await roundtrip(echo_proxy, timeout=0.3)
    echo_proxy.heal()
    assert await roundtrip(echo_proxy) == b"hello"


async def test_slicing_keeps_the_bytes(echo_proxy: FaultProxy) -> None:
    echo_proxy.slice()
    assert await roundtrip(echo_proxy, b"x" * 300) == b"x" * 300


async def test_cut_after_n_bytes_resets(echo_proxy: FaultProxy) -> None:
    echo_proxy.cut_after(3)
    with pytest.raises((asyncio.IncompleteReadError, ConnectionError)):
        await roundtrip(echo_proxy, b"abcdef")


async def test_reset_all(echo_proxy: FaultProxy) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", echo_proxy.port)
    writer.write(b"a")
    await writer.drain()
    assert await reader.readexactly(1) == b"a"
    assert echo_proxy.reset_all() == 1
    with pytest.raises((asyncio.IncompleteReadError, ConnectionError)):
        await asyncio.wait_for(reader.readexactly(1), 2)
    writer.close()
