"""Idle keep-alive upstream connections per (host, port), reused last-in first-out.

The warmest socket goes first; idle ones are bounded per origin and closed
after ``idle_timeout`` seconds. See :mod:`gateway.upstream_conn` for what makes
a connection reusable. The pool also enforces the route deadline of every
exchange in progress, with one coarse ticker instead of a timer per request.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Final

from keygate.gateway.upstream.connection import OriginKey, UpstreamConnection, UpstreamError

# How often route deadlines are checked: a timeout fires up to this late.
TICK: Final = 0.05


class UpstreamPool:
    """Idle keep-alive connections per (host, port), reused last-in first-out."""

    def __init__(self, *, max_idle: int = 256, idle_timeout: float = 15.0) -> None:
        self.loop = asyncio.get_running_loop()
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self._idle: dict[OriginKey, list[UpstreamConnection]] = {}
        self._all: set[UpstreamConnection] = set()
        self._sweeper: asyncio.TimerHandle | None = None
        # Exchanges in progress. One coarse ticker enforces their deadlines:
        # a timer per request costs more than the request's own parsing.
        self._busy: set[UpstreamConnection] = set()
        self._ticker: asyncio.TimerHandle | None = None
        self.is_closed = False
        self.connects = 0  # connections opened (tests and stats)

    def take(self, key: OriginKey) -> UpstreamConnection | None:
        idle = self._idle.get(key)
        if not idle:
            return None
        oldest = self.loop.time() - self.idle_timeout
        while idle:
            conn = idle.pop()
            transport = conn.transport
            if (
                not conn.lost
                and transport is not None
                and not transport.is_closing()
                and (conn.idle_since > oldest)
            ):
                return conn
            conn.abort()
        return None

    async def connect(self, key: OriginKey, deadline: float) -> UpstreamConnection:
        """A new connection to ``key``; OSError (refused, DNS) or TimeoutError past ``deadline``."""
        if self.is_closed:
            raise UpstreamError("the upstream pool is closed")
        host, port = key
        async with asyncio.timeout_at(deadline):
            _, conn = await self.loop.create_connection(
                lambda: UpstreamConnection(self, key), host, port
            )
        self.connects += 1
        self._all.add(conn)
        return conn

    def busy(self, conn: UpstreamConnection) -> None:
        """``conn`` started an exchange; it expires at ``conn.deadline``."""
        self._busy.add(conn)
        if self._ticker is None:
            self._ticker = self.loop.call_later(TICK, self._tick)

    def idle(self, conn: UpstreamConnection) -> None:
        """``conn``'s exchange ended (released or dropped)."""
        self._busy.discard(conn)

    def _tick(self) -> None:
        now = self.loop.time()
        for conn in [c for c in self._busy if c.deadline <= now]:
            self._busy.discard(conn)
            conn.expire()
        self._ticker = self.loop.call_later(TICK, self._tick) if self._busy else None

    def release(self, conn: UpstreamConnection) -> None:
        self._busy.discard(conn)
        if self.is_closed:
            conn.abort()
            return
        conn.idle_since = self.loop.time()
        idle = self._idle.get(conn.key)
        if idle is None:
            idle = self._idle[conn.key] = []
        idle.append(conn)
        if len(idle) > self.max_idle:
            idle.pop(0).abort()  # the coldest one
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(self.idle_timeout, self._sweep)

    def forget(self, conn: UpstreamConnection) -> None:
        """A lost connection leaves the pool (called by the connection)."""
        self._all.discard(conn)
        self._busy.discard(conn)
        idle = self._idle.get(conn.key)
        if idle is not None and conn in idle:
            idle.remove(conn)

    def _sweep(self) -> None:
        self._sweeper = None
        oldest = self.loop.time() - self.idle_timeout
        for idle in self._idle.values():
            while idle and idle[0].idle_since <= oldest:
                idle.pop(0).abort()
        if any(self._idle.values()):
            self._sweeper = self.loop.call_later(self.idle_timeout / 2, self._sweep)

    async def close(self) -> None:
        """Close every connection, idle or busy, and wait until they are closed."""
        self.is_closed = True
        for timer in (self._sweeper, self._ticker):
            if timer is not None:
                timer.cancel()
        self._sweeper = self._ticker = None
        self._busy.clear()
        conns = list(self._all)
        self._idle.clear()
        for conn in conns:
            if conn.transport is not None and not conn.lost:
                conn.transport.close()
        waiting = [conn.closed for conn in conns if not conn.closed.done()]
        if waiting:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5.0):
                    await asyncio.gather(*waiting)
