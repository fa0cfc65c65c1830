"""One keep-alive HTTP/1.1 connection to a plain-http upstream, parsed with httptools.

A connection carries one exchange at a time: the pool (:mod:`gateway.upstream_pool`)
hands it out, the exchange (:mod:`gateway.upstream`) writes a request and reads
the response, and :meth:`UpstreamConnection.finish` gives it back only when the
response was read to its end and allowed keep-alive (RFC 9112 §9.3). Anything
unexpected — a parse error, bytes while idle, a second response, an early
close — ends the connection, so a request is never written behind another one
(no pipelining) and a half-read response is never taken for the next one.
"""

from __future__ import annotations

import asyncio
import select
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, TypeAlias, cast

import httptools

from keygate.gateway.upstream.flow import WriteFlow

if TYPE_CHECKING:
    from keygate.gateway.upstream.pool import UpstreamPool

OriginKey: TypeAlias = tuple[str, int]

# Reading pauses while this much response body waits for a slow client.
HIGH_WATER: Final = 256 * 1024
# An upstream's response head is bounded like a client's request head: one
# header line, the whole head, and the number of header lines (502 beyond).
MAX_HEADER_LINE: Final = 16384
MAX_HEAD_BYTES: Final = 65536
MAX_HEADERS: Final = 256


class UpstreamError(Exception):
    """The upstream broke the exchange: refused, reset, closed early, or not HTTP.

    ``stale`` is true when nothing of the response arrived: on a connection
    taken from the pool, that is the keep-alive race (the upstream closed it as
    we sent), which may be retried on a fresh connection
    (:func:`~keygate.gateway.upstream.exchange.may_retry`, which also reads
    :attr:`UpstreamConnection.sent`).
    """

    def __init__(self, message: str, *, stale: bool = False) -> None:
        super().__init__(message)
        self.stale = stale


class UpstreamConnection(WriteFlow, asyncio.Protocol):
    """One upstream connection and the state of its current exchange."""

    __slots__ = (
        "_head_bytes",
        "_head_request",
        "_informational",
        "_loop",
        "_parser",
        "_pool",
        "_probe",
        "_reading_paused",
        "_waiter",
        "active",
        "body",
        "buffered",
        "closed",
        "complete",
        "deadline",
        "error",
        "head_done",
        "headers",
        "idle_since",
        "keep_alive",
        "key",
        "listener",
        "lost",
        "reason",
        "received",
        "sent",
        "status",
        "transport",
        "until_close",
    )

    def __init__(self, pool: UpstreamPool, key: OriginKey) -> None:
        self._pool = pool
        self._loop = pool.loop
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] = self._loop.create_future()
        self.lost = False
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[None] | None = None
        self.deadline = 0.0  # loop time; the pool's ticker expires the exchange after it
        WriteFlow.__init__(self)
        self._reading_paused = False
        self.active = False
        # Called on progress instead of (or as well as) waking a waiter: the
        # edge protocol drives small exchanges from callbacks, with no task.
        self.listener: Callable[[], None] | None = None
        # Polls the socket before a reused connection's first write (see write).
        self._probe: select.poll | None = None
        self._reset(False)

    def _reset(self, head_request: bool) -> None:
        self._head_request = head_request
        self._head_bytes = 0
        self._informational = False
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_done = False  # the final (non-1xx) response head was read
        self.body: list[bytes] = []
        self.buffered = 0
        self.received = False  # any byte of the response arrived
        self.sent = False  # any byte of the request went to a live connection
        self.complete = False  # the response ended, body included
        self.until_close = False  # no length, not chunked: the body ends at EOF
        self.keep_alive = False
        self.error: BaseException | None = None

    # -- driving an exchange (called by gateway.upstream) ------------------------
    def start(
        self,
        head: bytes,
        deadline: float,
        head_request: bool,
        listener: Callable[[], None] | None = None,
        *,
        send: bool = True,
    ) -> None:
        """Begin an exchange: write the request head, arm the route's deadline.

        ``send=False``: the caller writes ``head`` itself, soon (the edge
        batches its writes per loop pass); until then nothing can arrive.
        """
        self._reset(head_request)
        self.listener = listener
        self.active = True
        self.deadline = deadline
        self._pool.busy(self)
        if send:
            self.write(head)

    def write(self, data: bytes) -> None:
        """Send ``data``; UpstreamError (stale) if the connection is already closing.

        A transport that is closing (the upstream's FIN was read, or we
        aborted) would drop the bytes: they never reach the upstream, and
        :attr:`sent` stays false, so the request may go again elsewhere.
        """
        transport = self.transport
        if self.lost or transport is None or transport.is_closing():
            raise UpstreamError("the upstream connection is gone", stale=not self.received)
        if not self.sent and self._probe is not None and self._probe.poll(0):
            # Readable while idle: the upstream's FIN (or stray bytes) is in the
            # kernel, not yet read by the loop. It closed before these bytes
            # could reach it, so they never go (RFC 9112 §9.3.1, the keep-alive race).
            raise UpstreamError("the upstream closed the idle connection", stale=True)
        transport.write(data)
        self.sent = True

    async def drain(self) -> None:
        """Wait while the kernel buffer towards the upstream is full."""
        if self._write_paused and not self.lost:
            drain = self._drain = self._loop.create_future()
            try:
                await drain
            finally:
                self._drain = None

    async def read_body(self) -> bytes:
        """The body bytes buffered so far (waiting for some); b"" once it ended."""
        while not self.body:
            if self.complete:
                return b""
            await self.wait()
        return self.take_body()

    def take_body(self) -> bytes:
        """The body bytes buffered so far, perhaps none; reading resumes if it paused."""
        body = self.body
        if not body:
            return b""
        self.body = []
        self.buffered = 0
        if self._reading_paused and self.transport is not None and not self.lost:
            self._reading_paused = False
            self.transport.resume_reading()
        return body[0] if len(body) == 1 else b"".join(body)

    def finish(self, reuse: bool) -> None:
        """End the exchange: back to the pool if it may be reused, else closed."""
        self.listener = None
        if reuse and self.complete and self.keep_alive and self.error is None and not self.lost:
            self.active = False
            if self._probe is None:
                self._probe = _probe(self.transport)
            self._pool.release(self)
        else:
            self.abort()

    def abort(self) -> None:
        """Drop the connection now (broken, unfinished or expired): never reused."""
        self.listener = None
        if self.active:
            self.active = False
            self._pool.idle(self)
        self.keep_alive = False
        if self.transport is not None and not self.lost:
            self.transport.abort()

    async def wait(self) -> None:
        """Wait for progress (head, body bytes, the end); raise what broke the exchange."""
        if self.error is not None:
            raise self.error
        waiter = self._waiter = self._loop.create_future()
        try:
            await waiter
        finally:
            self._waiter = None
        if self.error is not None:
            raise self.error

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        listener = self.listener
        if listener is not None:
            listener()

    def fail(self, error: BaseException) -> None:
        """Break the exchange with ``error`` (raised to the reader) and drop the connection."""
        if self.error is None:
            self.error = error
        self.keep_alive = False
        if self.transport is not None and not self.lost:
            self.transport.abort()
        self._wake()

    def expire(self) -> None:
        """The route's deadline passed (called by the pool's ticker)."""
        self.fail(TimeoutError("the upstream did not answer in time"))

    # -- asyncio.Protocol ------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if not self.active:
            # Bytes while idle: the upstream is confused; nobody waits for them.
            self.fail(UpstreamError("unexpected bytes from an idle upstream connection"))
            return
        if self.complete:
            self._drop_after_response()
            return
        self.received = True
        head_done = self.head_done
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.fail(UpstreamError("the upstream switched protocols unasked"))
        except httptools.HttpParserError as exc:
            if self.complete:  # raised by on_message_begin: a second response
                self._drop_after_response()
            else:
                self.fail(UpstreamError(f"malformed response: {exc}"))
        if not head_done and not self.head_done and self.error is None:
            # Everything fed so far belongs to the head, which the parser holds
            # in memory until it ends: bound it before it grows further.
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self.fail(UpstreamError("response head too large"))
        if self._head_request and self.complete:
            # A HEAD response has no body whatever its framing headers say, and
            # the parser cannot be told: the next exchange gets a fresh one.
            self._parser = httptools.HttpResponseParser(self)
        self._wake()

    def _drop_after_response(self) -> None:
        """Bytes after a complete response: it stands, the connection goes."""
        self.keep_alive = False
        if self.transport is not None and not self.lost:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.keep_alive = False
        if self.active and not self.complete:
            if self.until_close and self.head_done:
                self.complete = True  # RFC 9112 §6.3: the body ends with the connection
            elif self.error is None:
                self.error = UpstreamError(
                    "the upstream closed the connection early", stale=not self.received
                )
        self._pool.forget(self)
        if not self.closed.done():
            self.closed.set_result(None)
        self._wake()
        self._wake_drain()


    # -- httptools callbacks ----------------------------------------------------------
    def on_message_begin(self) -> None:
        if self.complete:
            raise UpstreamError("a second response to one request")

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.head_done:
            # A trailer field (after the last chunk): never merged into the
            # header section already relayed (RFC 9110 §6.5.1); dropped.
            return
        if len(name) + len(value) > MAX_HEADER_LINE or len(self.headers) >= MAX_HEADERS:
            raise UpstreamError("response header too large")
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            # RFC 9110 §15.2: interim responses (100 Continue, 103 Early Hints)
            # come before the final one and are not relayed.
            self._informational = True
            self.headers = []
            self.reason = b""
            return
        if status == 101:
            # Never asked for: Upgrade is hop-by-hop and not forwarded here
            # (WebSocket upgrades take the aiohttp path).
            raise UpstreamError("the upstream switched protocols unasked")
        self.status = status
        self.head_done = True
        if self._head_request:
            self.keep_alive = self._parser.should_keep_alive()
            self.complete = True
        elif status != 204 and status != 304:
            self.until_close = _until_close(self.headers)

    def on_body(self, body: bytes) -> None:
        if self._head_request:
            self.keep_alive = False  # a body after a HEAD response: a confused upstream
            return
        self.body.append(body)
        self.buffered += len(body)
        if self.buffered > HIGH_WATER and not self._reading_paused and self.transport:
            self._reading_paused = True
            self.transport.pause_reading()

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        if not self._head_request:
            self.keep_alive = self._parser.should_keep_alive()
            self.complete = True


def _probe(transport: asyncio.Transport | None) -> select.poll | None:
    """A poll of the connection's socket for readability (None without a socket)."""
    sock = transport.get_extra_info("socket") if transport is not None else None
    fd = sock.fileno() if sock is not None else -1
    if fd < 0:
        return None
    probe = select.poll()
    probe.register(fd, select.POLLIN)
    return probe


def _until_close(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether a response body is delimited by the end of the connection (RFC 9112 §6.3)."""
    codings: list[bytes] = []
    for name, value in headers:
        low = name.lower()
        if low == b"content-length":
            return False
        if low == b"transfer-encoding":
            codings.extend(value.split(b","))
    # Chunked must be the final coding; otherwise a response reads until close.
    return not codings or codings[-1].strip().lower() != b"chunked"
