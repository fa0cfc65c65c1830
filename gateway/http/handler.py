"""The aiohttp front end's proxy handler: the pipeline's steps on a ``web.Request``.

Everything the edge does not take ends here: bodies that stream (chunked,
large, slow), ``Expect: 100-continue``, WebSocket upgrades, ``https://``
upstreams, and every connection when ``server.fast_path`` is off. The rules
are :mod:`keygate.gateway.pipeline`'s; this module only adapts aiohttp's
request and response objects to them.
"""

from __future__ import annotations

import contextlib
from typing import ClassVar

import aiohttp
from aiohttp import hdrs, web
from aiohttp.http import HttpVersion11

from keygate.gateway import pipeline
from keygate.gateway.errors import KeygateError, MethodNotAllowed
from keygate.gateway.http.clientip import peer_ip
from keygate.gateway.http.websocket import forward_websocket, is_websocket
from keygate.gateway.metrics.counts import Counts
from keygate.gateway.request.body import BodyCheck, RequestBody
from keygate.gateway.request.headers import Pairs
from keygate.gateway.state import (
    gateway_key,
    key_id_key,
    pool_key,
    ratelimit_key,
    request_id_key,
    route_key,
    session_key,
)
from keygate.gateway.upstream.client import open_https_answer
from keygate.gateway.upstream.exchange import SMALL_BODY, Answer, open_answer
from keygate.gateway.upstream.gate import RouteGate
from keygate.gateway.upstream.head import CHUNKED
from keygate.gateway.upstream.pool import UpstreamPool


class ExpectationFailed(KeygateError):
    status: ClassVar[int] = 417
    default_code: ClassVar[str] = "expectation_failed"
    default_message: ClassVar[str] = "The only expectation supported is 100-continue."


async def proxy_handler(request: web.Request) -> web.StreamResponse:
    gw = request.app[gateway_key]
    _, path, query = pipeline.request_target(
        request.raw_path, gw.settings.server.admin_prefix
    )
    try:
        resolved = pipeline.resolve(gw, request.headers, path, query, request.scheme)
    except KeygateError:
        name = pipeline.route_name(gw, path)
        if name is not None:
            request[route_key] = name
        raise
    route = resolved.route
    request[route_key] = route.name
    identity = None
    check: BodyCheck | None = None
    peer = peer_ip(request)
    if resolved.credential is not None:
        digest, principal = pipeline.admit_cached(gw, resolved)
        if principal is None:
            principal = await pipeline.admit(gw, resolved, digest)
        request[key_id_key] = principal.key_id
        check = pipeline.authorise(
            gw,
            resolved,
            principal,
            request.method,
            request.headers,
            query,
            request.body_exists,
            peer=peer,
        )
        if principal.limits is not None and request.method != hdrs.METH_CONNECT:
            # Counted only once nothing else refuses it: the room first (as forward() does).
            pipeline.check_room(route, gw.gates[route.name], request.content_length)
            usage = pipeline.take_now(gw, principal)
            if usage is None:
                usage = await pipeline.take(gw, principal)
            request[ratelimit_key] = usage
            usage.check()
        identity = principal.identity
    return await forward(
        request,
        pool=request.app[pool_key],
        session=request.app[session_key],
        gate=resolved.gate,
        target=pipeline.upstream_target(gw, resolved),
        pairs=pipeline.upstream_pairs(
            gw,
            resolved,
            request.headers,
            identity,
            client_ip=peer,
            proto=request.scheme,
            request_id=request[request_id_key],
        ),
        body_idle_timeout=gw.settings.server.body_idle_timeout,
        check=check,
        counts=gw.metrics,
    )


async def forward(
    request: web.Request,
    *,
    pool: UpstreamPool,
    session: aiohttp.ClientSession,
    gate: RouteGate,
    target: str,
    pairs: Pairs,
    body_idle_timeout: float,
    check: BodyCheck | None = None,
    counts: Counts | None = None,
) -> web.StreamResponse:
    """Relay an allowed ``request`` to ``target`` (the encoded path and query on
    the gate's upstream) with header ``pairs``, and the answer back.

    ``check`` is the method-override check the body's form fields must pass:
    a small body is read and checked before anything is sent, a larger one as
    it streams (:class:`~keygate.gateway.request.body.RequestBody`).
    """
    route = gate.route
    if request.method == hdrs.METH_CONNECT:
        # RFC 9110 §9.3.6: CONNECT asks for a tunnel, which a reverse proxy
        # must not open to its upstream on a client's behalf.
        raise MethodNotAllowed()
    pipeline.check_room(route, gate, request.content_length)
    if is_websocket(request):
        with gate:
            return await forward_websocket(request, session, gate, gate.url_of(target), pairs)
    await invite_body(request)
    with gate:
        body = (
            RequestBody(
                request.content,
                body_length(request),
                route.max_body_bytes,
                body_idle_timeout,
                check,
            )
            if request.body_exists
            else None
        )
        if body is not None and check is not None and 0 <= body.length <= SMALL_BODY:
            await body.prefetch()  # checked whole before anything is sent
        origin = gate.origin
        answer: Answer
        started = pool.loop.time()
        if origin is not None:
            deadline = pool.loop.time() + route.timeout
            answer = await open_answer(pool, origin, request.method, target, pairs, body, deadline)
        else:
            answer = await open_https_answer(
                session, gate.url_of(target), request.method, pairs, body, gate.timeout
            )
        if counts is not None:
            counts.upstream_time(route.name, pool.loop.time() - started)
        try:
            return await respond(request, answer)
        finally:
            answer.close()


async def invite_body(request: web.Request) -> None:
    """Answer ``Expect: 100-continue`` once the request may go ahead (RFC 9110 §10.1.1).

    Called after authentication, authorisation and the room check, so a
    refused client never sends its body.
    """
    expect = request.headers.get(hdrs.EXPECT)
    if expect is None:
        return
    if expect.strip().lower() != "100-continue":
        raise ExpectationFailed()
    if request.version >= HttpVersion11 and not request.content.is_eof():
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        # Interim bytes do not count as the response having started.
        request.writer.output_size = 0


def body_length(request: web.BaseRequest) -> int:
    """The framing of a request body as aiohttp's parser read it: its length,
    or CHUNKED (the only coding the front ends admit)."""
    length = request.content_length
    if hdrs.TRANSFER_ENCODING in request.headers or length is None:
        return CHUNKED
    return length


async def respond(request: web.Request, answer: Answer) -> web.StreamResponse:
    """The upstream's answer as aiohttp's response: whole when small and all here,
    else the head at once and the body streamed (:attr:`Answer.whole`)."""
    data = answer.whole_body()
    if data is not None:
        return web.Response(
            status=answer.status,
            reason=answer.reason,
            headers=answer.headers,
            body=None if answer.bodiless else data,
        )
    response = web.StreamResponse(
        status=answer.status, reason=answer.reason, headers=answer.headers
    )
    close_if_unframed(request, response)
    await response.prepare(request)
    try:
        async for chunk in answer.chunks():
            try:
                await response.write(chunk)
            except ConnectionError:
                return response  # client gone; nobody to tell, close() drops upstream
    except KeygateError:
        abort_client(request)  # mid-answer: the message must end short, never look whole
        raise
    # A client that left now is aiohttp's to notice: it drops the connection.
    with contextlib.suppress(ConnectionError):
        await response.write_eof()
    return response


def close_if_unframed(request: web.BaseRequest, response: web.StreamResponse) -> None:
    """An HTTP/1.0 answer of unknown length ends with the connection (RFC 9112 §6.3).

    aiohttp sends no chunks to HTTP/1.0 but keeps a keep-alive connection open
    after such a body, so the client could never tell where it ends.
    """
    if request.version < HttpVersion11 and hdrs.CONTENT_LENGTH not in response.headers:
        response.force_close()


def abort_client(request: web.BaseRequest) -> None:
    """Cut the client connection mid-response (no final chunk, short of length)."""
    transport = request.transport
    if transport is not None:
        # abort(), not close(): a stalled client must not keep the socket open
        # while the rest of a response that is already broken drains.
        transport.abort()
