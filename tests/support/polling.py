"""Waiting for something to become true, within a bound: the suite's one poll helper."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable

Predicate = Callable[[], object | Awaitable[object]]


async def wait_for(
    predicate: Predicate,
    *,
    within: float = 5.0,
    every: float = 0.01,
    what: str = "condition",
) -> float:
    """Poll ``predicate`` every ``every`` seconds until it is truthy; the seconds waited.

    ``predicate`` may be sync or return an awaitable (an ``async def`` or a
    lambda calling one). Past ``within`` seconds this fails the test with an
    AssertionError naming ``what``; an exception from the predicate (an assert
    inside it, say) propagates at once. Never a bare sleep: wait for the state
    the test needs, bounded.
    """
    start = time.monotonic()
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        waited = time.monotonic() - start
        if result:
            return waited
        if waited >= within:
            raise AssertionError(f"{what} not reached within {within} s")
        await asyncio.sleep(every)
