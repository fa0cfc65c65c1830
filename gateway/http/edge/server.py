"""The edge's per-server state: its connections, batched writes, idle sweeps, shutdown.

One :class:`Edge` per listening server; each accepted connection is an
:class:`~keygate.gateway.http.edge.protocol.EdgeProtocol` that reports to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from aiohttp.web_protocol import RequestHandler

from keygate.gateway.forwardauth import AUTH_PATH
from keygate.gateway.http.edge.wire import AllowedHeads
from keygate.gateway.http.logsetup import info_line_writer
from keygate.gateway.request.headers import RequestIds
from keygate.gateway.upstream.connection import UpstreamConnection, UpstreamError
from keygate.gateway.upstream.pool import UpstreamPool

if TYPE_CHECKING:
    from keygate.config.settings import Settings
    from keygate.gateway.http.edge.protocol import EdgeProtocol
    from keygate.gateway.state import Gateway


class Edge:
    """Per-server state of the edge: the gateway, limits, and its open connections."""

    def __init__(
        self,
        gw: Gateway,
        pool: UpstreamPool,
        new_handler: Callable[[], RequestHandler],
        access_log: logging.Logger | None,
        ids: RequestIds,
    ) -> None:
        self.gw = gw
        self.pool = pool
        self.new_handler = new_handler
        self.access_log = access_log
        # Straight into the batch when `keygate serve` set the logger up.
        self.access_line = info_line_writer(access_log) if access_log is not None else None
        self.loop = asyncio.get_running_loop()
        self.ids = ids
        self.admin_prefix = gw.settings.server.admin_prefix
        self.auth_path = self.admin_prefix + AUTH_PATH  # forward-auth (authgate.py)
        self.allowed = AllowedHeads()  # its answers' heads
        self.reconfigure(gw.settings)
        self.connections: set[EdgeProtocol] = set()
        self.busy = 0  # requests in flight
        self.authorised = 0  # of which past authentication, holding a route slot
        self.closing = False
        self._drained: asyncio.Future[None] | None = None
        # Connections with answers waiting for the end of the loop pass.
        self._out: list[EdgeProtocol] = []
        self._upstream_out: list[tuple[UpstreamConnection, bytes]] = []
        self._flusher: asyncio.Handle | None = None
        # server.busy_poll_us: the loop polls without sleeping until then.
        self._poll_until = 0.0
        self.polling = False
        self._sweeper: asyncio.TimerHandle | None = None
        if gw.metrics is not None:
            gw.metrics.busy.append(lambda: self.busy)

    def reconfigure(self, settings: Settings) -> None:
        """The limits new connections get (and the refusal delay, at once)."""
        server = settings.server
        # A head longer than either limit may break one: aiohttp judges it (414/431).
        self.max_head = min(server.max_line_bytes, server.max_header_bytes)
        self.max_headers = server.max_header_count
        self.idle_timeout = server.header_timeout
        self.refusal_delay = settings.auth.refusal_delay
        self.busy_poll = server.busy_poll_us / 1_000_000

    def queue(self, conn: EdgeProtocol) -> None:
        """``conn`` has output to send at the end of this loop pass."""
        self._out.append(conn)
        if self._flusher is None:
            self._flusher = self.loop.call_soon(self._flush)

    def queue_upstream(self, conn: UpstreamConnection, data: bytes) -> None:
        """A request head for ``conn``, sent with this loop pass's other writes."""
        self._upstream_out.append((conn, data))
        if self._flusher is None:
            self._flusher = self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flusher = None
        upstream, self._upstream_out = self._upstream_out, []
        for upstream_conn, data in upstream:
            if upstream_conn.active:  # not dropped meanwhile (its client left)
                try:
                    upstream_conn.write(data)
                except UpstreamError as exc:
                    upstream_conn.fail(exc)  # stale: the exchange retries
        out, self._out = self._out, []
        for conn in out:
            conn.flush()
        if self.busy_poll:
            self._poll_until = time.perf_counter() + self.busy_poll
            if not self.polling:
                self.polling = True
                self.loop.call_soon(self._poll)

    def _poll(self) -> None:
        """Keep the loop busy until ``_poll_until`` (server.busy_poll_us).

        While a callback is ready the loop asks the kernel for events without
        waiting, so the next request or upstream answer is read the moment it
        arrives, by a worker whose caches are still warm, instead of after
        the worker was put to sleep and woken again (on a VM, a halted vCPU
        woken by an interrupt): docs/architecture.md#busy-polling.
        """
        if time.perf_counter() < self._poll_until and not self.closing:
            self.loop.call_soon(self._poll)
        else:
            self.polling = False

    def opened(self, conn: EdgeProtocol) -> None:
        self.connections.add(conn)
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(self._tick, self._sweep)

    @property
    def _tick(self) -> float:
        return min(1.0, max(0.05, self.idle_timeout / 4))

    def _sweep(self) -> None:
        """Close connections idle past ``header_timeout`` (aiohttp's keep-alive timeout)."""
        self._sweeper = None
        oldest = self.loop.time() - self.idle_timeout
        for conn in [c for c in self.connections if c.idle_since <= oldest and c.idle]:
            conn.close()
        if self.connections:
            self._sweeper = self.loop.call_later(self._tick, self._sweep)

    def pre_shutdown(self) -> None:
        """Stop serving: close idle connections; busy ones close after their answer."""
        self.closing = True
        for conn in list(self.connections):
            if conn.idle:
                conn.close()

    def drained(self) -> None:
        """The last request in flight ended while closing (called by connections)."""
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    async def shutdown(self, timeout: float | None) -> None:  # noqa: ASYNC109 - aiohttp's signature
        """Wait up to ``timeout`` for requests in flight, then cut what is left."""
        if self.busy:
            self._drained = self.loop.create_future()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._drained
        for conn in list(self.connections):
            if not conn.idle:
                conn.abandon()  # still busy past the shutdown timeout
                conn.abort()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
