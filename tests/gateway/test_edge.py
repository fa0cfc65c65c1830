"""The edge protocol (gateway.edge): what is specific to keygate's own HTTP front end.

Every test runs a real keygate (KeygateTestServer) on a real port in front of a
real upstream and talks to it over raw sockets: which requests the edge
serves itself and which it hands to aiohttp on the same connection,
pipelining, idle and slow clients, clients that leave, graceful shutdown,
streaming, upstream faults, the access line and the admin prefix.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import os
import re
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import uvloop

from keygate.config.settings import Route
from keygate.gateway.http.edge.protocol import EdgeProtocol
from keygate.gateway.http.edge.server import Edge
from keygate.gateway.http.logsetup import (
    FORMAT,
    BatchedStreamHandler,
    CachedTimeFormatter,
    info_line_writer,
)
from tests.support.gateway import (
    GatewayFactory,
    Keygate,
    default_route,
    make_settings,
    start_keygate,
    started_client,
)
from tests.support.polling import wait_for
from tests.support.raw import Raw, Reply, bearer, connect, free_port, http
from tests.support.raw_upstreams import Canned, StreamHandler, StrictUpstream, raw_server
from tests.support.raw_upstreams import Exchange as UpstreamExchange
from tests.support.upstreams import BLOCK, MIB, Recorder, RecorderFactory, Seen

IO_TIMEOUT = 5.0


# --- helpers -------------------------------------------------------------------------------
def edge_of(kg: Keygate) -> Edge:
    edge = kg.client.server.runner.server.edge
    assert isinstance(edge, Edge), "this keygate serves no request on the edge"
    return edge


def request(
    method: str,
    target: str,
    token: str | None = None,
    *,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    version: str = "HTTP/1.1",
) -> bytes:
    """:func:`http` with the key as a bearer token and the body's length declared."""
    pairs = [bearer(token)] if token is not None else []
    pairs += list((headers or {}).items())
    if body:
        pairs.append(("Content-Length", str(len(body))))
    return http(method, target, pairs, body, version=version)


def chunked_post(target: str, token: str) -> bytes:
    """A POST whose 10-byte body is chunked: the edge hands it to aiohttp."""
    head = request("POST", target, token, headers={"Transfer-Encoding": "chunked"})
    return head + b"4\r\nhell\r\n6\r\no body\r\n0\r\n\r\n"


def edge_peers(edge: Edge) -> set[tuple[str, int]]:
    """The client addresses of the connections the edge serves now."""
    peers: set[tuple[str, int]] = set()
    for protocol in edge.connections:
        assert isinstance(protocol, EdgeProtocol)
        transport = protocol._transport
        if transport is not None:
            peers.add(tuple(transport.get_extra_info("peername")[:2]))  # type: ignore[arg-type]
    return peers


def edge_transport(edge: Edge, conn: Raw) -> asyncio.Transport:
    """The server side of ``conn``, while the edge serves it."""
    for protocol in edge.connections:
        transport = protocol._transport
        if transport is not None and transport.get_extra_info("peername")[:2] == conn.sockname:
            return transport
    raise AssertionError("the connection is not the edge's")


def echoed(answer: Reply) -> dict[str, Any]:
    assert answer.status == 200, (answer.status_line, answer.body[:300])
    data: dict[str, Any] = json.loads(answer.body)
    return data


@pytest.fixture
async def kg(keygate_factory: GatewayFactory, recorder: Recorder) -> Keygate:
    return await keygate_factory(default_route(recorder.url))


@pytest.fixture
async def token(kg: Keygate) -> str:
    return await kg.make_key(["default"], name="edge-test")


@pytest.fixture
async def holding(recorder_factory: RecorderFactory) -> Recorder:
    """An upstream that answers ``late`` once ``release`` is set (its ``/_up/hold`` is
    every path); ``dropped`` counts the requests keygate gave up on."""
    return await recorder_factory("holding")


def holding_route(up: Recorder, **extra: Any) -> tuple[Route, ...]:
    """The default route, every request of it held by ``up``."""
    return default_route(up.at("/_up/hold"), **extra)


# --- served by the edge ------------------------------------------------------------------------
async def test_edge_serves_plain_requests_on_its_own_connections(kg: Keygate, token: str) -> None:
    edge = edge_of(kg)
    async with connect(kg.port) as conn:
        await conn.send(request("GET", "/plain", token))
        assert echoed(await conn.reply())["raw_target"] == "/plain"
        assert conn.sockname in edge_peers(edge)
        await conn.send(request("GET", "/again", token))
        assert echoed(await conn.reply())["raw_target"] == "/again"
        assert conn.sockname in edge_peers(edge)
    await wait_for(lambda: not edge.connections, what="the edge to forget the connection")


async def test_edge_absent_with_fast_path_off(
    keygate_factory: GatewayFactory, recorder: Recorder
) -> None:
    kg = await keygate_factory(default_route(recorder.url), server={"fast_path": False})
    assert kg.client.server.runner.server.edge is None
    token = await kg.make_key(["default"])
    async with connect(kg.port) as conn:
        await conn.send(request("GET", "/plain", token))
        assert echoed(await conn.reply())["raw_target"] == "/plain"


# --- hand-off to aiohttp ------------------------------------------------------------------
async def test_edge_hands_off_a_body_request_mid_connection(
    kg: Keygate, token: str, recorder: Recorder
) -> None:
    edge = edge_of(kg)
    async with connect(kg.port) as conn:
        await conn.send(request("GET", "/one", token))
        assert echoed(await conn.reply())["raw_target"] == "/one"
        assert conn.sockname in edge_peers(edge)

        # A chunked body is always aiohttp's to read (the edge takes only small,
        # whole Content-Length bodies, if any).
        await conn.send(chunked_post("/two", token))
        seen = echoed(await conn.reply())
        assert (seen["method"], seen["raw_target"], seen["body_len"]) == ("POST", "/two", 10)
        assert conn.sockname not in edge_peers(edge)  # aiohttp's from now on

        await conn.send(request("GET", "/three", token))
        assert echoed(await conn.reply())["raw_target"] == "/three"
        assert conn.sockname not in edge_peers(edge)
    assert [r.target for r in recorder.seen] == ["/one", "/two", "/three"]
    assert [r.body_len for r in recorder.seen] == [0, 10, 0]


@pytest.mark.parametrize("count", [2, 3])
async def test_edge_pipelined_gets_answered_in_order(
    kg: Keygate, token: str, recorder: Recorder, count: int
) -> None:
    targets = [f"/pipe/{i}?n={i}" for i in range(count)]
    async with connect(kg.port) as conn:
        await conn.send(b"".join(request("GET", t, token) for t in targets))
        answers = [await conn.reply() for _ in targets]
        assert [echoed(a)["raw_target"] for a in answers] == targets
        assert conn.sockname in edge_peers(edge_of(kg))
    assert [r.target for r in recorder.seen] == targets


async def test_edge_pipelined_get_then_body_request(
    kg: Keygate, token: str, recorder: Recorder
) -> None:
    async with connect(kg.port) as conn:
        await conn.send(
            request("GET", "/first", token)
            + request("POST", "/second", token, body=b"0123456789abcdef")
            + request("GET", "/third", token)
            + chunked_post("/fourth", token)
            + request("GET", "/fifth", token)
        )
        answers = [echoed(await conn.reply()) for _ in range(5)]
    assert [(a["raw_target"], a["body_len"]) for a in answers] == [
        ("/first", 0),
        ("/second", 16),
        ("/third", 0),
        ("/fourth", 10),
        ("/fifth", 0),
    ]
    assert [r.body_len for r in recorder.seen] == [0, 16, 0, 10, 0]


async def test_edge_pipelined_refusal_then_get(kg: Keygate, token: str) -> None:
    async with connect(kg.port) as conn:
        await conn.send(request("GET", "/no-key") + request("GET", "/with-key", token))
        refused = await conn.reply()
        assert refused.status == 401
        assert json.loads(refused.body)["error"]["code"] == "missing_api_key"
        assert echoed(await conn.reply())["raw_target"] == "/with-key"


async def test_edge_head_split_over_two_writes(kg: Keygate, token: str) -> None:
    edge = edge_of(kg)
    whole = request("GET", "/split?x=1", token, headers={"X-Extra": "yes"})
    async with connect(kg.port) as conn:
        await conn.send(whole[:20])
        # A partial head is aiohttp's: the edge lets the connection go at once.
        await wait_for(lambda: not edge.connections, what="the hand-off of a partial head")
        await conn.send(whole[20:])
        seen = echoed(await conn.reply())
    assert seen["raw_target"] == "/split?x=1"
    assert ["X-Extra", "yes"] in seen["headers"]


# --- time ----------------------------------------------------------------------------------------
async def test_edge_idle_keep_alive_closed_after_header_timeout(
    keygate_factory: GatewayFactory, recorder: Recorder
) -> None:
    kg = await keygate_factory(default_route(recorder.url), server={"header_timeout": 0.3})
    token = await kg.make_key(["default"])
    edge = edge_of(kg)
    async with connect(kg.port) as conn:
        await conn.send(request("GET", "/idle", token))
        assert echoed(await conn.reply())["raw_target"] == "/idle"
        answered = time.monotonic()
        assert conn.sockname in edge_peers(edge)
        assert await conn.eof(within=3.0), "the idle connection stayed open"
        idle = time.monotonic() - answered
    assert 0.25 <= idle <= 2.5, idle
    await wait_for(lambda: not edge.connections, what="the edge to drop the connection")


async def test_edge_silent_connection_closed_after_header_timeout(
    keygate_factory: GatewayFactory, recorder: Recorder
) -> None:
    kg = await keygate_factory(default_route(recorder.url), server={"header_timeout": 0.3})
    edge = edge_of(kg)
    async with connect(kg.port) as conn:
        opened = time.monotonic()
        await wait_for(lambda: conn.sockname in edge_peers(edge), what="the edge connection")
        assert await conn.eof(within=3.0), "a connection that never sent a byte stayed open"
        assert 0.25 <= time.monotonic() - opened <= 2.5


async def test_edge_client_gone_mid_request_releases_gate_and_upstream(
    keygate_factory: GatewayFactory, holding: Recorder
) -> None:
    kg = await keygate_factory(holding_route(holding))
    token = await kg.make_key(["default"])
    gate = kg.gw.gates["default"]
    conn = await Raw.open(kg.port)
    try:
        await conn.send(request("GET", "/hold", token))
        await wait_for(lambda: holding.holding == 1, within=IO_TIMEOUT, what="the upstream")
        assert gate.in_flight == 1
        assert conn.sockname in edge_peers(edge_of(kg))
    finally:
        await conn.close()
    await wait_for(lambda: gate.in_flight == 0, what="the route slot to be released")
    await wait_for(lambda: holding.dropped == 1, what="the upstream connection to be dropped")


async def test_edge_graceful_shutdown_completes_request_in_flight(
    keygate_factory: GatewayFactory, holding: Recorder
) -> None:
    kg = await keygate_factory(holding_route(holding))
    token = await kg.make_key(["default"])
    edge = edge_of(kg)
    async with connect(kg.port) as conn:
        await conn.send(request("GET", "/in-flight", token))
        await wait_for(lambda: holding.holding == 1, within=IO_TIMEOUT, what="the upstream")
        assert conn.sockname in edge_peers(edge)
        closing = asyncio.create_task(kg.client.server.close())
        try:
            await wait_for(lambda: edge.closing, what="the shutdown to begin")
            assert not closing.done()
            holding.release.set()
            answer = await conn.reply()
            assert (answer.status, answer.body) == (200, b"late")
            assert await conn.eof(), "the connection stayed open during shutdown"
            async with asyncio.timeout(IO_TIMEOUT):
                await closing
        finally:
            if not closing.done():
                closing.cancel()
                await asyncio.gather(closing, return_exceptions=True)


async def test_edge_route_timeout_is_504(
    keygate_factory: GatewayFactory, holding: Recorder
) -> None:
    kg = await keygate_factory(holding_route(holding, timeout=0.5))
    token = await kg.make_key(["default"])
    async with connect(kg.port) as conn:
        started = time.monotonic()
        await conn.send(request("GET", "/never", token))
        await wait_for(lambda: conn.sockname in edge_peers(edge_of(kg)), what="edge connection")
        answer = await conn.reply(within=3.0)
        elapsed = time.monotonic() - started
    assert answer.status == 504
    assert json.loads(answer.body)["error"]["code"] == "upstream_timeout"
    assert 0.45 <= elapsed <= 1.5, elapsed
    assert kg.gw.gates["default"].in_flight == 0


async def test_edge_upstream_refused_is_502(keygate_factory: GatewayFactory) -> None:
    kg = await keygate_factory(default_route(f"http://127.0.0.1:{free_port()}/"))
    token = await kg.make_key(["default"])
    async with connect(kg.port) as conn:
        await conn.send(request("GET", "/refused", token))
        answer = await conn.reply()
        assert answer.status == 502
        assert json.loads(answer.body)["error"]["code"] == "upstream_unavailable"
        assert answer.header("X-Request-Id")
        # A refusal of ours leaves the connection usable.
        await conn.send(request("GET", "/refused-again", token))
        assert (await conn.reply()).status == 502


# --- streaming -----------------------------------------------------------------------------------
async def test_edge_streams_chunked_mib_to_slow_reader(
    keygate_factory: GatewayFactory, recorder: Recorder
) -> None:
    kg = await keygate_factory(default_route(recorder.url))
    token = await kg.make_key(["default"])
    edge = edge_of(kg)
    async with connect(kg.port, rcvbuf=4096) as conn:
        await conn.send(request("GET", "/_up/big/1?chunked", token))

        def lagging() -> bool:
            # The client reads nothing: the upstream is done, or keygate buffers for it.
            if recorder.streams_finished:
                return True
            return edge_transport(edge, conn).get_write_buffer_size() > 0

        await wait_for(lagging, within=IO_TIMEOUT, what="the slow reader to fall behind")
        answer = await conn.reply()
    assert answer.status == 200
    assert answer.framing == "chunked"
    assert answer.body == BLOCK


async def test_edge_streams_10_mib_with_length(
    keygate_factory: GatewayFactory, recorder: Recorder
) -> None:
    kg = await keygate_factory(default_route(recorder.url))
    token = await kg.make_key(["default"])
    async with connect(kg.port) as conn:
        await conn.send(request("GET", "/_up/big/10", token))
        answer = await conn.reply(within=30.0)
        assert conn.sockname in edge_peers(edge_of(kg))
    assert answer.status == 200
    assert (answer.framing, answer.header("Content-Length")) == ("length", str(10 * MIB))
    assert hashlib.sha256(answer.body).digest() == hashlib.sha256(BLOCK * 10).digest()


async def test_edge_upstream_trailer_is_not_a_response_header(
    keygate_factory: GatewayFactory,
) -> None:
    """Trailer fields of a chunked upstream answer never become header fields (RFC 9110 §6.5.1).

    The upstream writes head, body and trailer section at once, so keygate
    parses the trailer before it builds the client's response head.
    """

    answer = Canned.always(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Trailer\r\n\r\n"
        b"3\r\nabc\r\n0\r\nX-Trailer: late\r\n\r\n",
        close_after=False,
    )
    async with raw_server(answer) as up:
        kg = await keygate_factory(default_route(up.url))
        token = await kg.make_key(["default"])
        async with connect(kg.port) as conn:
            await conn.send(request("GET", "/trailer", token))
            got = await conn.reply()
    assert (got.status, got.body) == (200, b"abc")
    assert got.values("X-Trailer") == [], got.headers


@pytest.mark.parametrize("fast_path", [True, False], ids=["edge", "aiohttp"])
@pytest.mark.parametrize("first", ["1", "0"], ids=["head-and-a-byte", "head-alone"])
async def test_small_body_still_arriving_streams_its_head_at_once(
    keygate_factory: GatewayFactory, recorder: Recorder, fast_path: bool, first: str
) -> None:
    """A small body of known length that trickles in (httpbin's /drip) is not held
    back until it is complete: the head, and what arrived, reach the client while
    the upstream still holds the rest; the length stays."""
    kg = await keygate_factory(
        default_route(recorder.at("/_up/drip")), server={"fast_path": fast_path}
    )
    token = await kg.make_key(["default"])
    async with connect(kg.port) as conn, asyncio.timeout(IO_TIMEOUT):
        await conn.send(request("GET", f"/x?first={first}", token))
        head = await conn.reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n"), head
        assert b"\r\nContent-Length: 4\r\n" in head, head
        assert b"Transfer-Encoding" not in head, head
        if first == "1":
            assert await conn.reader.readexactly(1) == b"*"
        recorder.release.set()
        rest = await conn.reader.readexactly(3 if first == "1" else 4)
    assert rest == (b"***" if first == "1" else b"****")


@pytest.mark.parametrize("fast_path", [True, False], ids=["edge", "aiohttp"])
async def test_upstream_cut_small_body_after_its_head_aborts_client(
    keygate_factory: GatewayFactory, fast_path: bool
) -> None:
    """A small body the upstream cuts once its head went out: the client's connection
    is cut, so the short body never looks complete."""
    cut_now = asyncio.Event()

    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b")
        await writer.drain()
        await cut_now.wait()
        writer.transport.abort()

    async with raw_server(cut) as up:
        kg = await keygate_factory(default_route(up.url), server={"fast_path": fast_path})
        token = await kg.make_key(["default"])
        async with connect(kg.port) as conn, asyncio.timeout(IO_TIMEOUT):
            await conn.send(request("GET", "/cut", token))
            head = await conn.reader.readuntil(b"\r\n\r\n")
            assert b"Content-Length: 100\r\n" in head
            cut_now.set()
            with pytest.raises((asyncio.IncompleteReadError, ConnectionError)):
                await conn.reader.readexactly(100)


async def test_edge_upstream_cut_mid_stream_aborts_client(keygate_factory: GatewayFactory) -> None:
    """Once the answer has started, a broken upstream body must not look complete."""
    length = 200_000

    cut = Canned.always(
        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % length + b"x" * (length // 2)
    )
    async with raw_server(cut) as up:
        kg = await keygate_factory(default_route(up.url))
        token = await kg.make_key(["default"])
        async with connect(kg.port) as conn:
            await conn.send(request("GET", "/cut", token))
            try:
                got = await conn.reply()
            except (asyncio.IncompleteReadError, ConnectionError):
                pass  # cut before the head was through
            else:
                assert not got.complete, "a cut upstream body must not look complete"
        await wait_for(lambda: kg.gw.gates["default"].in_flight == 0, what="the slot back")


async def test_edge_client_gone_mid_stream_releases_upstream(
    keygate_factory: GatewayFactory,
) -> None:
    dropped = asyncio.Event()

    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        try:
            while True:
                writer.write(b"4000\r\n" + b"e" * 0x4000 + b"\r\n")
                await writer.drain()
                if reader.at_eof():
                    break
                await asyncio.sleep(0)
        finally:
            dropped.set()

    async with raw_server(endless) as up:
        kg = await keygate_factory(default_route(up.url))
        token = await kg.make_key(["default"])
        gate = kg.gw.gates["default"]
        conn = await Raw.open(kg.port)
        try:
            await conn.send(request("GET", "/endless", token))
            async with asyncio.timeout(IO_TIMEOUT):
                await conn.reader.readuntil(b"\r\n\r\n")
                await conn.reader.readexactly(100_000)
            assert gate.in_flight == 1
        finally:
            await conn.close()
        await wait_for(lambda: gate.in_flight == 0, what="the route slot to be released")
        await wait_for(dropped.is_set, what="the upstream connection to be dropped")


async def test_edge_route_full_is_503_at_once(
    keygate_factory: GatewayFactory, holding: Recorder
) -> None:
    kg = await keygate_factory(holding_route(holding, max_connections=1))
    token = await kg.make_key(["default"])
    async with connect(kg.port) as first, connect(kg.port) as second:
        await first.send(request("GET", "/held", token))
        await wait_for(lambda: holding.holding == 1, within=IO_TIMEOUT, what="the upstream")
        await second.send(request("GET", "/busy", token))
        busy = await second.reply(within=2.0)
        assert busy.status == 503
        assert json.loads(busy.body)["error"]["code"] == "upstream_busy"
        holding.release.set()
        held = await first.reply()
        assert (held.status, held.body) == (200, b"late")


async def test_edge_long_pipeline_over_read_ahead(
    kg: Keygate, token: str, recorder: Recorder
) -> None:
    """More pipelined bytes than the edge reads ahead (64 KiB): all answered, in order."""
    targets = [f"/long/{i}" for i in range(600)]
    data = b"".join(request("GET", t, token) for t in targets)
    assert len(data) > 64 * 1024
    async with connect(kg.port) as conn:
        await conn.send(data)
        answers = [echoed(await conn.reply()) for _ in targets]
    assert [a["raw_target"] for a in answers] == targets
    assert [r.target for r in recorder.seen] == targets


async def test_edge_small_body_after_its_head(kg: Keygate, token: str, recorder: Recorder) -> None:
    """A body that is not all there with its head is aiohttp's: forwarded intact."""
    edge = edge_of(kg)
    whole = request("PUT", "/late-body", token, body=b"0123456789")
    async with connect(kg.port) as conn:
        await conn.send(whole[:-6])
        await wait_for(lambda: not edge.connections, what="the hand-off of a partial body")
        await conn.send(whole[-6:])
        seen = echoed(await conn.reply())
    assert (seen["method"], seen["raw_target"], seen["body_len"]) == ("PUT", "/late-body", 10)


# --- the access line -----------------------------------------------------------------------------
_ACCESS = re.compile(
    r"method=(?P<method>\S+) path=(?P<path>\S+) status=(?P<status>\d{3}) "
    r"duration_ms=(?P<ms>\d+\.\d{2}) key_id=(?P<key_id>\S+) route=(?P<route>\S+) "
    r"request_id=(?P<request_id>\S+)"
)


def _access_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "aiohttp.access" and r.getMessage().startswith("method=")
    ]


def _masked(message: str) -> str:
    return re.sub(r"(duration_ms|request_id)=\S+", r"\1=*", message)


async def test_edge_access_line_matches_aiohttp_one(
    keygate_factory: GatewayFactory,
    recorder_factory: RecorderFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="aiohttp.access")
    recorder = await recorder_factory("quiet")
    # The recorder writes no access lines: every one captured is keygate's.
    kg = await keygate_factory(
        default_route(recorder.url), sources=("authorization", "x-api-key", "query:api_key")
    )
    token = await kg.make_key(["default"])
    key_id = token.split("_")[1]
    edge = edge_of(kg)
    whole = request("GET", "/x?a=1&secret=s3", token, headers={"X-Request-Id": "edge-req"})
    split = request("GET", "/x?a=1&secret=s3", token, headers={"X-Request-Id": "aio-req"})
    async with connect(kg.port) as conn:
        await conn.send(whole)
        assert echoed(await conn.reply())["raw_target"] == "/x?a=1&secret=s3"
    async with connect(kg.port) as conn:
        await conn.send(split[:10])
        await wait_for(lambda: not edge.connections, what="the hand-off")
        await conn.send(split[10:])
        assert echoed(await conn.reply())["raw_target"] == "/x?a=1&secret=s3"
    async with connect(kg.port) as conn:
        await conn.send(request("GET", f"/q?api_key={token}&b=2"))
        assert echoed(await conn.reply())["raw_target"] == "/q?b=2"

    await wait_for(lambda: len(_access_lines(caplog)) >= 3, what="three access lines")
    records = _access_lines(caplog)
    assert len(records) == 3, [r.getMessage() for r in records]
    messages = [r.getMessage() for r in records]
    edge_line, aiohttp_line, query_line = messages
    for record in records:
        assert record.levelno == logging.INFO
    for message, request_id in zip(messages, ("edge-req", "aio-req", None), strict=True):
        match = _ACCESS.fullmatch(message)
        assert match, message
        assert match["method"] == "GET"
        assert match["status"] == "200"
        assert match["key_id"] == key_id
        assert match["route"] == "default"
        if request_id is not None:
            assert match["request_id"] == request_id
    assert _masked(edge_line) == _masked(aiohttp_line)
    assert _ACCESS.fullmatch(edge_line)["path"] == "/x"  # type: ignore[index]
    assert _ACCESS.fullmatch(query_line)["path"] == "/q"  # type: ignore[index]
    for message in messages:
        assert token not in message
        assert "a=1" not in message and "secret" not in message and "api_key" not in message


async def test_edge_access_line_for_refusal(kg: Keygate, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="aiohttp.access")
    bad = "kg_0123456789ab_abcdefghijklmnopqrstuvwxyzABCDEF2dJnNU"
    async with connect(kg.port) as conn:
        await conn.send(request("GET", "/refused?t=1", bad, headers={"X-Request-Id": "r-1"}))
        assert (await conn.reply()).status == 401
    await wait_for(lambda: _access_lines(caplog), what="the access line")
    (record,) = _access_lines(caplog)
    match = _ACCESS.fullmatch(record.getMessage())
    assert match, record.getMessage()
    assert (match["path"], match["status"], match["key_id"], match["route"]) == (
        "/refused",
        "401",
        "-",
        "default",
    )
    assert match["request_id"] == "r-1"
    assert bad not in record.getMessage()


_STAMP = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2},\d{3}")


def _batched_logger(name: str) -> tuple[logging.Logger, BatchedStreamHandler, io.StringIO]:
    """A fresh logger set up as configure_logging sets up keygate.access."""
    logger = logging.getLogger(name)
    logger.handlers.clear()
    logger.setLevel(logging.INFO)
    logger.propagate = False
    stream = io.StringIO()
    handler = BatchedStreamHandler(stream)
    handler.setFormatter(CachedTimeFormatter(FORMAT))
    logger.addHandler(handler)
    return logger, handler, stream


def test_edge_info_line_writer_writes_what_logger_info_would() -> None:
    logger, handler, stream = _batched_logger(f"keygate.test.access.{os.getpid()}")
    try:
        write = info_line_writer(logger)
        assert write is not None
        message = "method=GET path=/x status=200 duration_ms=0.12 key_id=k route=r request_id=i"
        write(message)
        logger.info("%s", message)
        handler.flush()
        written, logged = stream.getvalue().splitlines()
        assert _STAMP.match(written) and _STAMP.match(logged), (written, logged)
        assert _STAMP.sub("<ts>", written, count=1) == _STAMP.sub("<ts>", logged, count=1)
        assert written.endswith(f" INFO {logger.name} pid={os.getpid()} {message}")

        logger.setLevel(logging.WARNING)  # the level still applies
        write("not written")
        handler.flush()
        assert "not written" not in stream.getvalue()
    finally:
        logger.handlers.clear()
        logger.propagate = True
        logger.setLevel(logging.NOTSET)


def test_edge_info_line_writer_declines_other_set_ups() -> None:
    logger, handler, _ = _batched_logger(f"keygate.test.other.{os.getpid()}")
    try:
        logger.propagate = True
        assert info_line_writer(logger) is None  # another handler may see it upstream
        logger.propagate = False
        handler.setFormatter(logging.Formatter(FORMAT))
        assert info_line_writer(logger) is None
        handler.setFormatter(CachedTimeFormatter("%(message)s"))
        assert info_line_writer(logger) is None
        handler.setFormatter(CachedTimeFormatter(FORMAT))
        logger.addHandler(logging.NullHandler())
        assert info_line_writer(logger) is None
        assert info_line_writer(logging.getLogger("aiohttp.access")) is None
    finally:
        logger.handlers.clear()
        logger.propagate = True


# --- the admin prefix ---------------------------------------------------------------------------
async def test_edge_admin_prefix_is_aiohttp_and_never_proxied(
    kg: Keygate, recorder: Recorder
) -> None:
    async with connect(kg.port) as conn:
        await conn.send(request("GET", "/_keygate/api/v1/me", kg.admin_token))
        me = await conn.reply()
        assert me.status == 200, me.body
        assert "admin" in me.body.decode()
        assert me.header("X-Upstream") is None

        await conn.send(request("GET", "/_keygate/nope", kg.admin_token))
        nope = await conn.reply()
        assert nope.status == 404
        assert (nope.header("Content-Type") or "").startswith("application/json")
        assert json.loads(nope.body)["error"]["code"] == "not_found"

    for target in ("/%5Fkeygate/api/v1/me", "/%5fkeygate/nope", "/x/../_keygate/api/v1/me"):
        async with connect(kg.port) as conn:
            await conn.send(request("GET", target, kg.admin_token))
            answer = await conn.reply()
            assert answer.header("X-Upstream") is None, target
            assert answer.status != 502
            assert (answer.header("Content-Type") or "").startswith("application/json"), target
    assert recorder.seen == []


# --- the keep-alive race on a pooled connection (RFC 9112 §9.3.1) ------------------------------
@dataclass
class RaceCounts:
    requests: int = 0
    connections: int = 0


def racing_upstream(counts: RaceCounts) -> StreamHandler:
    """Answers every request but the second, which it reads and drops the connection on:
    an upstream closing an idle keep-alive connection just as keygate reuses it."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        counts.connections += 1
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            counts.requests += 1
            fields = head.lower().split(b"\r\n")
            length = next(
                (int(f.split(b":")[1]) for f in fields if f.startswith(b"content-length:")), 0
            )
            if length:
                await reader.readexactly(length)
            if counts.requests == 2:
                writer.transport.abort()
                return
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nfine")
            await writer.drain()

    return handle


async def test_edge_stale_pooled_connection_get_is_retried_once(
    keygate_factory: GatewayFactory,
) -> None:
    counts = RaceCounts()
    async with raw_server(racing_upstream(counts)) as up:
        kg = await keygate_factory(default_route(up.url))
        token = await kg.make_key(["default"])
        async with connect(kg.port) as conn:
            for path in ("/a", "/b"):  # /b goes out on the pooled connection first
                await conn.send(request("GET", path, token))
                got = await conn.reply()
                assert (got.status, got.body) == (200, b"fine")
    assert (counts.requests, counts.connections) == (3, 2)


async def test_edge_stale_pooled_connection_post_is_502_not_repeated(
    keygate_factory: GatewayFactory,
) -> None:
    counts = RaceCounts()
    async with raw_server(racing_upstream(counts)) as up:
        kg = await keygate_factory(default_route(up.url))
        token = await kg.make_key(["default"])
        async with connect(kg.port) as conn:
            await conn.send(request("GET", "/a", token))
            assert (await conn.reply()).status == 200
            await conn.send(request("POST", "/b", token, body=b"once"))
            got = await conn.reply()
    assert got.status == 502
    assert json.loads(got.body)["error"]["code"] == "upstream_unavailable"
    assert counts.requests == 2  # a POST is never sent twice


# An upstream that answers every request as keep-alive (no "Connection: close")
# and closes the connection right after: each pooled connection dies just as
# keygate may hand it to the next request. None of these requests is ever
# answered 502: each either goes out on a live connection or, when nothing of
# it reached a closing one, on a fresh connection (docs/reference.md#forwarding).
CLOSER_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
STORM_CONNECTIONS = 8
STORM_REQUESTS = 40  # per connection


def _answer_then_close(seen: Seen, exchange: UpstreamExchange) -> tuple[bytes, bool]:
    return CLOSER_ANSWER, True


async def _post_storm(kg: Keygate, up: StrictUpstream, token: str) -> Counter[int]:
    """STORM_CONNECTIONS clients posting STORM_REQUESTS each; the statuses they got."""
    statuses: Counter[int] = Counter()

    async def client(n: int) -> None:
        async with connect(kg.port) as conn:
            for i in range(STORM_REQUESTS):
                await conn.send(request("POST", f"/c{n}/{i}", token, body=b'{"n": %d}' % i))
                statuses[(await conn.reply()).status] += 1

    await asyncio.gather(*(client(n) for n in range(STORM_CONNECTIONS)))
    return statuses


def _storm_seen_once_each(up: StrictUpstream) -> None:
    targets = [s.target for s in up.seen]
    assert len(targets) == len(set(targets)) == STORM_CONNECTIONS * STORM_REQUESTS


@pytest.mark.parametrize("fast_path", [True, False], ids=["edge", "aiohttp"])
async def test_upstream_closing_after_each_answer_never_502s_a_post(
    keygate_factory: GatewayFactory, fast_path: bool
) -> None:
    up = await StrictUpstream(_answer_then_close).start()
    try:
        kg = await keygate_factory(default_route(up.url), server={"fast_path": fast_path})
        token = await kg.make_key(["default"])
        statuses = await _post_storm(kg, up, token)
    finally:
        await up.close()
    assert statuses == {200: STORM_CONNECTIONS * STORM_REQUESTS}
    _storm_seen_once_each(up)


@pytest.mark.parametrize("fast_path", [True, False], ids=["edge", "aiohttp"])
def test_upstream_closing_after_each_answer_never_502s_a_post_on_uvloop(
    tmp_path: Path, fast_path: bool
) -> None:
    """The same on uvloop, the loop keygate serves on (its reads and closes differ)."""

    async def main() -> tuple[Counter[int], StrictUpstream]:
        up = await StrictUpstream(_answer_then_close).start()
        settings = make_settings(tmp_path, default_route(up.url), server={"fast_path": fast_path})
        kg = await start_keygate(settings, started_client)
        try:
            token = await kg.make_key(["default"])
            return await _post_storm(kg, up, token), up
        finally:
            await kg.client.close()
            await up.close()

    statuses, up = uvloop.run(main())
    assert statuses == {200: STORM_CONNECTIONS * STORM_REQUESTS}
    _storm_seen_once_each(up)


# --- refusal back-off (auth.refusal_delay) --------------------------------------------------------
BAD_KEY = "kg_aaaaaaaaaaaa_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb" + "zzzzzz"


async def _two_refusals_timed(kg: Keygate) -> float:
    """Seconds between the answers to two refused requests pipelined on one connection."""
    loop = asyncio.get_running_loop()
    async with connect(kg.port) as conn:
        await conn.send(request("GET", "/x", BAD_KEY) * 2)
        first = await conn.reply()
        at = loop.time()
        second = await conn.reply(within=IO_TIMEOUT + 5)
        gap = loop.time() - at
    assert (first.status, second.status) == (401, 401)
    return gap


async def test_edge_refused_client_waits_while_authenticated_work_is_in_flight(
    keygate_factory: GatewayFactory, holding: Recorder
) -> None:
    kg = await keygate_factory(holding_route(holding), refusal_delay=0.4)
    token = await kg.make_key(["default"])
    async with connect(kg.port) as busy:
        await busy.send(request("GET", "/hold", token))
        await wait_for(lambda: holding.holding == 1, within=IO_TIMEOUT, what="the upstream")
        assert edge_of(kg).busy == 1
        gap = await _two_refusals_timed(kg)
        holding.release.set()
        assert (await busy.reply()).status == 200
    assert gap >= 0.35  # the second request was read only after the delay


async def test_edge_refusals_at_full_speed_when_nothing_else_waits(
    keygate_factory: GatewayFactory, recorder: Recorder
) -> None:
    # A delay far beyond the test's patience: were it applied, the answer would time out.
    kg = await keygate_factory(default_route(recorder.url), refusal_delay=9.0)
    assert edge_of(kg).busy == 0
    async with connect(kg.port) as conn:
        await conn.send(request("GET", "/x", BAD_KEY) * 2)
        for _ in range(2):
            assert (await conn.reply(within=3.0)).status == 401


async def test_edge_refusal_delay_off(
    keygate_factory: GatewayFactory, holding: Recorder
) -> None:
    kg = await keygate_factory(holding_route(holding), refusal_delay=0.0)
    token = await kg.make_key(["default"])
    async with connect(kg.port) as busy:
        await busy.send(request("GET", "/hold", token))
        await wait_for(lambda: holding.holding == 1, within=IO_TIMEOUT, what="the upstream")
        async with connect(kg.port) as conn:
            await conn.send(request("GET", "/x", BAD_KEY) * 2)
            for _ in range(2):
                assert (await conn.reply(within=3.0)).status == 401
        holding.release.set()
        assert (await busy.reply()).status == 200


# --- busy polling (server.busy_poll_us) ---------------------------------------------------------
def count_polls(edge: Edge, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of times the edge's loop polled instead of sleeping, as it goes."""
    calls = [0]
    poll = edge._poll

    def counted() -> None:
        calls[0] += 1
        poll()

    monkeypatch.setattr(edge, "_poll", counted)
    return calls


async def test_edge_busy_polls_after_writing_then_sleeps(
    keygate_factory: GatewayFactory, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After an answer the loop keeps polling (no sleep) for busy_poll_us, then
    stops on its own; a reload that sets 0 turns it off."""
    kg = await keygate_factory(default_route(recorder.url), server={"busy_poll_us": 10_000})
    edge = edge_of(kg)
    polls = count_polls(edge, monkeypatch)
    token = await kg.make_key(["default"])
    async with connect(kg.port) as conn:
        await conn.send(request("GET", "/x", token))
        assert (await conn.reply()).status == 200
    await wait_for(lambda: polls[0] > 0 and not edge.polling, within=2.0, what="a busy poll")
    edge.reconfigure(replace(kg.settings, server=replace(kg.settings.server, busy_poll_us=0)))
    before = polls[0]
    async with connect(kg.port) as conn:
        await conn.send(request("GET", "/x", token))
        assert (await conn.reply()).status == 200
    assert (polls[0], edge.polling) == (before, False)


async def test_edge_does_not_poll_by_default(
    keygate_factory: GatewayFactory, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    kg = await keygate_factory(default_route(recorder.url))
    edge = edge_of(kg)
    polls = count_polls(edge, monkeypatch)
    assert kg.settings.server.busy_poll_us == 0
    token = await kg.make_key(["default"])
    async with connect(kg.port) as conn:
        await conn.send(request("GET", "/x", token))
        assert (await conn.reply()).status == 200
    assert (polls[0], edge.polling) == (0, False)
