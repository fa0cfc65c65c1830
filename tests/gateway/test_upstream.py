"""The pooled plain-http client (gateway.upstream*) through forward(), on 127.0.0.1.

Upstreams are :class:`Origin`, an aiohttp app that reports which connection
(peer port) carried each request and how many were in flight on each (the pool
under test is about connections, so its origin counts them), or raw servers
(tests.support.raw_upstreams) that answer with exactly the bytes a test needs
(interim responses, framing until close, malformed heads, stale keep-alive
connections). The tests run on asyncio's loop; the ones in ``ON_UVLOOP`` run on
uvloop as well, the loop keygate serves on.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
import uvloop
from aiohttp import hdrs, web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from keygate.config.settings import Route
from keygate.gateway.errors import KeygateError
from keygate.gateway.http.handler import forward
from keygate.gateway.request.headers import (
    HOP_BY_HOP,
    identity_headers,
)
from keygate.gateway.upstream import exchange as upstream
from keygate.gateway.upstream.client import upstream_session
from keygate.gateway.upstream.connection import UpstreamError
from keygate.gateway.upstream.exchange import SMALL_BODY, response_headers
from keygate.gateway.upstream.gate import RouteGate
from keygate.gateway.upstream.head import CHUNKED, request_head, upstream_header_pairs
from keygate.gateway.upstream.pool import UpstreamPool
from tests.support.gateway import started_client
from tests.support.polling import wait_for
from tests.support.raw import free_port
from tests.support.raw_upstreams import Canned, Reply, raw_server

IDENTITY = identity_headers(key_id="3k9x2m0qzt7a", key_name="ci", user="alice", groups=["a"])


# -- upstreams -------------------------------------------------------------------------


@dataclass
class Origin:
    """An aiohttp upstream that records the connection (peer port) of each request."""

    server: TestServer
    ports: list[int] = field(default_factory=list)
    in_flight: dict[int, int] = field(default_factory=dict)
    max_in_flight: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)
    closed_mid_body: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    @property
    def connections(self) -> int:
        return len(set(self.ports))


def origin_app(origin: Origin) -> web.Application:
    @web.middleware
    async def track(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        assert request.transport is not None
        port = request.transport.get_extra_info("peername")[1]
        origin.ports.append(port)
        origin.in_flight[port] = origin.in_flight.get(port, 0) + 1
        origin.max_in_flight = max(origin.max_in_flight, origin.in_flight[port])
        try:
            return await handler(request)
        finally:
            origin.in_flight[port] -= 1

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hello", headers={"X-Path": request.raw_path})

    async def close(request: web.Request) -> web.Response:
        response = web.Response(text="bye")
        response.force_close()  # "Connection: close"
        return response

    async def chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"X-Kind": "chunked"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for n in range(3):
            await response.write(f"part{n};".encode())
        await response.write_eof()
        return response

    async def big(request: web.Request) -> web.Response:
        return web.Response(body=b"b" * (SMALL_BODY + 1))

    async def status(request: web.Request) -> web.Response:
        code = int(request.match_info["code"])
        return web.Response(status=code, headers={hdrs.ETAG: '"v1"', "X-Kept": "yes"})

    async def slow(request: web.Request) -> web.Response:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(origin.release.wait(), 10)
        return web.Response(text="late")

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        try:
            while True:
                await response.write(b"x" * 65536)
        except ConnectionError:
            return response
        finally:  # a write failed, or (test servers) the handler was cancelled
            origin.closed_mid_body.set()

    async def echo_framing(request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response(
            {
                "content_length": request.headers.get(hdrs.CONTENT_LENGTH),
                "transfer_encoding": request.headers.get(hdrs.TRANSFER_ENCODING),
                "host": request.headers.get(hdrs.HOST),
                "body": body.decode(),
            }
        )

    app = web.Application(middlewares=[track])
    app.router.add_route("*", "/hello{tail:.*}", hello)
    app.router.add_get("/close", close)
    app.router.add_get("/chunked", chunked)
    app.router.add_get("/big", big)
    app.router.add_get("/status/{code}", status)
    app.router.add_get("/slow", slow)
    app.router.add_get("/endless", endless)
    app.router.add_route("*", "/framing", echo_framing)
    return app


# -- gateway -----------------------------------------------------------------------------


ROUTES = web.AppKey("routes", dict)
SESSION = web.AppKey("session", aiohttp.ClientSession)
POOL = web.AppKey("pool", UpstreamPool)


async def proxy(request: web.Request) -> web.StreamResponse:
    """Route on the first segment; forward the rest as a str target (the proxy's way)."""
    raw_path, _, query = request.raw_path.partition("?")
    prefix = "/" + raw_path.split("/")[1]
    _, gate = request.app[ROUTES][prefix]
    target = (raw_path[len(prefix) :] or "/") + ("?" + query if query else "")
    headers = upstream_header_pairs(
        request.headers,
        drop=(),
        identity=IDENTITY,
        client_ip="127.0.0.1",
        proto="http",
        host=request.host,
        request_id="rid",
    )
    try:
        return await forward(
            request,
            pool=request.app[POOL],
            session=request.app[SESSION],
            gate=gate,
            target=target,
            pairs=headers,
            body_idle_timeout=5.0,
        )
    except KeygateError as exc:
        return web.Response(status=exc.status, body=exc.body(), content_type="application/json")


@dataclass
class Env:
    client: TestClient[web.Request, web.Application]
    origin: Origin
    app: web.Application

    @property
    def pool(self) -> UpstreamPool:
        return self.app[POOL]

    def add_route(self, prefix: str, upstream: str, **options: Any) -> None:
        route = Route(name=prefix.strip("/"), prefix=prefix, upstream=upstream, **options)
        self.app[ROUTES][prefix] = (route, RouteGate(route))

    async def raw(self, reply: Reply, *, close_after: bool = False) -> Canned:
        """A raw origin at /raw answering ``reply(n, head)`` (tests.support.raw_upstreams)."""
        raw = Canned(reply, close_after)
        server = await self.servers.enter_async_context(raw_server(raw))
        self.add_route("/raw", server.url)
        return raw

    servers: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)


@contextlib.asynccontextmanager
async def make_env() -> AsyncIterator[Env]:
    """The origin, and a gateway whose routes /up and /slow (0.3 s timeout) lead to it."""
    origin = Origin(server=TestServer(web.Application()))
    origin.server = TestServer(origin_app(origin), host="127.0.0.1")
    await origin.server.start_server()
    app = web.Application()
    app[ROUTES] = {}

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        app[SESSION] = upstream_session()
        app[POOL] = UpstreamPool()
        yield
        await app[POOL].close()
        await app[SESSION].close()

    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", proxy)
    client: TestClient[web.Request, web.Application] = await started_client(TestServer(app))
    e = Env(client, origin, app)
    e.add_route("/up", origin.url)
    e.add_route("/slow", origin.url, timeout=0.3)
    try:
        yield e
    finally:
        origin.release.set()
        await client.close()
        await origin.server.close()
        await e.servers.aclose()


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    async with make_env() as e:
        yield e


def ok(body: bytes, extra: str = "") -> bytes:
    return f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


async def get(env: Env, path: str, **kwargs: Any) -> tuple[int, bytes, CIMultiDictProxy[str]]:
    async with env.client.get(path, **kwargs) as response:
        return response.status, await response.read(), response.headers


# -- the pool ------------------------------------------------------------------------------


async def test_upstream_sequential_requests_reuse_one_connection(env: Env) -> None:
    for n in range(20):
        status, body, headers = await get(env, f"/up/hello/{n}?q={n}")
        assert (status, body) == (200, b"hello")
        assert headers["X-Path"] == f"/hello/{n}?q={n}"
    assert env.origin.connections == 1
    assert env.pool.connects == 1


async def test_upstream_connection_close_response_not_reused(env: Env) -> None:
    for _ in range(3):
        status, body, _ = await get(env, "/up/close")
        assert (status, body) == (200, b"bye")
    assert env.origin.connections == 3


async def test_upstream_concurrent_requests_one_per_connection(env: Env) -> None:
    # Never pipelined: a connection carries one request at a time.
    async def one() -> None:
        async with env.client.get("/slow/slow") as response:
            assert await response.read() == b"late"

    tasks = [asyncio.create_task(one()) for _ in range(8)]
    await wait_for(lambda: len(env.origin.ports) == 8)
    env.origin.release.set()
    await asyncio.gather(*tasks)
    assert env.origin.max_in_flight == 1
    assert env.origin.connections == 8
    for _ in range(8):  # all eight went back to the pool
        await get(env, "/up/hello")
    assert env.origin.connections == 8


async def test_upstream_idle_connection_past_idle_timeout_not_reused(env: Env) -> None:
    await get(env, "/up/hello")
    env.pool.idle_timeout = 0.05
    await asyncio.sleep(0.1)
    await get(env, "/up/hello")
    assert env.origin.connections == 2


async def test_upstream_idle_connections_bounded(env: Env) -> None:
    env.pool.max_idle = 2

    async def one() -> None:
        async with env.client.get("/slow/slow") as response:
            await response.read()

    tasks = [asyncio.create_task(one()) for _ in range(4)]
    await wait_for(lambda: len(env.origin.ports) == 4)
    env.origin.release.set()
    await asyncio.gather(*tasks)
    assert sum(len(idle) for idle in env.pool._idle.values()) == 2


async def test_upstream_stale_connection_get_retried_once_on_fresh_one(env: Env) -> None:
    # The second request arrives on a connection the upstream is closing: it
    # reads the request and closes without a byte of answer (RFC 9112 §9.3.1).
    raw = await env.raw(lambda n, head: None if n == 2 else ok(b"fine"))
    assert (await get(env, "/raw/a"))[:2] == (200, b"fine")
    assert (await get(env, "/raw/b"))[:2] == (200, b"fine")
    assert (raw.requests, raw.connections) == (3, 2)


async def test_upstream_stale_connection_post_not_retried_502(env: Env) -> None:
    raw = await env.raw(lambda n, head: None if n == 2 else ok(b"fine"))
    await get(env, "/raw/a")
    async with env.client.post("/raw/b", data=b"once") as response:
        assert response.status == 502
    assert raw.requests == 2


async def test_upstream_fresh_connection_closed_without_answer_502(env: Env) -> None:
    raw = await env.raw(lambda n, head: None)
    assert (await get(env, "/raw/a"))[0] == 502
    assert raw.requests == 1  # a fresh connection is never retried


# What goes once more after the connection failed: (stale, method, reused, sent, consumed).
RETRIES = [
    ((True, "POST", True, False, False), True),  # found closed before any byte went
    ((True, "POST", False, False, False), True),
    ((True, "POST", True, True, False), False),  # may have reached it: never twice
    ((True, "PATCH", True, True, False), False),
    ((True, "GET", True, True, False), True),  # idempotent, on a pooled connection
    ((True, "PUT", True, True, False), True),
    ((True, "GET", False, True, False), False),  # a fresh connection that failed
    ((False, "GET", True, False, False), False),  # part of an answer came
    ((True, "GET", True, False, True), False),  # the body is no longer whole
]


@pytest.mark.parametrize(("case", "retried"), RETRIES)
def test_may_retry_only_what_cannot_have_been_applied(
    case: tuple[bool, str, bool, bool, bool], retried: bool
) -> None:
    stale, method, reused, sent, consumed = case
    error = UpstreamError("closed", stale=stale)
    assert upstream.may_retry(error, method, reused=reused, sent=sent, consumed=consumed) is retried


# -- response framing --------------------------------------------------------------------------


async def test_upstream_chunked_response_relayed_chunked(env: Env) -> None:
    status, body, headers = await get(env, "/up/chunked")
    assert (status, body) == (200, b"part0;part1;part2;")
    assert headers[hdrs.TRANSFER_ENCODING] == "chunked"
    assert headers["X-Kind"] == "chunked"
    await get(env, "/up/hello")
    assert env.origin.connections == 1  # read to its end: reused


async def test_upstream_large_fixed_length_streamed_with_length(env: Env) -> None:
    status, body, headers = await get(env, "/up/big")
    assert (status, len(body)) == (200, SMALL_BODY + 1)
    assert headers[hdrs.CONTENT_LENGTH] == str(SMALL_BODY + 1)


async def test_upstream_body_until_close_relayed_and_connection_not_reused(env: Env) -> None:
    raw = await env.raw(lambda n, head: b"HTTP/1.1 200 OK\r\n\r\nuntil the end", close_after=True)
    for _ in range(2):
        status, body, headers = await get(env, "/raw/x")
        assert (status, body) == (200, b"until the end")
        assert hdrs.CONTENT_LENGTH not in headers
    assert raw.connections == 2


async def test_upstream_head_no_body_connection_reused(env: Env) -> None:
    async with env.client.head("/up/big") as response:
        assert response.status == 200
        assert response.headers[hdrs.CONTENT_LENGTH] == str(SMALL_BODY + 1)
        assert await response.read() == b""
    assert (await get(env, "/up/hello"))[1] == b"hello"
    assert env.origin.connections == 1


@pytest.mark.parametrize("code", [204, 304])
async def test_upstream_bodiless_status_no_body_connection_reused(env: Env, code: int) -> None:
    status, body, headers = await get(env, f"/up/status/{code}")
    assert (status, body) == (code, b"")
    assert headers[hdrs.ETAG] == '"v1"'
    assert headers["X-Kept"] == "yes"
    await get(env, "/up/hello")
    assert env.origin.connections == 1


@pytest.mark.parametrize(
    "interim",
    [b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"],
    ids=["100", "103"],
)
async def test_upstream_interim_responses_skipped(env: Env, interim: bytes) -> None:
    await env.raw(lambda n, head: interim + ok(b"final", "X-Final: 1\r\n"))
    status, body, headers = await get(env, "/raw/x")
    assert (status, body) == (200, b"final")
    assert headers["X-Final"] == "1"
    assert "Link" not in headers


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    ],
    ids=["two-lengths", "bad-chunk", "unasked-101"],
)
async def test_upstream_broken_response_before_start_502(env: Env, reply: bytes) -> None:
    await env.raw(lambda n, head: reply, close_after=True)
    async with env.client.get("/raw/x") as response:
        assert response.status == 502
        assert (await response.json())["error"]["code"] == "upstream_unavailable"


async def test_upstream_closes_mid_large_body_client_sees_abort(env: Env) -> None:
    size = SMALL_BODY * 4
    head = f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n".encode()
    await env.raw(lambda n, h: head + b"x" * SMALL_BODY, close_after=True)
    async with env.client.get("/raw/x") as response:
        assert response.status == 200
        with pytest.raises((aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError)):
            await response.read()


async def test_upstream_second_response_to_one_request_connection_dropped(env: Env) -> None:
    raw = await env.raw(lambda n, head: ok(b"one") + ok(b"two"))
    assert (await get(env, "/raw/x"))[:2] == (200, b"one")
    assert (await get(env, "/raw/x"))[:2] == (200, b"one")
    assert raw.connections == 2


async def test_upstream_bytes_while_idle_connection_dropped(env: Env) -> None:
    raw = await env.raw(lambda n, head: ok(b"fine"))
    assert (await get(env, "/raw/a"))[:2] == (200, b"fine")
    assert raw.connections == 1
    # Whatever an idle connection receives, it cannot belong to a request.
    conns = [c for idle in env.pool._idle.values() for c in idle]
    assert len(conns) == 1 and conns[0].transport is not None
    conns[0].data_received(b"HTTP/1.1 200 OK\r\n")
    assert (await get(env, "/raw/b"))[:2] == (200, b"fine")
    assert raw.connections == 2


async def test_upstream_timeout_before_response_504_connection_dropped(env: Env) -> None:
    async with env.client.get("/slow/slow") as response:
        assert response.status == 504
        assert (await response.json())["error"]["code"] == "upstream_timeout"
    env.origin.release.set()
    await get(env, "/slow/hello")
    assert env.origin.connections == 2


async def test_upstream_client_disconnect_mid_download_upstream_closed(env: Env) -> None:
    response = await env.client.get("/up/endless")
    assert len(await response.content.readexactly(65536)) == 65536
    response.close()
    await asyncio.wait_for(env.origin.closed_mid_body.wait(), 5)
    assert not any(env.pool._idle.values())
    await get(env, "/up/hello")
    assert env.origin.connections == 2


# -- request framing ---------------------------------------------------------------------------


async def test_upstream_request_framing_follows_client(env: Env) -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b"chunk"

    cases = [
        ("GET", None, (None, None, "")),
        ("POST", None, ("0", None, "")),
        ("POST", b"12345", ("5", None, "12345")),
        ("PUT", body(), (None, "chunked", "chunk")),
    ]
    for method, data, (length, coding, received) in cases:
        async with env.client.request(method, "/up/framing", data=data) as response:
            echo = await response.json()
        assert (echo["content_length"], echo["transfer_encoding"]) == (length, coding), method
        assert echo["body"] == received
        assert echo["host"] == f"127.0.0.1:{env.origin.server.port}"
    assert env.origin.connections == 1


def test_request_head_refuses_control_characters() -> None:
    with pytest.raises(ValueError, match="control character"):
        request_head("GET", "/", "h", [("X-A", "1\r\nX-Injected: 1")], None)
    with pytest.raises(ValueError, match="control character"):
        request_head("GET", "/", "h", [("X-A", "1\x00")], None)
    head = request_head("POST", "/a?b", "h:1", [("X-A", "tab\tok")], CHUNKED)
    assert head == (
        b"POST /a?b HTTP/1.1\r\nHost: h:1\r\nX-A: tab\tok\r\nTransfer-Encoding: chunked\r\n\r\n"
    )


def test_request_head_non_utf8_bytes_sent_unchanged() -> None:
    value = b"caf\xe9".decode("utf-8", "surrogateescape")  # as aiohttp's parser hands it over
    head = request_head("GET", "/", "h", [("X-A", value)], None)
    assert b"X-A: caf\xe9\r\n" in head


@pytest.mark.parametrize(
    ("method", "length", "framing"),
    [
        ("GET", None, b""),
        ("HEAD", None, b""),
        ("POST", None, b"Content-Length: 0\r\n"),
        ("DELETE", None, b"Content-Length: 0\r\n"),
        ("GET", 5, b"Content-Length: 5\r\n"),
        ("POST", 0, b"Content-Length: 0\r\n"),
        ("POST", CHUNKED, b"Transfer-Encoding: chunked\r\n"),
    ],
)
def test_request_head_framing_from_length_only(
    method: str, length: int | None, framing: bytes
) -> None:
    # Whatever framing the pairs carry (a client's, any case), the head
    # declares exactly the body keygate says it sends.
    pairs = [
        ("Content-Length", "999"),
        ("X-A", "1"),
        ("transfer-encoding", "chunked"),
        ("CONTENT-LENGTH", "0"),
    ]
    head = request_head(method, "/", "h", pairs, length)
    assert head == b"%s / HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n%s\r\n" % (method.encode(), framing)


def test_request_head_refuses_a_negative_length() -> None:
    with pytest.raises(ValueError, match="not a body length"):
        request_head("POST", "/", "h", [], -5)


# -- the header rules match gateway.headers --------------------------------------------------------

NAMES = st.sampled_from(
    [
        "Host", "Connection", "Keep-Alive", "TE", "Transfer-Encoding", "Content-Length",
        "X-Forwarded-For", "X-Forwarded-Host", "X_Forwarded_For", "X-Request-Id",
        "X-Keygate-User", "X_Keygate_Groups", "Authorization", "X-Api-Key", "Expect",
        "X-Custom", "x-custom", "Accept", "Upgrade", "Proxy-Connection", "Cookie",
        "Forwarded", "X_Real_IP", "X-Original-URL",
    ]
)  # fmt: skip
VALUES = st.sampled_from(
    ["", "1", " 10.0.0.1 ", "x-custom, close", "X-API-Key", "keep-alive, X-Forwarded-For",
     "Forwarded, X-Custom",
     "a\x01b", "chunked", "caf\udce9"]
)  # fmt: skip


@given(
    pairs=st.lists(st.tuples(NAMES, VALUES), max_size=12),
    drop=st.sampled_from([(), ("Authorization",), ("X-API-Key",)]),
    identity=st.sampled_from([None, IDENTITY, {"X-Keygate-User": "bad\r\nvalue"}]),
    client_ip=st.sampled_from(["127.0.0.1", "::1", "bad\nip"]),
    host=st.sampled_from([None, "", "gw.example", "evil\x7f"]),
)
def test_upstream_header_pairs_keep_the_rules_on_any_input(
    pairs: list[tuple[str, str]],
    drop: tuple[str, ...],
    identity: dict[str, str] | None,
    client_ip: str,
    host: str | None,
) -> None:
    headers = CIMultiDictProxy(CIMultiDict(pairs))
    kwargs: dict[str, Any] = {
        "drop": drop, "identity": identity, "client_ip": client_ip, "proto": "https",
        "host": host, "request_id": "rid-1",
    }  # fmt: skip
    out = upstream_header_pairs(headers, **kwargs)
    names = [n.lower() for n, _ in out]
    assert not {"connection", "keep-alive", "transfer-encoding", "upgrade"} & set(names)
    assert not {d.lower() for d in drop} & set(names)
    # What keygate adds is always printable (client values pass as received:
    # the server's parser refuses control characters in them before this).
    # (X-Forwarded-For keeps the client's earlier hops; its last one is checked below.)
    added = {"x-forwarded-proto", "x-forwarded-host", "x-request-id"}
    assert all(v.isprintable() for n, v in out if n.lower() in added or n in (identity or {}))
    assert names.count("x-forwarded-for") == 1 and names.count("x-request-id") == 1
    xff = dict((n.lower(), v) for n, v in out)["x-forwarded-for"]
    assert xff.endswith(client_ip if client_ip.isprintable() else "ip")
    keygate = [n for n in names if n.replace("_", "-").startswith("x-keygate-")]
    if identity is None:
        assert keygate == []
    else:
        assert sorted(keygate) == sorted(k.lower() for k in identity)


RESPONSE_NAMES = st.sampled_from(
    ["Connection", "Keep-Alive", "Transfer-Encoding", "Content-Length", "Set-Cookie",
     "X-Hop", "x-hop", "Trailer", "Proxy-Authenticate", "Content-Type", "Upgrade"]
)  # fmt: skip
RESPONSE_VALUES = st.sampled_from(
    ["", "5", "close", "X-Hop, keep-alive", "chunked", "a=1", "text/plain", "caf\xe9"]
)  # fmt: skip


def _reference(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The response rule as RFC 9110 §7.6.1 and RFC 9112 §6.3 word it, slowly."""
    listed = {
        t.strip().lower()
        for n, v in pairs
        if n.lower() == "connection"
        for t in v.split(",")
        if t.strip()
    }
    if any(n.lower() == "transfer-encoding" for n, _ in pairs):
        listed.add("content-length")
    removed = listed | HOP_BY_HOP
    return [(n, v) for n, v in pairs if n.lower() not in removed]


@given(pairs=st.lists(st.tuples(RESPONSE_NAMES, RESPONSE_VALUES), max_size=10))
def test_response_headers_follow_the_rfc_rule(pairs: list[tuple[str, str]]) -> None:
    raw = [(n.encode(), v.encode()) for n, v in pairs]
    decoded = [(n, v.encode().decode("utf-8", "surrogateescape")) for n, v in pairs]
    got, _ = response_headers(raw)
    assert got == _reference(decoded)


# -- lifecycle ---------------------------------------------------------------------------------


async def test_upstream_pool_close_closes_idle_and_refuses_new(env: Env) -> None:
    await get(env, "/up/hello")
    pool = env.pool
    conns = [c for idle in pool._idle.values() for c in idle]
    assert len(conns) == 1
    await pool.close()
    assert conns[0].lost
    async with env.client.get("/up/hello") as response:
        assert response.status == 502


def test_upstream_only_plain_http_routes_use_the_pool() -> None:
    def origin_of(url: str) -> upstream.Origin | None:
        return RouteGate(Route(name="r", prefix="/", upstream=url)).origin

    plain = origin_of("http://Example.COM/base")
    assert plain is not None
    assert (plain.key, plain.host) == (("example.com", 80), "example.com")
    v6 = origin_of("http://[::1]:8081")
    assert v6 is not None and (v6.key, v6.host) == (("::1", 8081), "[::1]:8081")
    assert origin_of("https://example.com") is None  # aiohttp's session speaks TLS


async def test_upstream_connection_refused_502(env: Env) -> None:
    env.add_route("/dead", f"http://127.0.0.1:{free_port()}")
    assert (await get(env, "/dead/x"))[0] == 502


# -- the same on uvloop -------------------------------------------------------------------------

ON_UVLOOP: list[Callable[[Env], Awaitable[None]]] = [
    test_upstream_sequential_requests_reuse_one_connection,
    test_upstream_concurrent_requests_one_per_connection,
    test_upstream_stale_connection_get_retried_once_on_fresh_one,
    test_upstream_chunked_response_relayed_chunked,
    test_upstream_large_fixed_length_streamed_with_length,
    test_upstream_body_until_close_relayed_and_connection_not_reused,
    test_upstream_head_no_body_connection_reused,
    test_upstream_closes_mid_large_body_client_sees_abort,
    test_upstream_timeout_before_response_504_connection_dropped,
    test_upstream_client_disconnect_mid_download_upstream_closed,
    test_upstream_request_framing_follows_client,
    test_upstream_pool_close_closes_idle_and_refuses_new,
    test_upstream_connection_refused_502,
]


@pytest.mark.parametrize("scenario", ON_UVLOOP, ids=lambda f: f.__name__.removeprefix("test_"))
def test_on_uvloop(scenario: Callable[[Env], Awaitable[None]]) -> None:
    async def main() -> None:
        async with make_env() as e:
            await scenario(e)

    uvloop.run(main())
