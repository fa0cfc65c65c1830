"""The streaming forwarder against real upstream servers on 127.0.0.1.

A tiny gateway app routes on the first path segment (each prefix is a route
with its own limits, the prefix stripped), builds headers with
upstream_header_pairs, calls forward and renders KeygateError as the
JSON. The upstream is the recorder (tests.support.upstreams): it echoes what it
*received*, and its ``/_up/`` levers misbehave on demand.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import yarl
from aiohttp import hdrs, web
from aiohttp.test_utils import TestClient, TestServer, make_mocked_request

from keygate.config.settings import Route
from keygate.gateway.errors import KeygateError, MethodNotAllowed
from keygate.gateway.http.handler import forward
from keygate.gateway.request.headers import (
    RequestIds,
    identity_headers,
    request_id_or_new,
    upstream_header_pairs,
)
from keygate.gateway.upstream.client import upstream_session
from keygate.gateway.upstream.gate import RouteGate
from keygate.gateway.upstream.pool import UpstreamPool
from tests.support.polling import wait_for
from tests.support.raw import Raw, free_port, http
from tests.support.raw_upstreams import Canned, raw_server
from tests.support.upstreams import BLOCK, GZIP_BODY, MIB, REDIRECT, Recorder

IDENTITY = identity_headers(key_id="3k9x2m0qzt7a", key_name="ci", user="alice", groups=["b", "a"])


# -- gateway -----------------------------------------------------------------


@dataclass
class Gateway:
    routes: dict[str, Route]
    gates: dict[str, RouteGate]
    body_idle_timeout: float = 5.0
    session: aiohttp.ClientSession | None = None
    pool: UpstreamPool | None = None


GATEWAY = web.AppKey("gateway", Gateway)


async def proxy(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    raw_path, _, query = request.raw_path.partition("?")
    prefix = "/" + raw_path.split("/")[1]
    route = gw.routes[prefix]
    base = yarl.URL(route.upstream)
    url = yarl.URL.build(
        scheme=base.scheme,
        host=base.raw_host or "",
        port=base.port,
        path=raw_path[len(prefix) :] or "/",
        query_string=query,
        encoded=True,
    )
    headers = upstream_header_pairs(
        request.headers,
        drop={hdrs.AUTHORIZATION},
        identity=None if route.public else IDENTITY,
        client_ip=request.remote or "",
        proto=request.scheme,
        host=request.headers.get(hdrs.HOST),
        request_id=request_id_or_new(request.headers.get(hdrs.X_REQUEST_ID), RequestIds()),
    )
    assert gw.session is not None and gw.pool is not None
    try:
        return await forward(
            request,
            pool=gw.pool,
            session=gw.session,
            gate=gw.gates[route.name],
            target=url.raw_path_qs,
            pairs=headers,
            body_idle_timeout=gw.body_idle_timeout,
        )
    except KeygateError as exc:
        return web.Response(status=exc.status, body=exc.body(), content_type="application/json")


async def session_ctx(app: web.Application) -> AsyncIterator[None]:
    gw = app[GATEWAY]
    gw.session = upstream_session()
    gw.pool = UpstreamPool()
    yield
    await gw.pool.close()
    await gw.session.close()


class DeployedServer(TestServer):
    """A test server that, like ``web.run_app``, leaves handler_cancellation off.

    Test servers cancel a handler whose client went away; production servers
    let it run into a failed write. Disconnect tests run against both.
    """

    async def _make_runner(self, **kwargs: Any) -> web.AppRunner:
        kwargs["handler_cancellation"] = False
        return web.AppRunner(self.app, **kwargs)


BOTH_SERVERS = pytest.mark.parametrize(
    "env", [True, False], indirect=True, ids=["handler-cancellation", "no-cancellation"]
)


@dataclass
class Env:
    client: TestClient[web.Request, web.Application]
    upstream: Recorder
    gateway: Gateway


@pytest.fixture
async def env(
    request: pytest.FixtureRequest,
    recorder: Recorder,
    aiohttp_client: Callable[[Any], Awaitable[TestClient[web.Request, web.Application]]],
) -> Env:
    base = recorder.url
    routes = [
        Route(name="up", prefix="/up", upstream=base, strip_prefix=True),
        Route(name="open", prefix="/open", upstream=base, strip_prefix=True, public=True),
        Route(name="slow", prefix="/slow", upstream=base, strip_prefix=True, timeout=0.3),
        Route(name="dead", prefix="/dead", upstream=f"http://127.0.0.1:{free_port()}"),
        Route(name="small", prefix="/small", upstream=base, max_body_bytes=1000),
        Route(name="narrow", prefix="/narrow", upstream=base, max_connections=1),
    ]
    gw = Gateway(routes={r.prefix: r for r in routes}, gates={r.name: RouteGate(r) for r in routes})
    app = web.Application()
    app[GATEWAY] = gw
    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", proxy)
    cancelling = getattr(request, "param", True)
    client = await aiohttp_client(app if cancelling else DeployedServer(app))
    return Env(client, recorder, gw)


async def blocks(count: int, stall: asyncio.Event | None = None) -> AsyncIterator[bytes]:
    for _ in range(count):
        yield BLOCK
    if stall is not None:
        await stall.wait()


def sha256_of_blocks(count: int) -> str:
    digest = hashlib.sha256()
    for _ in range(count):
        digest.update(BLOCK)
    return digest.hexdigest()


def received_headers(echo: dict[str, Any]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, value in echo["headers"]:
        out.setdefault(name.lower(), []).append(value)
    return out


async def error_code(response: aiohttp.ClientResponse) -> str:
    assert response.content_type == "application/json"
    body = await response.json()
    return str(body["error"]["code"])


# -- what the upstream receives ------------------------------------------------


async def test_forward_request_upstream_receives_rewritten_request(env: Env) -> None:
    body = os.urandom(1000)
    async with env.client.post(
        yarl.URL("/up/echo/a%20b/c?x=1&y=%2F&x=2", encoded=True),
        data=body,
        headers={
            hdrs.AUTHORIZATION: "Bearer kg_secret",
            hdrs.CONNECTION: "keep-alive, X-Drop-Me, X-Forwarded-For",
            "X-Drop-Me": "1",
            "X-Keygate-User": "root",
            "X_Keygate_Groups": "admin",
            hdrs.X_FORWARDED_FOR: "203.0.113.7",
            hdrs.X_FORWARDED_HOST: "evil.example",
            hdrs.X_REQUEST_ID: "client-rid-1",
            hdrs.TE: "trailers",
            "X-Custom": "kept",
        },
        skip_auto_headers=[hdrs.ACCEPT, hdrs.ACCEPT_ENCODING, hdrs.USER_AGENT, hdrs.CONTENT_TYPE],
    ) as response:
        assert response.status == 200
        echo = await response.json()
    got = received_headers(echo)
    assert echo["method"] == "POST"
    assert echo["path"] == "/echo/a%20b/c"
    assert echo["query"] == "x=1&y=%2F&x=2"
    assert echo["body_len"] == 1000
    assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()
    for absent in (
        "authorization",
        "x-drop-me",
        "te",
        "x_keygate_groups",
        "accept",
        "accept-encoding",
        "user-agent",
        "content-type",
        "transfer-encoding",
    ):
        assert absent not in got, absent
    assert got["x-custom"] == ["kept"]
    assert got["content-length"] == ["1000"]
    assert got["x-keygate-key-id"] == ["3k9x2m0qzt7a"]
    assert got["x-keygate-user"] == ["alice"]
    assert got["x-keygate-groups"] == ["a,b"]
    assert got["x-forwarded-for"] == ["203.0.113.7, 127.0.0.1"]
    assert got["x-forwarded-proto"] == ["http"]
    assert got["x-forwarded-host"] == [f"127.0.0.1:{env.client.port}"]
    assert got["x-request-id"] == ["client-rid-1"]


async def test_forward_public_route_no_identity_forged_removed(env: Env) -> None:
    async with env.client.get("/open/echo", headers={"X-Keygate-User": "root"}) as response:
        got = received_headers(await response.json())
    assert not [name for name in got if name.startswith("x-keygate-")]


async def test_forward_expect_continue_body_arrives_without_expect(env: Env) -> None:
    async with env.client.put("/up/echo", data=b"abc", expect100=True) as response:
        echo = await response.json()
    assert echo["body_len"] == 3
    assert "expect" not in received_headers(echo)


# -- bodies both ways -------------------------------------------------------------


async def test_forward_upload_64mib_chunked_streamed(env: Env) -> None:
    async with env.client.post("/up/echo", data=blocks(64)) as response:
        assert response.status == 200
        echo = await response.json()
    got = received_headers(echo)
    assert got["transfer-encoding"] == ["chunked"]
    assert "content-length" not in got
    assert echo["body_len"] == 64 * MIB
    assert echo["body_sha256"] == sha256_of_blocks(64)


async def test_forward_upload_with_content_length_sent_with_content_length(env: Env) -> None:
    async with env.client.put("/up/echo", data=BLOCK) as response:
        echo = await response.json()
    got = received_headers(echo)
    assert got["content-length"] == [str(MIB)]
    assert "transfer-encoding" not in got
    assert echo["body_sha256"] == hashlib.sha256(BLOCK).hexdigest()


@pytest.mark.parametrize(
    ("query", "framing"), [("?chunked", "chunked"), ("", "length")], ids=["chunked", "length"]
)
async def test_forward_download_64mib_streamed(env: Env, query: str, framing: str) -> None:
    digest, size = hashlib.sha256(), 0
    async with env.client.get(f"/up/_up/big/64{query}") as response:
        assert response.status == 200
        if framing == "length":
            assert response.headers[hdrs.CONTENT_LENGTH] == str(64 * MIB)
            assert hdrs.TRANSFER_ENCODING not in response.headers
        else:
            assert response.headers[hdrs.TRANSFER_ENCODING] == "chunked"
            assert hdrs.CONTENT_LENGTH not in response.headers
        async for chunk in response.content.iter_chunked(MIB):
            digest.update(chunk)
            size += len(chunk)
    assert size == 64 * MIB
    assert digest.hexdigest() == sha256_of_blocks(64)


async def test_forward_head_keeps_content_length_no_body(env: Env) -> None:
    async with env.client.head("/up/_up/big/2") as response:
        assert response.status == 200
        assert response.headers[hdrs.CONTENT_LENGTH] == str(2 * MIB)
        assert await response.read() == b""


async def test_forward_204_passes_without_body(env: Env) -> None:
    async with env.client.get("/up/_up/204") as response:
        assert response.status == 204
        assert response.headers["X-Kept"] == "yes"
        assert await response.read() == b""


# -- responses pass through untouched -------------------------------------------


async def test_forward_redirect_passed_through(env: Env) -> None:
    async with env.client.get("/up/_up/redirect", allow_redirects=False) as response:
        assert response.status == 302
        assert response.headers[hdrs.LOCATION] == REDIRECT
    assert len(env.upstream.seen) == 1


async def test_forward_gzip_body_byte_identical(env: Env) -> None:
    async with env.client.get(
        "/up/_up/gzip", auto_decompress=False, skip_auto_headers=[hdrs.ACCEPT_ENCODING]
    ) as response:
        assert response.headers[hdrs.CONTENT_ENCODING] == "gzip"
        assert response.headers[hdrs.CONTENT_LENGTH] == str(len(GZIP_BODY))
        assert await response.read() == GZIP_BODY


async def test_forward_repeated_set_cookie_kept_in_order(env: Env) -> None:
    async with env.client.get("/up/_up/cookies") as response:
        assert response.headers.getall(hdrs.SET_COOKIE) == ["a=1; Path=/", "b=2; HttpOnly"]


async def test_forward_response_hop_by_hop_removed(env: Env) -> None:
    async with env.client.get("/up/_up/hop") as response:
        assert response.headers["X-Kept"] == "yes"
        for name in ("X-Hop-Secret", hdrs.KEEP_ALIVE, hdrs.PROXY_AUTHENTICATE, hdrs.TRAILER):
            assert name not in response.headers, name
        assert "x-hop-secret" not in response.headers.get(hdrs.CONNECTION, "").lower()


# -- failures ---------------------------------------------------------------------


async def test_forward_connection_refused_502(env: Env) -> None:
    async with env.client.get("/dead/echo") as response:
        assert response.status == 502
        assert await error_code(response) == "upstream_unavailable"


async def test_forward_slow_upstream_504_other_route_responsive(env: Env) -> None:
    slow = asyncio.create_task(env.client.get("/slow/_up/hold"))
    try:
        await wait_for(lambda: env.upstream.holding == 1)
        async with env.client.get("/up/echo") as response:
            assert response.status == 200
        assert not slow.done()
        response = await slow
        assert response.status == 504
        assert await error_code(response) == "upstream_timeout"
        response.release()
    finally:
        slow.cancel()


@pytest.mark.parametrize("framing", ["length", "chunked"])
async def test_forward_upstream_cut_mid_body_client_sees_abort(env: Env, framing: str) -> None:
    async with env.client.get(f"/up/_up/cut/{framing}") as response:
        assert response.status == 200
        with pytest.raises((aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError)):
            await response.read()


async def test_forward_upstream_timeout_mid_body_client_sees_abort(env: Env) -> None:
    async with env.client.get("/slow/_up/trickle") as response:
        assert response.status == 200
        with pytest.raises((aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError)):
            await response.read()
    await wait_for(lambda: env.gateway.gates["slow"].in_flight == 0)


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/1.1 2OO OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nNot a header line\r\n\r\n",
        b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
        b"",
    ],
    ids=["bad-status", "bad-header", "not-http", "closed"],
)
async def test_forward_malformed_upstream_response_502(env: Env, reply: bytes) -> None:
    async with raw_server(Canned.always(reply)) as up:
        route = Route(name="raw", prefix="/raw", upstream=up.url)
        env.gateway.routes[route.prefix] = route
        env.gateway.gates[route.name] = RouteGate(route)
        async with env.client.get("/raw/x") as response:
            assert response.status == 502
            assert await error_code(response) == "upstream_unavailable"


async def test_forward_declared_body_too_large_413_upstream_untouched(env: Env) -> None:
    async with env.client.post("/small/echo", data=b"x" * 1001) as response:
        assert response.status == 413
        assert await error_code(response) == "too_large"
    assert env.upstream.seen == []


async def test_forward_chunked_body_too_large_413_upstream_request_cut(env: Env) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"x" * 400
        # Let the upstream start reading before the limit is crossed.
        await wait_for(lambda: len(env.upstream.seen) == 1)
        for _ in range(4):
            yield b"x" * 400

    async with env.client.post("/small/echo", data=chunks()) as response:
        assert response.status == 413
        assert await error_code(response) == "too_large"
    await wait_for(lambda: env.upstream.broken_bodies == 1)


async def test_forward_chunked_body_within_limit_passes(env: Env) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(2):
            yield b"x" * 500

    async with env.client.post("/small/echo", data=chunks()) as response:
        assert (await response.json())["body_len"] == 1000


async def test_forward_stalled_body_400(env: Env) -> None:
    env.gateway.body_idle_timeout = 0.2
    stall = asyncio.Event()
    try:
        async with env.client.post("/up/echo", data=blocks(1, stall)) as response:
            assert response.status == 400
            assert await error_code(response) == "body_timeout"
    finally:
        stall.set()


async def test_forward_gate_full_503(env: Env) -> None:
    first = asyncio.create_task(env.client.get("/narrow/_up/hold"))
    try:
        await wait_for(lambda: env.upstream.holding == 1)
        async with env.client.get("/narrow/echo") as response:
            assert response.status == 503
            assert await error_code(response) == "upstream_busy"
        env.upstream.release.set()
        response = await first
        assert response.status == 200
        assert await response.text() == "late"
    finally:
        first.cancel()
    assert env.gateway.gates["narrow"].in_flight == 0


@BOTH_SERVERS
async def test_forward_client_disconnect_mid_download_releases_upstream(env: Env) -> None:
    response = await env.client.get("/up/_up/endless")
    assert len(await response.content.readexactly(65536)) == 65536
    assert env.gateway.gates["up"].in_flight == 1
    response.close()  # drop the connection mid-body
    await wait_for(lambda: env.upstream.endless_stopped == 1)
    await wait_for(lambda: env.gateway.gates["up"].in_flight == 0)


@BOTH_SERVERS
async def test_forward_client_disconnect_mid_upload_releases_upstream(env: Env) -> None:
    assert env.client.port is not None
    conn = await Raw.open(env.client.port)
    chunked = [("Transfer-Encoding", "chunked")]
    await conn.send(http("POST", "/up/echo", chunked, b"5\r\nhello\r\n", host="gw"))
    await wait_for(lambda: len(env.upstream.seen) == 1)
    assert env.gateway.gates["up"].in_flight == 1
    await conn.close()  # gone mid-body
    await wait_for(lambda: env.upstream.broken_bodies == 1)
    await wait_for(lambda: env.gateway.gates["up"].in_flight == 0)


async def test_forward_connect_method_405_without_upstream() -> None:
    # aiohttp's router never hands CONNECT to a path route; forward refuses it anyway.
    route = Route(name="r", prefix="/", upstream="http://127.0.0.1:9")
    async with upstream_session() as session:
        pool = UpstreamPool()
        with pytest.raises(MethodNotAllowed):
            await forward(
                make_mocked_request("CONNECT", "/x"),
                pool=pool,
                session=session,
                gate=RouteGate(route),
                target="/x",
                pairs=[],
                body_idle_timeout=1.0,
            )
        await pool.close()


# -- WebSocket ----------------------------------------------------------------------


async def test_forward_websocket_relays_text_binary_ping(env: Env) -> None:
    async with env.client.ws_connect("/up/_up/ws", protocols=("chat",), autoping=False) as ws:
        assert ws.protocol == "chat"
        await ws.send_str("hello")
        assert await ws.receive_str() == "echo:hello"
        await ws.send_bytes(b"\x00\x01\x02")
        assert await ws.receive_bytes() == b"\x02\x01\x00"
        await ws.ping(b"are you there")
        pong = await ws.receive()
        assert pong.type is aiohttp.WSMsgType.PONG
        assert pong.data == b"are you there"
        assert env.gateway.gates["up"].in_flight == 1
    await wait_for(lambda: env.gateway.gates["up"].in_flight == 0)


@BOTH_SERVERS
async def test_forward_websocket_client_close_code_reaches_upstream(env: Env) -> None:
    ws = await env.client.ws_connect("/up/_up/ws")
    await ws.send_str("ping")
    assert await ws.receive_str() == "echo:ping"
    await ws.close(code=4000, message=b"client says bye")
    await wait_for(lambda: env.upstream.ws_closes == [4000])


async def test_forward_websocket_upstream_close_code_reaches_client(env: Env) -> None:
    async with env.client.ws_connect("/up/_up/ws") as ws:
        await ws.send_str("close:4001")
        msg = await ws.receive()
        assert msg.type is aiohttp.WSMsgType.CLOSE
        assert msg.data == 4001
        assert msg.extra == "upstream bye"
    await wait_for(lambda: env.gateway.gates["up"].in_flight == 0)


@BOTH_SERVERS
async def test_forward_websocket_message_too_big_from_client_1009(env: Env) -> None:
    async with env.client.ws_connect("/up/_up/ws") as ws:

        async def send_big() -> None:
            # The gateway refuses the frame from its header and drops the
            # connection while the rest is still being sent.
            with contextlib.suppress(ConnectionError):
                await ws.send_bytes(b"x" * (4 * MIB + 1))

        sender = asyncio.create_task(send_big())
        try:
            await wait_for(lambda: env.upstream.ws_closes == [1009])
        finally:
            await sender


async def test_forward_websocket_message_too_big_from_upstream_1009(env: Env) -> None:
    async with env.client.ws_connect("/up/_up/ws") as ws:
        await ws.send_str("big")
        msg = await ws.receive()
        assert msg.type is aiohttp.WSMsgType.CLOSE
        assert msg.data == aiohttp.WSCloseCode.MESSAGE_TOO_BIG


async def test_forward_websocket_upstream_refuses_502_json(env: Env) -> None:
    handshake = {
        hdrs.UPGRADE: "websocket",
        hdrs.CONNECTION: "Upgrade",
        hdrs.SEC_WEBSOCKET_KEY: base64.b64encode(os.urandom(16)).decode(),
        hdrs.SEC_WEBSOCKET_VERSION: "13",
    }
    async with env.client.get("/up/_up/ws-refuse", headers=handshake) as response:
        assert response.status == 502
        assert await error_code(response) == "upstream_unavailable"
    assert env.gateway.gates["up"].in_flight == 0


async def test_forward_websocket_upstream_down_502(env: Env) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await env.client.ws_connect("/dead/ws")
    assert info.value.status == 502
