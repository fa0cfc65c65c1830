"""Upstream faults (OWASP API4, API8): a broken upstream costs a clear error, never a leak."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from keygate.config.settings import Route
from tests.support.gateway import Rig, RigFactory
from tests.support.polling import wait_for
from tests.support.raw import Raw, bearer, free_port, http
from tests.support.raw_upstreams import Canned, raw_server
from tests.support.upstreams import GZIP_BODY, MIB, REDIRECT, Recorder


async def test_upstream_refused_is_502(rig_factory: RigFactory) -> None:
    route = Route(name="down", prefix="/", upstream=f"http://127.0.0.1:{free_port()}")
    rig = await rig_factory(routes=(route,))
    reply = await rig.exchange(http("GET", "/x", [bearer(await rig.key())]))
    assert reply.status == 502 and reply.code == "upstream_unavailable"


async def test_upstream_timeout_is_504_and_other_routes_stay_responsive(
    rig_factory: RigFactory, recorder: Recorder
) -> None:
    routes = (
        Route(name="slow", prefix="/slow", upstream=recorder.url, strip_prefix=True, timeout=0.5),
        Route(name="default", prefix="/", upstream=recorder.url),
    )
    rig = await rig_factory(routes=routes)
    token = await rig.key()
    conn = await rig.raw()
    try:
        start = time.monotonic()
        await conn.send(http("GET", "/slow/_up/hold", [bearer(token)]))
        await wait_for(lambda: recorder.holding == 1, what="upstream holding")
        fast = await rig.exchange(http("GET", "/fast", [bearer(token)]), within=0.4)
        assert fast.status == 200
        reply = await conn.reply(within=3.0)
        assert reply.status == 504 and reply.code == "upstream_timeout"
        assert time.monotonic() - start < 2.0
    finally:
        await conn.close()
    # The held upstream request was given up, not left behind.
    await wait_for(lambda: recorder.holding == 0, what="upstream request dropped")


@pytest.mark.parametrize("framing", ["length", "chunked"])
async def test_upstream_closing_mid_body_aborts_the_client_response(
    rig: Rig, token: str, framing: str
) -> None:
    conn = await rig.raw()
    try:
        await conn.send(http("GET", f"/_up/cut/{framing}", [bearer(token)]))
        reply = await conn.reply(within=5.0)
    finally:
        await conn.close()
    assert reply.status == 200  # the head was already relayed
    assert not reply.complete, "a cut upstream body must not look complete"
    assert len(reply.body) < 4 * MIB


RawUpstream = Callable[[bytes], Awaitable[str]]


@pytest.fixture
async def raw_upstream() -> AsyncIterator[RawUpstream]:
    """``make(reply)``: the URL of an upstream answering every request with ``reply``,
    then closing."""
    async with contextlib.AsyncExitStack() as servers:

        async def make(reply: bytes) -> str:
            return (await servers.enter_async_context(raw_server(Canned.always(reply)))).url

        yield make


MALFORMED_REPLIES = {
    "nothing": b"",
    "garbage": b"garbage\r\n\r\n",
    "status_not_number": b"HTTP/1.1 abc OK\r\nContent-Length: 0\r\n\r\n",
    "status_four_digits": b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n",
    "bad_version": b"HTTP/9 200 OK\r\nContent-Length: 0\r\n\r\n",
    "duplicate_cl": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    "cl_and_te": (
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\n"
    ),
    "nul_in_header": b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 0\r\n\r\n",
    "space_before_colon": b"HTTP/1.1 200 OK\r\nX-A : b\r\nContent-Length: 0\r\n\r\n",
    "obs_fold": b"HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 0\r\n\r\n",
    "header_without_colon": b"HTTP/1.1 200 OK\r\nX-A\r\nContent-Length: 0\r\n\r\n",
    "head_cut": b"HTTP/1.1 200 OK\r\nContent-Le",
    "too_many_headers": b"HTTP/1.1 200 OK\r\n" + b"X-A: b\r\n" * 300 + b"Content-Length: 0\r\n\r\n",
}


HUGE_HEADER = pytest.param(
    b"HTTP/1.1 200 OK\r\nX-A: " + b"a" * 70000 + b"\r\n\r\n",
    id="huge_header",
)


BOGUS_101 = pytest.param(
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
    id="bogus_101",
)


@pytest.mark.parametrize(
    "reply",
    [*(pytest.param(v, id=k) for k, v in MALFORMED_REPLIES.items()), HUGE_HEADER, BOGUS_101],
)
async def test_upstream_malformed_response_is_502(
    rig_factory: RigFactory, raw_upstream: RawUpstream, reply: bytes
) -> None:
    url = await raw_upstream(reply)
    rig = await rig_factory(routes=(Route(name="bad", prefix="/", upstream=url),))
    got = await rig.exchange(http("GET", "/x", [bearer(await rig.key())]))
    assert got.status == 502, (got.status, got.body[:200])
    assert got.code == "upstream_unavailable"


async def test_upstream_redirect_is_passed_through_not_followed(rig: Rig, token: str) -> None:
    reply = await rig.exchange(http("GET", "/_up/redirect", [bearer(token)]))
    assert reply.status == 302
    assert reply.header("Location") == REDIRECT
    assert rig.up.paths() == ["/_up/redirect"]


@pytest.mark.parametrize("accept", [None, "gzip", "identity"])
async def test_upstream_gzip_is_passed_through_byte_for_byte(
    rig: Rig, token: str, accept: str | None
) -> None:
    headers = [bearer(token)] + ([("Accept-Encoding", accept)] if accept else [])
    reply = await rig.exchange(http("GET", "/_up/gzip", headers))
    assert reply.status == 200
    assert reply.header("Content-Encoding") == "gzip"
    assert reply.body == GZIP_BODY
    assert reply.header("Content-Length") == str(len(GZIP_BODY))
    # The gateway adds no Accept-Encoding of its own.
    assert rig.up.last().values("Accept-Encoding") == ([accept] if accept else [])


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_upstream_client_disconnects_release_upstream_connections(
    rig: Rig, token: str
) -> None:
    rounds, batch = 10, 100  # 1,000 abandoned requests in all
    warm = await rig.exchange(http("GET", "/warm", [bearer(token)]))
    assert warm.status == 200
    await wait_for(lambda: rig.up.open_connections() <= 1, what="warm-up settled")
    fds = open_fds()
    request = http("GET", "/_up/hold", [bearer(token)])
    for _ in range(rounds):
        conns = await asyncio.gather(*(Raw.open(rig.port) for _ in range(batch)))
        await asyncio.gather(*(c.send(request) for c in conns))
        await wait_for(lambda: rig.up.holding == batch, within=10.0, what="batch held upstream")
        for conn in conns:
            conn.abort()
        await wait_for(lambda: rig.up.holding == 0, within=10.0, what="upstream handlers ended")
    await wait_for(lambda: rig.up.open_connections() == 0, within=5.0, what="upstream conns")
    assert rig.gw.gates["default"].in_flight == 0
    assert len([s for s in rig.up.seen if s.path == "/_up/hold"]) == rounds * batch
    # Nothing accumulates in this process either (gateway, upstream and clients).
    await wait_for(lambda: open_fds() <= fds + 5, within=5.0, what="file descriptors released")
    # And the gateway still works.
    assert (await rig.exchange(http("GET", "/after", [bearer(token)]))).status == 200


async def test_upstream_client_disconnect_mid_download_stops_the_stream(
    rig: Rig, token: str
) -> None:
    conn = await rig.raw()
    await conn.send(http("GET", "/_up/big/1000", [bearer(token)]))
    await conn.reader.readexactly(MIB)  # the stream is flowing
    conn.abort()
    await wait_for(lambda: rig.up.open_connections() == 0, within=5.0, what="upstream closed")
    assert rig.gw.gates["default"].in_flight == 0


@pytest.mark.parametrize(
    "interim",
    [b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n"],
    ids=["100", "103"],
)
async def test_upstream_interim_responses_do_not_replace_the_final_one(
    rig_factory: RigFactory, raw_upstream: RawUpstream, interim: bytes
) -> None:
    url = await raw_upstream(interim + b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    rig = await rig_factory(routes=(Route(name="hints", prefix="/", upstream=url),))
    reply = await rig.exchange(http("GET", "/x", [bearer(await rig.key())]))
    assert reply.status == 200 and reply.body == b"ok"
