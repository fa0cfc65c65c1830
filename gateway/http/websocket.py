"""WebSocket upgrades through the aiohttp front end, relayed message by message.

The client's handshake is checked first, then the upstream's is made with
aiohttp's client (RFC 6455 §4.1: the client's key and extensions belong to the
client-side connection), then frames go both ways until one side closes, whose
code is passed on.
"""

from __future__ import annotations

import asyncio
from typing import Final, TypeAlias

import aiohttp
import yarl
from aiohttp import hdrs, web
from multidict import CIMultiDict, CIMultiDictProxy

from keygate.gateway.errors import BadRequest, UpstreamTimeout, UpstreamUnavailable
from keygate.gateway.request.headers import Pairs
from keygate.gateway.upstream.gate import RouteGate

_WebSocket: TypeAlias = "web.WebSocketResponse | aiohttp.ClientWebSocketResponse"

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


def is_websocket(request: web.Request) -> bool:
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


async def forward_websocket(
    request: web.Request,
    session: aiohttp.ClientSession,
    gate: RouteGate,
    url: yarl.URL,
    pairs: Pairs,
) -> web.WebSocketResponse:
    """Relay a WebSocket between the client and ``url`` until one side closes."""
    headers = CIMultiDict(pairs)
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
