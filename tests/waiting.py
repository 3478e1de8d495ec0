"""Waiting in async tests for a condition, not for a fixed time."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

#: long enough for a slow CI machine; only a failing test waits this long
WAIT = 15.0


async def until(condition: Callable[[], bool], timeout: float = WAIT) -> None:
    """Return as soon as ``condition()`` holds; fail the test if it does not within ``timeout``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"condition not reached within {timeout} s")
        await asyncio.sleep(0.005)
