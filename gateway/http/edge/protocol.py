"""The edge: keygate's own HTTP/1.1 server protocol for plain proxied requests.

aiohttp's server builds, per request, a message, a header multidict, a
``Request``, a ``StreamResponse``, a payload writer, middleware and handler
coroutines and a task, and that costs more CPU than the whole proxy exchange
around it. The edge parses a request head with httptools (:mod:`.parse`),
serves it with the pipeline's steps (:mod:`.exchange`), answers refusals from
bytes it builds itself (:mod:`.wire`), and relays the upstream's answer
through the same keep-alive client as aiohttp's handler.

It serves only what it can serve exactly as the aiohttp handler would (see
:mod:`.parse`); anything else — and everything after it on that connection —
is handed to aiohttp's ``RequestHandler`` with the bytes received so far, as
if aiohttp had accepted the connection itself. ``tests/gateway/test_edge_parity.py``
holds the two front ends to the same answers.

This module is the connection half: bytes in, the serve loop, the hand-off,
batched writes, the refusal hold-back. :mod:`.exchange` is the request half.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Final, cast

from aiohttp.tcp_helpers import tcp_keepalive

from keygate.gateway.errors import KeygateError
from keygate.gateway.http.edge.exchange import CLOSED, HAND_OFF, Exchange, Forwarding
from keygate.gateway.http.edge.parse import HeadParser
from keygate.gateway.metrics.counts import FORWARD_AUTH

if TYPE_CHECKING:
    from keygate.gateway.http.edge.server import Edge

# Pipelined bytes buffered while a request is in flight before reading pauses.
_PIPELINE_LIMIT: Final = 64 * 1024


class EdgeProtocol(Forwarding, asyncio.Protocol):
    """One client connection, served by the edge until it hands it to aiohttp."""

    __slots__ = (
        "_buffer",
        "_edge",
        "_held",
        "_out",
        "_parser",
        "_peer",
        "_proto",
        "_reading_paused",
        "_transport",
        "idle_since",
    )

    def __init__(self, edge: Edge) -> None:
        super().__init__()
        self._edge = edge
        self._transport: asyncio.Transport | None = None
        self._buffer = b""
        self._out = b""  # answers not yet written (see _write)
        self._parser = HeadParser(edge.max_head, edge.max_headers)
        self._peer = "unknown"
        self._proto = "http"
        self._reading_paused = False
        # Set while a refused client waits for its next request to be read.
        self._held: asyncio.TimerHandle | None = None
        self.idle_since = edge.loop.time()

    @property
    def idle(self) -> bool:
        return self._current is None

    # -- asyncio.Protocol ----------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport = cast(asyncio.Transport, transport)
        tcp_keepalive(transport)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and peer:
            self._peer = str(peer[0])
        if transport.get_extra_info("sslcontext") is not None:
            self._proto = "https"
        self._edge.opened(self)

    def data_received(self, data: bytes) -> None:
        self._buffer = self._buffer + data if self._buffer else data
        if self._current is not None or self._held is not None:
            # Pipelined: served in order once the answer in flight is out.
            if len(self._buffer) > _PIPELINE_LIMIT and not self._reading_paused:
                self._reading_paused = True
                self._transport.pause_reading()  # type: ignore[union-attr]
            return
        self._serve()

    def connection_lost(self, exc: Exception | None) -> None:
        self._edge.connections.discard(self)
        if self._held is not None:
            self._held.cancel()
            self._held = None
        self.abandon()
        self._wake_drain()

    def abandon(self) -> None:
        """Drop the request in flight: its client is gone (or the server stops).

        The upstream exchange goes at once (nginx's proxy_ignore_client_abort
        off), not at the route timeout, with its route slot.
        """
        x = self._current
        if x is None:
            return
        x.abandoned = True
        x.keep_alive = False
        task = self.task
        if task is not None:
            if not task.done():
                task.cancel()  # its finally ends the exchange
        else:
            self._finish(x)

    # -- serving -------------------------------------------------------------------------
    def close(self) -> None:
        self.flush()
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    def abort(self) -> None:
        self._out = b""
        if self._transport is not None:
            self._transport.abort()

    def flush(self) -> None:
        """Send what :meth:`_write` held back (called once per loop pass by the edge)."""
        data = self._out
        if data:
            self._out = b""
            transport = self._transport
            if transport is not None and not transport.is_closing():
                transport.write(data)

    def _serve(self) -> None:
        """Answer the requests buffered, in order, until one needs a task or aiohttp."""
        edge = self._edge
        while self._buffer and self._current is None and self._held is None and not edge.closing:
            buffer = self._buffer
            parsed = self._parser.parse(buffer)
            if parsed is None:
                return self._hand_off()
            outcome = self._start(parsed)
            if outcome is HAND_OFF:
                return self._hand_off()
            self._buffer = buffer[parsed.size :]
            if outcome is CLOSED:
                return None
        if edge.closing and self._current is None:
            self.close()
        return None

    def _hand_off(self) -> None:
        """From now on this connection is aiohttp's, starting with the bytes buffered."""
        transport = self._transport
        assert transport is not None
        self.flush()  # answers already given come first
        self._edge.connections.discard(self)
        handler = self._edge.new_handler()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if self._reading_paused:
            self._reading_paused = False
            transport.resume_reading()
        data, self._buffer = self._buffer, b""
        if data:
            handler.data_received(data)

    async def _drained(self) -> None:
        if self._write_paused and self._transport is not None and not self._transport.is_closing():
            drain = self._drain = self._edge.loop.create_future()
            try:
                await drain
            finally:
                self._drain = None

    def _write(self, data: bytes) -> None:
        """Queue ``data``; the edge sends every connection's answers at the end of
        the loop pass: one wake-up of a client on another core for the batch
        instead of one per answer (on loopback that wake-up, not the copy, is
        most of a write's cost)."""
        if self._out:
            self._out += data
        else:
            self._out = data
            self._edge.queue(self)

    def _refuse(self, exc: KeygateError, x: Exchange) -> bool:
        """Answer ``exc``; whether the connection stays open."""
        x.code = exc.code
        answer, keep_alive = self._refusal(exc, x)
        self._write(answer)
        if not keep_alive:
            self.close()
        elif exc.status == 401 and x.mode != FORWARD_AUTH:
            # Not a proxy asking for forward-auth: its one connection carries
            # many clients' questions, and one client's 401 must not slow the rest.
            self._hold()
        return keep_alive

    def _hold(self) -> None:
        """After a 401, read this client's next request only after
        ``auth.refusal_delay``, if authenticated requests are in flight: a client
        failing to authenticate (a brute force, a flood of forged keys) then
        cannot crowd out the clients that succeed. With nothing else to do,
        refusals are answered at full speed."""
        edge = self._edge
        # Only authorised work counts: a refusal still waiting for its own
        # lookup must not slow a pure flood down (nothing else to protect).
        if edge.refusal_delay <= 0 or edge.authorised <= 0 or self._held is not None:
            return
        self._held = edge.loop.call_later(edge.refusal_delay, self._release)
        if not self._reading_paused and self._transport is not None:
            self._transport.pause_reading()

    def _release(self) -> None:
        self._held = None
        if not self._reading_paused and self._transport is not None:
            self._transport.resume_reading()
        if self._current is None:
            self._serve()

    def _done(self, keep_alive: bool) -> None:
        """The answer is out: next request, or close."""
        self.idle_since = self._edge.loop.time()
        if not keep_alive or self._edge.closing:
            self.close()
            return
        if self._held is not None:
            return  # _release goes on
        if self._reading_paused and self._transport is not None:
            self._reading_paused = False
            self._transport.resume_reading()
        if self._buffer:
            self._serve()

    def _log(self, x: Exchange) -> None:
        edge = self._edge
        counts = edge.gw.metrics
        if counts is not None:
            counts.request(
                x.route, x.method, x.status, edge.loop.time() - x.started, x.code, x.key_id, x.mode
            )
        logger = edge.access_log
        if logger is None:
            return
        write = edge.access_line
        if write is not None:
            write(self._access_line(x))
        elif logger.isEnabledFor(logging.INFO):
            logger.info("%s", self._access_line(x))
