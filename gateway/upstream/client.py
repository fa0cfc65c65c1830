"""The streaming forwarder: one client request, one upstream exchange.

Bodies are relayed chunk by chunk both ways, never buffered whole; WebSocket
upgrades are relayed message by message. Plain ``http://`` upstreams are spoken
to by the lean pooled client of :mod:`gateway.upstream`; WebSocket upgrades and
``https://`` upstreams by aiohttp's client session.

Framing: a request with Content-Length goes upstream with it, a chunked one
goes chunked (never both). A response keeps the upstream's Content-Length;
without one it is chunked to HTTP/1.1 clients.

Errors: until the client's response has started, failures raise a
:class:`~gateway.errors.KeygateError` (400, 413, 502, 503, 504) for the error
middleware. Afterwards the client connection is aborted, so the message ends
short of its length or final chunk (RFC 9112 §8: incomplete) instead of looking
complete; the error is still raised for the log, and whatever the middleware
writes for it goes nowhere.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Final, TypeAlias

import aiohttp
import yarl
from aiohttp import hdrs, web
from keygate.config.settings import Route
from keygate.gateway.errors import (
    BadRequest,
    MethodNotAllowed,
    TooLarge,
    UpstreamBusy,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from keygate.gateway.request.body import BodyCheck, RequestBody, failure
from keygate.gateway.request.headers import downstream_response_headers
from keygate.gateway.upstream.exchange import (
    SMALL_BODY,
    Headers,
    Origin,
    abort_client,
    body_length,
    close_if_unframed,
    exchange,
)
from keygate.gateway.upstream.head import CHUNKED
from keygate.gateway.upstream.pool import UpstreamPool
from multidict import CIMultiDict, CIMultiDictProxy

_WebSocket: TypeAlias = "web.WebSocketResponse | aiohttp.ClientWebSocketResponse"

# aiohttp's client adds these when absent; a proxy sends only what the client
# sent (an unasked Accept-Encoding would get the client a gzip body).
_SKIP_AUTO_HEADERS: Final = frozenset(
    {hdrs.ACCEPT, hdrs.ACCEPT_ENCODING, hdrs.USER_AGENT, hdrs.CONTENT_TYPE}
)
# ws_connect makes its own handshake; the client's key and extensions belong
# to the client-side connection (RFC 6455 §4.1).
_WS_HANDSHAKE: Final = (
    hdrs.SEC_WEBSOCKET_KEY,
    hdrs.SEC_WEBSOCKET_VERSION,
    hdrs.SEC_WEBSOCKET_EXTENSIONS,
    hdrs.SEC_WEBSOCKET_PROTOCOL,
    hdrs.SEC_WEBSOCKET_ACCEPT,
)
_WS_TIMEOUT: Final = aiohttp.ClientWSTimeout(ws_receive=None, ws_close=10.0)


class RouteGate:
    """Per-route runtime state: the bound on concurrent upstream exchanges.

    A plain counter suffices: check and increment happen without an await in
    between, on one event loop. When full, :class:`UpstreamBusy` is raised at
    once instead of queueing, so a saturated upstream costs nothing but a 503.
    A WebSocket holds its slot for as long as it is open.
    """

    __slots__ = ("_in_flight", "base", "limit", "origin", "route", "timeout")

    def __init__(self, route: Route) -> None:
        self.route = route
        self.limit = route.max_connections
        # One object per route, not per request; covers connect, headers, body.
        self.timeout = aiohttp.ClientTimeout(total=route.timeout)
        self.base = yarl.URL(route.upstream)
        # None unless plain http: then forward() uses the pooled client.
        self.origin = Origin.of(self.base)
        self._in_flight = 0

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def __enter__(self) -> None:
        if self._in_flight >= self.limit:
            raise UpstreamBusy()
        self._in_flight += 1

    def __exit__(self, *exc_info: object) -> None:
        self._in_flight -= 1


class _PooledConnector(aiohttp.TCPConnector):
    """aiohttp's connector, carrying the pool of the lean http client beside its own.

    The two live and close together: closing the session closes both.
    """

    def __init__(self, *, keepalive_timeout: float) -> None:
        super().__init__(limit=0, keepalive_timeout=keepalive_timeout)
        self.upstream_pool = UpstreamPool(idle_timeout=keepalive_timeout)

    async def close(self, *, abort_ssl: bool = False) -> None:
        await self.upstream_pool.close()
        await super().close(abort_ssl=abort_ssl)


def upstream_session(*, keepalive_timeout: float = 15.0) -> aiohttp.ClientSession:
    """A ClientSession fit for :func:`forward`; create it inside a cleanup_ctx.

    ``forward`` passes per request what it can (no redirects, no
    decompression, no auto headers, the route's timeout); what only a session
    can hold is set here: a cookie jar that keeps nothing (upstream cookies
    belong to each client, never to the gateway), no connection limit (the
    route gates bound concurrency), no default timeout, no proxy environment.
    Its connector also holds the keep-alive pool of plain-http upstreams
    (:mod:`gateway.upstream_pool`), closed with the session.
    """
    return aiohttp.ClientSession(
        connector=_PooledConnector(keepalive_timeout=keepalive_timeout),
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        skip_auto_headers=_SKIP_AUTO_HEADERS,
        timeout=aiohttp.ClientTimeout(total=None),
        trust_env=False,
    )


async def forward(
    request: web.Request,
    *,
    session: aiohttp.ClientSession,
    route: Route,
    gate: RouteGate,
    url: yarl.URL | str,
    headers: Headers,
    body_idle_timeout: float,
    check: BodyCheck | None = None,
) -> web.StreamResponse:
    """Relay ``request`` to ``url`` and the upstream's answer back to the client.

    ``url`` (upstream base + normalised path + raw query) and ``headers``
    (from :func:`~gateway.headers.upstream_request_headers`, or the same
    pairs as a list) are used as given. A str ``url`` is the encoded request
    target (path and query) on the origin of ``route.upstream``, whose path
    the caller has already prefixed. ``session`` must come from
    :func:`upstream_session`. Headers wanted on every response (X-Request-Id)
    belong in an ``on_response_prepare`` signal: the response is prepared here.
    ``check`` is the method-override check the body's form fields must pass:
    a small body is read and checked before anything is sent, a larger one as
    it streams (see :class:`~gateway.request_body.RequestBody`).
    """
    if request.method == hdrs.METH_CONNECT:
        # RFC 9110 §9.3.6: CONNECT asks for a tunnel, which a reverse proxy
        # must not open to its upstream on a client's behalf.
        raise MethodNotAllowed()
    if _is_websocket(request):
        with gate:
            return await _forward_websocket(
                request, session, gate, _absolute(gate, url), CIMultiDict(headers)
            )

    limit = route.max_body_bytes
    declared = request.content_length
    if limit is not None and declared is not None and declared > limit:
        raise TooLarge()
    pool = getattr(session.connector, "upstream_pool", None)
    if isinstance(url, str):
        origin, target = gate.origin, url
    else:
        origin, target = Origin.of(url), url.raw_path_qs
    with gate:
        body = (
            RequestBody(request.content, limit, body_idle_timeout, check)
            if request.body_exists
            else None
        )
        small = declared is not None and declared <= SMALL_BODY
        if body is not None and check is not None and small:
            await body.prefetch()  # checked whole before anything is sent
        if origin is not None and pool is not None:
            return await exchange(
                request,
                pool=pool,
                origin=origin,
                target=target,
                headers=headers,
                body=body,
                route_timeout=route.timeout,
            )
        url = _absolute(gate, url)
        if body is not None and (length := body_length(request)) != CHUNKED:
            # Framing is keygate's own (the pairs never carry the client's):
            # aiohttp's client sends a declared length instead of chunks.
            pairs = headers.items() if isinstance(headers, CIMultiDict) else headers
            headers = [*pairs, (hdrs.CONTENT_LENGTH, str(length))]
        try:
            upstream = await session.request(
                request.method,
                url,
                headers=headers,
                data=body,
                allow_redirects=False,  # 3xx pass through with Location untouched
                compress=None,
                auto_decompress=False,  # gzip bodies pass through byte for byte
                skip_auto_headers=_SKIP_AUTO_HEADERS,
                timeout=gate.timeout,
            )
        except TimeoutError as exc:
            raise failure(body, UpstreamTimeout()) from exc
        except (aiohttp.ClientError, OSError) as exc:
            # Refused, DNS, reset, malformed status line or headers: all 502.
            raise failure(body, UpstreamUnavailable()) from exc
        return await _relay_response(request, upstream, body)


def _absolute(gate: RouteGate, url: yarl.URL | str) -> yarl.URL:
    """``url`` itself, or a request target made absolute on the route's upstream."""
    if isinstance(url, yarl.URL):
        return url
    base = gate.base
    path, _, query = url.partition("?")
    # Built, never joined: a path like "//host/x" must not name another host.
    return yarl.URL.build(
        scheme=base.scheme,
        host=base.raw_host or "",
        port=base.explicit_port,
        path=path,
        query_string=query,
        encoded=True,
    )


async def _relay_response(
    request: web.Request, upstream: aiohttp.ClientResponse, body: RequestBody | None
) -> web.StreamResponse:
    complete = False
    try:
        if upstream.status == 101:
            # Upgrade is hop-by-hop and was not sent: a 101 here is bogus.
            raise UpstreamUnavailable()
        response = web.StreamResponse(
            status=upstream.status,
            reason=upstream.reason,
            headers=downstream_response_headers(upstream.headers),
        )
        close_if_unframed(request, response)
        # HEAD, 204 and 304 carry no body; aiohttp knows, the loop below ends at once.
        await response.prepare(request)
        content = upstream.content
        while True:
            try:
                chunk = await content.readany()
            except TimeoutError as exc:
                abort_client(request)
                raise UpstreamTimeout() from exc
            except (aiohttp.ClientError, OSError) as exc:
                abort_client(request)
                raise failure(body, UpstreamUnavailable()) from exc
            if not chunk:
                break
            try:
                await response.write(chunk)
            except ConnectionError:
                return response  # client gone; nobody to tell, the finally closes upstream
        complete = True
        upstream.release()  # fully read: the connection goes back to the pool
        # A client that left now is aiohttp's to notice: it drops the connection.
        with contextlib.suppress(ConnectionError):
            await response.write_eof()
        return response
    finally:
        if not complete:
            upstream.close()  # partially read: the connection cannot be reused


def _is_websocket(request: web.Request) -> bool:
    """A WebSocket opening handshake (RFC 6455 §4.1); other upgrades are dropped."""
    upgrade = request.headers.get(hdrs.UPGRADE)
    return (
        upgrade is not None
        and upgrade.strip().lower() == "websocket"
        and request.method == hdrs.METH_GET
        and "upgrade" in (t.lower() for t in _tokens(request.headers, hdrs.CONNECTION))
    )


def _tokens(headers: CIMultiDictProxy[str], name: str) -> list[str]:
    """The non-empty comma-separated tokens of every ``name`` header."""
    return [t for v in headers.getall(name, ()) for t in map(str.strip, v.split(",")) if t]


async def _forward_websocket(
    request: web.Request,
    session: aiohttp.ClientSession,
    gate: RouteGate,
    url: yarl.URL,
    headers: CIMultiDict[str],
) -> web.WebSocketResponse:
    protocols = _tokens(request.headers, hdrs.SEC_WEBSOCKET_PROTOCOL)
    # Check the client's handshake before involving the upstream (offering
    # its own protocols keeps aiohttp from logging a no-overlap warning).
    if not web.WebSocketResponse(protocols=protocols).can_prepare(request).ok:
        raise BadRequest("The WebSocket handshake is malformed.")
    ws_headers = headers.copy()
    for name in _WS_HANDSHAKE:
        ws_headers.popall(name, None)
    # The upstream first: if it refuses, the client gets a JSON error, not a
    # socket that opens and closes at once.
    try:
        async with asyncio.timeout(gate.route.timeout):
            upstream = await session.ws_connect(
                url,
                headers=ws_headers,
                protocols=protocols,
                timeout=_WS_TIMEOUT,
                autoclose=False,  # closes are relayed with their codes
                autoping=False,  # pings are relayed end to end
            )
    except TimeoutError as exc:
        raise UpstreamTimeout() from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise UpstreamUnavailable() from exc
    try:
        client = web.WebSocketResponse(
            protocols=(upstream.protocol,) if upstream.protocol else (),
            autoclose=False,
            autoping=False,
        )
        await client.prepare(request)
        await _relay_websocket(client, upstream)
        return client
    finally:
        if not upstream.closed:
            await upstream.close(code=aiohttp.WSCloseCode.GOING_AWAY)


async def _relay_websocket(
    client: web.WebSocketResponse, upstream: aiohttp.ClientWebSocketResponse
) -> None:
    """Relay until one side ends, then close both with its code; no pump outlives this."""
    to_upstream = asyncio.create_task(_pump(client, upstream))
    to_client = asyncio.create_task(_pump(upstream, client))
    pumps = (to_upstream, to_client)
    try:
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
    finally:
        # Also reached on cancellation (with handler_cancellation on, aiohttp
        # cancels the handler when the client vanishes), so the pump that
        # already ended may still have the code worth passing on.
        first = to_upstream if to_upstream.done() else to_client
        # Stop both readers before closing: close() then owns each socket.
        for pump in pumps:
            pump.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)
        if first.done() and not first.cancelled() and first.exception() is None:
            code, reason = first.result()
        else:  # cancelled before either side ended, or a bug in _pump
            code, reason = aiohttp.WSCloseCode.GOING_AWAY, b""
        ended, other = (client, upstream) if first is to_upstream else (upstream, client)
        # Pass the code on first, then answer the side that ended (RFC 6455 §5.5.1).
        await other.close(code=code, message=reason)
        await ended.close(code=code, message=reason)
    if not first.cancelled() and (error := first.exception()) is not None:
        raise error  # a bug in _pump: let it be seen


async def _pump(src: _WebSocket, dst: _WebSocket) -> tuple[int, bytes]:
    """Copy messages from ``src`` to ``dst``; return the close code and reason."""
    while True:
        msg = await src.receive()
        kind = msg.type
        try:
            if kind is aiohttp.WSMsgType.TEXT:
                await dst.send_str(msg.data)
            elif kind is aiohttp.WSMsgType.BINARY:
                await dst.send_bytes(msg.data)
            elif kind is aiohttp.WSMsgType.PING:
                await dst.ping(msg.data)
            elif kind is aiohttp.WSMsgType.PONG:
                await dst.pong(msg.data)
            elif kind is aiohttp.WSMsgType.CLOSE:
                return _close_code(msg.data), (msg.extra or "").encode()
            elif kind is aiohttp.WSMsgType.ERROR and isinstance(msg.data, aiohttp.WebSocketError):
                # aiohttp already closed src with this code (1009 for a message
                # over max_msg_size, 1002 for a protocol error); pass it on.
                return _close_code(msg.data.code), b""
            else:  # CLOSING, CLOSED, or src failed: src is gone
                return _close_code(src.close_code), b""
        except ConnectionError:
            return aiohttp.WSCloseCode.GOING_AWAY, b""  # dst is gone


def _close_code(code: int | None) -> int:
    """A code that may be sent in a Close frame (RFC 6455 §7.4.1)."""
    if code is None or code == aiohttp.WSCloseCode.ABNORMAL_CLOSURE:
        return aiohttp.WSCloseCode.GOING_AWAY  # the peer vanished
    if code < 1000 or code == 1005:  # closed without a status code
        return aiohttp.WSCloseCode.OK
    return code
