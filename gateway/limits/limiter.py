"""The limiter both backends implement, and the quota windows they share."""

from __future__ import annotations

import abc
import asyncio
import time
from collections.abc import Callable

from keygate.gateway.limits import windows
from keygate.gateway.limits.counts import QuotaCounts
from keygate.gateway.limits.rules import KeyLimits
from keygate.gateway.limits.usage import Usage


class Limiter(abc.ABC):
    """Counts one key's requests against its rate limits and quota.

    ``take_now`` answers from memory when the backend can (the local one
    always does), or None: then ``take`` must be awaited (Redis). Either way
    a request is counted only when every rate limit and the quota let it
    through.
    """

    def __init__(self, counts: QuotaCounts, mode: str) -> None:
        self.counts = counts
        self.mode = mode  # ratelimit.headers
        self.clock: Callable[[], float] = time.time
        self._windows: dict[str, tuple[float, float, str]] = {}

    # The service this limiter's counts live in, named in /ready's checks
    # (docs/reference.md#probes); None: nothing outside this process.
    dependency: str | None = None

    async def reachable(self) -> bool:
        """Whether :attr:`dependency` answers now."""
        return True

    @abc.abstractmethod
    def take_now(self, limits: KeyLimits) -> Usage | None: ...

    @abc.abstractmethod
    async def take(self, limits: KeyLimits) -> Usage: ...

    def take_later(self, limits: KeyLimits) -> asyncio.Future[Usage]:
        """:meth:`take` as a future, for callers driven by callbacks (no task)."""
        future: asyncio.Future[Usage] = asyncio.get_running_loop().create_future()
        found = self.take_now(limits)
        if found is not None:
            future.set_result(found)
        else:
            task = asyncio.ensure_future(self.take(limits))
            task.add_done_callback(lambda t: _copy(t, future))
        return future

    async def start(self) -> None:  # noqa: B027 - most backends open nothing
        """Open what the backend needs (never before the worker forked)."""

    async def stop(self) -> None:  # noqa: B027
        """Close what ``start`` opened."""

    def window(self, period: str, now: float) -> tuple[str, float]:
        """(name, end) of the quota window at ``now``, remembered until it ends."""
        known = self._windows.get(period)
        if known is not None and known[0] <= now < known[1]:
            return known[2], known[1]
        name, start, end = windows.bounds(period, now)
        self._windows[period] = (start, end, name)
        return name, end


def _copy(task: asyncio.Future[Usage], future: asyncio.Future[Usage]) -> None:
    if task.cancelled():
        future.cancel()
    elif (exc := task.exception()) is not None:
        future.set_exception(exc)
    else:
        future.set_result(task.result())
