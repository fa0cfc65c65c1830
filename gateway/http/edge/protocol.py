"""The edge: keygate's own HTTP/1.1 server protocol for plain proxied requests.

aiohttp's server builds, per request, a message, a header multidict, a
``Request``, a ``StreamResponse``, a payload writer, middleware and handler
coroutines and a task, and that costs more CPU than the whole proxy exchange
around it. The edge parses a request head with httptools, answers refusals
from bytes it builds itself, and relays the upstream's answer through the same
keep-alive client (:mod:`gateway.upstream`). A cached key on an idle pooled
upstream connection is forwarded from the two protocols' callbacks alone, with
no task; a cache miss, a new upstream connection, a retry or a streamed answer
takes one task.

It serves only what it can serve exactly as the aiohttp handler would: a
whole head, within the limits, in clean HTTP/1.0 or 1.1 framing, without
``Transfer-Encoding``, ``Expect`` or ``Upgrade``, with no body or a small
``Content-Length`` one that arrived with it, an origin-form target outside
the admin prefix and one valid Host, for a plain-http route. Anything else —
and everything after it on that connection — is handed to aiohttp's
``RequestHandler`` with the bytes received so far, as if aiohttp had accepted
the connection itself: streamed or chunked uploads, partial heads
(slowloris), any framing question, WebSocket, ``https://`` upstreams and the
admin API are aiohttp's, as before. Both front ends share the proxy steps
(:mod:`gateway.proxy`), the header rules, the access line and the error
bodies; :mod:`gateway.wire` frames responses as aiohttp does, and
``tests/gateway/test_edge_parity.py`` holds the two to the same answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Final, NamedTuple, cast
from urllib.parse import unquote

import httptools
from aiohttp import hdrs
from aiohttp.tcp_helpers import tcp_keepalive
from aiohttp.web_protocol import RequestHandler
from keygate.gateway.auth.cache import Principal
from keygate.gateway.errors import BadFraming, BadPath, KeygateError, TooLarge, UpstreamBusy
from keygate.gateway.http.accesslog import access_message
from keygate.gateway.http.edge.wire import error_response, response_head
from keygate.gateway.http.logsetup import info_line_writer
from keygate.gateway.pipeline import Resolved, authorise, resolve, upstream_pairs, upstream_target
from keygate.gateway.request.headers import HOST_FIELD, RequestIds, request_id_or_new
from keygate.gateway.request.pathnorm import is_under, normalise_path
from keygate.gateway.upstream.client import RouteGate
from keygate.gateway.upstream.connection import UpstreamConnection, UpstreamError
from keygate.gateway.upstream.exchange import (
    IDEMPOTENT,
    SMALL_BODY,
    client_error,
    is_bodiless,
    mapped_errors,
    open_exchange,
    read_small,
    response_headers,
)
from keygate.gateway.upstream.flow import WriteFlow
from keygate.gateway.upstream.head import request_head
from keygate.gateway.upstream.pool import UpstreamPool
from multidict import CIMultiDict, CIMultiDictProxy, istr

if TYPE_CHECKING:
    from keygate.gateway.state import Gateway

log = logging.getLogger("keygate.edge")

_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_VERSIONS: Final = frozenset({"1.0", "1.1"})
# Request-target bytes the edge takes itself: visible ASCII (RFC 9112 §3.2);
# anything else is aiohttp's to judge.
_TARGET_BYTES: Final = bytes(range(0x21, 0x7F))
# Names that send a request to aiohttp: its body, its framing or its protocol
# is something only the full server handles.
_AIOHTTP_ONLY: Final = frozenset({b"transfer-encoding", b"expect", b"upgrade"})
# The largest request body the edge forwards itself (whole, from its buffer).
MAX_BODY: Final = 64 * 1024
# aiohttp's parser names every field it knows by its hdrs constant (see
# aiohttp/_http_parser.pyx find_header); the edge hands on the same names.
_CANONICAL: Final = {
    str(v).lower().encode(): str(v) for v in vars(hdrs).values() if isinstance(v, istr)
}
# Fields aiohttp's request parser refuses to see twice (RFC 9110 singletons).
_SINGLETONS: Final = frozenset(
    name.lower().encode()
    for name in (
        hdrs.CONTENT_LENGTH,
        hdrs.CONTENT_LOCATION,
        hdrs.CONTENT_RANGE,
        hdrs.CONTENT_TYPE,
        hdrs.ETAG,
        hdrs.HOST,
        hdrs.MAX_FORWARDS,
        hdrs.SERVER,
        hdrs.TRANSFER_ENCODING,
        hdrs.USER_AGENT,
    )
)
# A Connection value that may name a framing field: aiohttp's to refuse.
_NOMINATED_FRAMING: Final = re.compile(rb"(?i)content-length|transfer-encoding")
# Pipelined bytes buffered while a request is in flight before reading pauses.
_PIPELINE_LIMIT: Final = 64 * 1024
_CRLFCRLF: Final = b"\r\n\r\n"


# What _start did with a request.
_HAND_OFF: Final = object()  # nothing: the connection goes to aiohttp with it
_ANSWERED: Final = object()  # refused at once; the connection stays open
_CLOSED: Final = object()  # refused at once; the connection closes
_FORWARDING: Final = object()  # a task forwards it


class _Request(NamedTuple):
    """A request as parsed from the buffer; ``size`` bytes of it, body included."""

    method: str
    target: str
    version: str
    headers: CIMultiDictProxy[str]
    keep_alive: bool
    body: bytes
    size: int


class _Exchange:
    """One request on the edge, from its head to the end of its answer."""

    __slots__ = (
        "abandoned",
        "bodiless",
        "body",
        "conn",
        "digest",
        "gate",
        "gated",
        "headers",
        "keep_alive",
        "key_id",
        "length",
        "method",
        "out_headers",
        "principal",
        "query",
        "reason",
        "request_id",
        "resolved",
        "route",
        "sent",
        "started",
        "status",
        "target",
        "version",
    )

    def __init__(self, request: _Request, query: str, request_id: str, started: float) -> None:
        self.method = request.method
        self.target = request.target
        self.query = query
        self.version = request.version
        self.headers = request.headers
        self.keep_alive = request.keep_alive
        self.body = request.body
        self.request_id = request_id
        self.started = started
        self.resolved: Resolved | None = None
        self.route: str | None = None
        self.gate: RouteGate | None = None
        self.gated = False  # counted in the gate's in_flight
        self.digest = b""
        self.principal: Principal | None = None
        self.key_id: str | None = None
        self.conn: UpstreamConnection | None = None
        self.status = 500
        self.reason: str | None = None
        self.out_headers: list[tuple[str, str]] | None = None
        self.length: int | None = None
        self.bodiless = False
        self.sent = False  # any byte of the answer written
        self.abandoned = False  # the client left before the answer


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
        server = gw.settings.server
        self.gw = gw
        self.pool = pool
        self.new_handler = new_handler
        self.access_log = access_log
        # Straight into the batch when `keygate serve` set the logger up.
        self.access_line = info_line_writer(access_log) if access_log is not None else None
        self.loop = asyncio.get_running_loop()
        self.ids = ids
        self.admin_prefix = server.admin_prefix
        # A head longer than either limit may break one: aiohttp judges it (414/431).
        self.max_head = min(server.max_line_bytes, server.max_header_bytes)
        self.max_headers = server.max_header_count
        self.idle_timeout = server.header_timeout
        self.refusal_delay = gw.settings.auth.refusal_delay
        self.connections: set[EdgeProtocol] = set()
        self.busy = 0  # requests in flight
        self.authorised = 0  # of which past authentication, holding a route slot
        self.closing = False
        self._drained: asyncio.Future[None] | None = None
        # Connections with answers waiting for the end of the loop pass.
        self._out: list[EdgeProtocol] = []
        self._upstream_out: list[tuple[UpstreamConnection, bytes]] = []
        self._flusher: asyncio.Handle | None = None
        self._sweeper: asyncio.TimerHandle | None = None

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


class EdgeProtocol(WriteFlow, asyncio.Protocol):
    """One client connection, served by the edge until it hands it to aiohttp."""

    __slots__ = (
        "_buffer",
        "_complete",
        "_current",
        "_drain",
        "_edge",
        "_header_pairs",
        "_held",
        "_keep_alive",
        "_out",
        "_parser",
        "_peer",
        "_proto",
        "_reading_paused",
        "_transport",
        "_url",
        "_write_paused",
        "idle_since",
        "task",
    )

    def __init__(self, edge: Edge) -> None:
        self._edge = edge
        self._transport: asyncio.Transport | None = None
        self._buffer = b""
        self._out = b""  # answers not yet written (see _write)
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._header_pairs: list[tuple[bytes, bytes]] = []
        self._complete = False
        self._keep_alive = False
        self._peer = "unknown"
        self._proto = "http"
        self._reading_paused = False
        # Set while a refused client waits for its next request to be read.
        self._held: asyncio.TimerHandle | None = None
        self._write_paused = False
        self._drain: asyncio.Future[None] | None = None
        # The request in flight (at most one: pipelined ones wait in _buffer),
        # and the task forwarding it unless upstream callbacks drive it.
        self._current: _Exchange | None = None
        self.task: asyncio.Task[None] | None = None
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


    # -- httptools callbacks -----------------------------------------------------------
    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_pairs.append((name, value))

    def on_headers_complete(self) -> None:
        # Read now: once the message completes the parser is reset for the next.
        self._keep_alive = self._parser.should_keep_alive()

    def on_message_complete(self) -> None:
        self._complete = True

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
            parsed = self._parse(buffer)
            if parsed is None:
                return self._hand_off()
            outcome = self._start(parsed)
            if outcome is _HAND_OFF:
                return self._hand_off()
            self._buffer = buffer[parsed.size :]
            if outcome is _CLOSED:
                return None
        if edge.closing and self._current is None:
            self.close()
        return None

    def _parse(self, buffer: bytes) -> _Request | None:
        """The first request in ``buffer`` if the edge may take it, else None."""
        edge = self._edge
        end = buffer.find(_CRLFCRLF, 0, edge.max_head)
        if end < 0:
            return None  # a partial head: aiohttp bounds its time and size
        size = end + 4
        head = buffer[:size]
        lines = head.count(b"\r\n")
        if (
            head.count(b"\n") != lines
            or head.count(b"\r") != lines
            or lines - 2 > edge.max_headers
            or b"\x00" in head
            or b"\n " in head
            or b"\n\t" in head
        ):
            return None  # bare CR or LF, NUL, obs-fold, too many fields: aiohttp's call
        self._url = b""
        self._header_pairs = []
        self._complete = False
        parser = self._parser
        try:
            parser.feed_data(head)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            return None
        url = self._url
        if not url.startswith(b"/") or url.translate(None, _TARGET_BYTES) or b"#" in url:
            return None
        version = parser.get_http_version()
        method = parser.get_method().decode("ascii", "replace")
        if version not in _VERSIONS or method not in _METHODS:
            return None
        pairs: list[tuple[str, str]] = []
        hosts = 0
        length = -1
        singletons: set[bytes] | None = None
        for raw_name, raw_value in self._header_pairs:
            low_bytes = raw_name.lower()
            # As aiohttp's parser reads a field: a known name in its canonical
            # spelling, the value without trailing whitespace (llhttp strips
            # only the leading OWS).
            name = _CANONICAL.get(low_bytes) or raw_name.decode("utf-8", "surrogateescape")
            value = raw_value.rstrip(b" \t").decode("utf-8", "surrogateescape")
            if low_bytes in _SINGLETONS:
                if singletons is None:
                    singletons = {low_bytes}
                elif low_bytes in singletons:
                    return None  # a repeated singleton field: aiohttp's 400
                else:
                    singletons.add(low_bytes)
            if low_bytes == b"host":
                hosts += 1
                if not HOST_FIELD.fullmatch(value):
                    return None
            elif low_bytes == b"content-length":
                if length >= 0 or not (value.isascii() and value.isdigit()) or len(value) > 9:
                    return None  # repeated or odd: aiohttp's parser judges it
                length = int(value)
            elif low_bytes in _AIOHTTP_ONLY:
                return None
            elif low_bytes == b"connection" and _NOMINATED_FRAMING.search(raw_value):
                return None  # a framing refusal: aiohttp's check_framing answers it
            pairs.append((name, value))
        if hosts > 1 or (hosts == 0 and version == "1.1"):
            return None
        body = b""
        if not self._complete:
            # A body: the edge takes it only whole, small and here already;
            # a larger or slower one streams through aiohttp.
            if length <= 0 or length > MAX_BODY or len(buffer) < size + length:
                return None
            body = buffer[size : size + length]
            try:
                parser.feed_data(body)
            except httptools.HttpParserError:
                return None
            if not self._complete:
                return None
            size += length
        headers = CIMultiDictProxy(CIMultiDict(pairs))
        return _Request(method, url.decode("ascii"), version, headers, self._keep_alive, body, size)

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

    def _start(self, request: _Request) -> object:
        """Serve one request: answered at once, forwarded by a task, or aiohttp's."""
        edge = self._edge
        gw = edge.gw
        method, target, headers = request.method, request.target, request.headers
        raw_path, _, query = target.partition("?")
        prefix = edge.admin_prefix
        try:
            path = normalise_path(raw_path)
        except BadPath:
            return _HAND_OFF  # aiohttp routes it first (it may be an admin path)
        if (
            is_under(path, prefix)
            or is_under(raw_path, prefix)
            or ("%" in raw_path and is_under(unquote(raw_path), prefix))
        ):
            # The admin app's, and so are tricks aimed into its prefix: aiohttp's
            # router decodes escapes (but %2F) before matching the sub-app.
            return _HAND_OFF
        request_id = request_id_or_new(headers.get("X-Request-Id"), edge.ids)
        x = _Exchange(request, query, request_id, edge.loop.time())
        try:
            x.resolved = resolved = resolve(gw, headers, path, query, self._proto)
            x.route = resolved.route.name
            gate = x.gate = gw.gates[x.route]
            if gate.origin is None:
                return _HAND_OFF  # an https upstream: aiohttp's client speaks TLS
            limit = resolved.route.max_body_bytes
            if limit is not None and len(request.body) > limit:
                raise TooLarge()
            if resolved.credential is not None:
                verifier = gw.verifier
                token = resolved.credential.token
                x.digest, principal = verifier.cached(token)
                if principal is not None:
                    x.principal = principal
                    x.key_id = principal.key_id
                    body = request.body
                    check = authorise(gw, resolved, principal, method, headers, query, bool(body))
                    if check is not None:
                        check.whole(body)  # the whole body is here: before anything is sent
            # A miss is checked after its lookup, as the aiohttp handler does.
            if (x.principal is not None or resolved.credential is None) and (
                gate.in_flight >= gate.limit
            ):
                raise UpstreamBusy()
        except Exception as exc:
            if not isinstance(exc, KeygateError):
                # A bug, never a traceback to the client: the 500 of SPEC §5.
                log.exception("internal error on %s %s", method, raw_path[:200])
                exc = KeygateError()
            x.status = exc.status
            keep_alive = self._refuse(exc, x)
            self._log(x)
            return _ANSWERED if keep_alive else _CLOSED
        self._current = x
        edge.busy += 1
        if x.principal is not None or resolved.credential is None:
            conn = edge.pool.take(gate.origin.key)
            if conn is not None and self._send(x, conn):
                return _FORWARDING
        self.task = edge.loop.create_task(self._run(x, self._forward(x)))
        return _FORWARDING

    # -- forwarding ----------------------------------------------------------------
    def _upstream_head(self, x: _Exchange) -> bytes:
        gw = self._edge.gw
        resolved = x.resolved
        assert resolved is not None and x.gate is not None and x.gate.origin is not None
        pairs = upstream_pairs(
            gw,
            resolved,
            x.headers,
            x.principal.identity if x.principal is not None else None,
            client_ip=self._peer,
            proto=self._proto,
            request_id=x.request_id,
        )
        target = upstream_target(gw, resolved)
        # The head frames exactly the body that follows it, in the same write.
        body = x.body
        head = request_head(x.method, target, x.gate.origin.host, pairs, len(body) or None)
        return head + body if body else head

    def _send(self, x: _Exchange, conn: UpstreamConnection) -> bool:
        """Forward on an idle pooled connection, driven by its callbacks (no task).

        The head goes out with the loop pass's other writes; a connection
        that died meanwhile fails stale, and the request is retried.
        """
        assert x.gate is not None and x.resolved is not None
        head = self._upstream_head(x)
        self._gate_in(x)
        x.conn = conn
        deadline = self._edge.loop.time() + x.resolved.route.timeout
        conn.start(head, deadline, x.method == "HEAD", self._on_upstream, send=False)
        self._edge.queue_upstream(conn, head)
        return True

    def _on_upstream(self) -> None:
        """Progress on the upstream exchange of a callback-driven request."""
        x = self._current
        if x is None or x.conn is None:
            return
        conn = x.conn
        try:
            if conn.error is not None:
                error = conn.error
                conn.abort()
                x.conn = None
                if (
                    isinstance(error, UpstreamError)
                    and error.stale
                    and x.method in IDEMPOTENT
                ):
                    # The keep-alive race (RFC 9112 §9.3.1): once more, on a
                    # fresh connection, by the task's road.
                    assert x.gate is not None
                    self._gate_out(x)
                    self.task = self._edge.loop.create_task(
                        self._run(x, self._forward(x, fresh=True))
                    )
                    return
                self._failed(x, client_error(error))
                self._finish(x)
                return
            if not conn.head_done:
                return
            if x.out_headers is None:
                self._response_of(x, conn)
            length = x.length
            if not x.bodiless and (length is None or length > SMALL_BODY):
                conn.listener = None
                self.task = self._edge.loop.create_task(self._run(x, self._relay(x)))
                return
            if not x.bodiless and not conn.complete:
                return
            self._answer_whole(x, b"" if x.bodiless else conn.take_body())
        except KeygateError as exc:
            self._failed(x, exc)
        except Exception:
            log.exception("internal error on %s %s", x.method, x.target.partition("?")[0][:200])
            self._failed(x, KeygateError())
        self._finish(x)

    def _response_of(self, x: _Exchange, conn: UpstreamConnection) -> None:
        x.status = conn.status
        x.out_headers, x.length = response_headers(conn.headers)
        x.reason = conn.reason.decode("utf-8", "surrogateescape") or None
        x.bodiless = is_bodiless(x.method, x.status)

    def _answer_whole(self, x: _Exchange, data: bytes) -> None:
        conn = x.conn
        assert conn is not None and x.out_headers is not None
        conn.finish(reuse=True)
        x.conn = None
        answer, _ = self._answer_head(x, len(data))
        self._write(answer + data if data and not x.bodiless else answer)

    def _answer_head(self, x: _Exchange, body_length: int | None) -> tuple[bytes, bool]:
        """The upstream's answer head for the client, and whether it goes chunked;
        ``x.keep_alive`` becomes whether the connection stays open after it."""
        assert x.out_headers is not None
        head, chunked, x.keep_alive = response_head(
            x.version,
            x.status,
            x.reason,
            x.out_headers,
            method=x.method,
            body_length=body_length,
            keep_alive=x.keep_alive,
            request_id=x.request_id,
        )
        return head, chunked

    async def _run(self, x: _Exchange, work: Coroutine[None, None, None]) -> None:
        """Run a forwarding step as this connection's task; every ending is answered."""
        try:
            try:
                await work
            except KeygateError as exc:
                self._failed(x, exc)
        except asyncio.CancelledError:
            x.keep_alive = False  # the client left
            raise
        except Exception:
            log.exception("internal error on %s %s", x.method, x.target.partition("?")[0][:200])
            self._failed(x, KeygateError())
        finally:
            work.close()  # never started if cancelled at once
            self.task = None
            self._finish(x)

    async def _forward(self, x: _Exchange, *, fresh: bool = False) -> None:
        """The task's road: a cache miss, a new upstream connection, or a retry."""
        edge = self._edge
        gw = edge.gw
        resolved = x.resolved
        assert resolved is not None and x.gate is not None and x.gate.origin is not None
        if resolved.credential is not None and x.principal is None:
            x.principal = principal = await gw.verifier.load(x.digest, resolved.credential.token)
            x.key_id = principal.key_id
            check = authorise(gw, resolved, principal, x.method, x.headers, x.query, bool(x.body))
            if check is not None:
                check.whole(x.body)
        head = self._upstream_head(x)
        self._gate_in(x)
        deadline = edge.loop.time() + resolved.route.timeout
        with mapped_errors(None):
            x.conn, _ = await open_exchange(
                edge.pool, x.gate.origin, x.method, head, None, None, deadline, fresh=fresh
            )
            self._response_of(x, x.conn)
            data = await read_small(x.conn, x.bodiless, x.length)
        if data is not None:
            self._answer_whole(x, data)
            return
        await self._relay(x)

    async def _relay(self, x: _Exchange) -> None:
        """Stream the answer: the head now, the body as it comes."""
        conn = x.conn
        transport = self._transport
        assert conn is not None and transport is not None and x.out_headers is not None
        answer, chunked = self._answer_head(x, None)
        x.sent = True
        self._write(answer)
        self.flush()  # the body follows straight on the transport
        while True:
            with mapped_errors(None):
                chunk = await conn.read_body()
            if not chunk:
                break
            if transport.is_closing():
                x.keep_alive = False
                return  # the client is gone; _finish drops the upstream
            transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
            if self._write_paused:
                await self._drained()
        conn.finish(reuse=True)
        x.conn = None
        if chunked:
            self._write(b"0\r\n\r\n")

    def _gate_in(self, x: _Exchange) -> None:
        """Take the route slot (UpstreamBusy when full): the request is authorised."""
        assert x.gate is not None
        x.gate.__enter__()
        x.gated = True
        self._edge.authorised += 1

    def _gate_out(self, x: _Exchange) -> None:
        if x.gated:
            assert x.gate is not None
            x.gated = False
            x.gate.__exit__()
            self._edge.authorised -= 1

    def _failed(self, x: _Exchange, exc: KeygateError) -> None:
        x.status = exc.status
        if x.sent:
            # Mid-answer: cut the connection, so the message ends short of its
            # length or final chunk instead of looking complete.
            x.keep_alive = False
            self.abort()
        else:
            x.keep_alive = self._refuse(exc, x)

    def _finish(self, x: _Exchange) -> None:
        """The exchange ended, however: release what it held, log it, go on."""
        if self._current is not x:
            return  # finished already (the client left)
        self._current = None
        conn = x.conn
        if conn is not None:
            x.conn = None
            if conn.active:
                conn.abort()  # not read to its end: never reused
        self._gate_out(x)
        edge = self._edge
        edge.busy -= 1
        if not x.abandoned:
            self._log(x)
        if edge.closing and edge.busy == 0:
            edge.drained()
        self._done(x.keep_alive)

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

    def _refuse(self, exc: KeygateError, x: _Exchange) -> bool:
        answer, keep_alive = error_response(
            exc,
            version=x.version,
            method=x.method,
            keep_alive=x.keep_alive and not isinstance(exc, BadFraming),
            request_id=x.request_id,
        )
        self._write(answer)
        if not keep_alive:
            self.close()
        elif exc.status == 401:
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

    def _log(self, x: _Exchange) -> None:
        edge = self._edge
        logger = edge.access_log
        if logger is None:
            return
        write = edge.access_line
        if write is None and not logger.isEnabledFor(logging.INFO):
            return
        elapsed = edge.loop.time() - x.started
        message = access_message(
            x.method, x.target, x.status, elapsed, x.key_id, x.route, x.request_id
        )
        if write is not None:
            write(message)
        else:
            logger.info("%s", message)
