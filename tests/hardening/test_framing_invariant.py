"""The framing invariant, as a property (docs/security.md, "The framing invariant").

For any request keygate forwards, a strict upstream that speaks raw sockets
parses exactly one request from the connection, whose body is exactly the
body the client sent and exactly as long as the upstream head declares, with
no byte after it. Hypothesis draws the request: methods, ``Connection``
tokens (framing, Host, keygate's own fields, hop-by-hop names, junk), framing
headers (none, a length, chunked, both, repeated, odd codings, ``_``
spellings), bodies that look like requests, and the front end (the edge or
aiohttp's server). Whatever the answer, nothing else may reach the upstream.

The gateways and the upstream run on an event loop in a thread of their own,
so hypothesis drives plain blocking sockets.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from keygate.config.settings import Route
from tests.support.gateway import Keygate, make_settings, start_keygate, started_client
from tests.support.polling import wait_for
from tests.support.raw import Reply, connect
from tests.support.raw_upstreams import Exchange, StrictUpstream
from tests.support.upstreams import Seen

TIMEOUT = 5.0
# "Connection: close": the gateway drops the upstream connection after the
# answer, so anything it sent behind the request arrives before EOF.
OK_CLOSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"


def answer_first(seen: Seen, exchange: Exchange) -> tuple[bytes, bool]:
    """Answer the first request of a connection; keep reading whatever follows it."""
    return (OK_CLOSE if exchange.completed == 1 else b""), False


class World:
    """The loop the servers run on, what the upstream saw, the gateways' ports."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, seen: list[Exchange], ports: dict[str, int]
    ) -> None:
        self.loop = loop
        self.seen = seen
        self.ports = ports

    def __repr__(self) -> str:  # hypothesis prints it with every failing example
        return f"World(ports={self.ports})"

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(TIMEOUT * 2)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp: Path = tmp_path_factory.mktemp("invariant")
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    upstream = StrictUpstream(answer_first)
    gateways: list[Keygate] = []
    start = functools.partial(started_client, access_log=None)

    async def begin() -> dict[str, int]:
        await upstream.start()
        routes = (Route(name="open", prefix="/", upstream=upstream.url, public=True),)
        base = make_settings(tmp, routes)
        ports: dict[str, int] = {}
        admin: str | None = None
        for name, fast in (("edge", True), ("aiohttp", False)):
            server = replace(base.server, fast_path=fast, access_log=False)
            kg = await start_keygate(
                replace(base, server=server), start, serve_like=True, admin_token=admin
            )
            admin = kg.admin_token
            gateways.append(kg)
            ports[name] = kg.port
        return ports

    ports = asyncio.run_coroutine_threadsafe(begin(), loop).result(30)
    try:
        yield World(loop, upstream.connections, ports)
    finally:

        async def stop() -> None:
            for kg in gateways:
                await kg.client.close()
            await upstream.close()

        asyncio.run_coroutine_threadsafe(stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


# --- the strategy -----------------------------------------------------------------------
TOKENS = st.sampled_from(
    [
        "close", "keep-alive", "Content-Length", "content-length", "CONTENT-LENGTH",
        "Transfer-Encoding", "transfer-encoding", "Host", "X-Forwarded-For",
        "X-Request-Id", "X-Keygate-User", "TE", "Upgrade", "Trailer", "Keep-Alive",
        "X-Custom", "", " ", "content-length ", "Content_Length",
    ]
)  # fmt: skip
SMUGGLE = [
    b"GET /admin HTTP/1.1\r\nHost: a\r\n\r\n",
    b"POST /admin HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nx=",
    b"0\r\n\r\nGET /admin HTTP/1.1\r\nHost: a\r\n\r\n",
]
BODIES = st.one_of(
    st.just(b""),
    st.sampled_from(SMUGGLE),
    st.binary(max_size=300),
    st.builds(lambda a, b: a + b, st.sampled_from(SMUGGLE), st.binary(max_size=50)),
)


@dataclass(frozen=True)
class Case:
    front: str
    method: str
    connection: tuple[str, ...]
    framing: str
    extra: tuple[tuple[str, str], ...]
    body: bytes
    chunks: tuple[int, ...]

    def raw(self, n: int) -> bytes:
        lines = [f"{self.method} /case/{n} HTTP/1.1", "Host: keygate.test"]
        lines += [f"Connection: {', '.join(self.connection)}"] if self.connection else []
        body = self.body
        if self.framing == "length":
            lines.append(f"Content-Length: {len(body)}")
        elif self.framing == "length-wrong":
            lines.append(f"Content-Length: {max(0, len(body) - 3)}")
        elif self.framing in ("chunked", "both"):
            lines.append("Transfer-Encoding: chunked")
            if self.framing == "both":
                lines.append(f"Content-Length: {len(body)}")
            body = _chunked(body, self.chunks)
        elif self.framing == "two-lengths":
            lines += [f"Content-Length: {len(body)}"] * 2
        elif self.framing == "gzip-chunked":
            lines.append("Transfer-Encoding: gzip, chunked")
            body = _chunked(body, self.chunks)
        lines += [f"{k}: {v}" for k, v in self.extra]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _chunked(body: bytes, sizes: tuple[int, ...]) -> bytes:
    out, i = b"", 0
    for size in sizes:
        if i >= len(body):
            break
        part = body[i : i + size]
        out += b"%x\r\n%s\r\n" % (len(part), part)
        i += size
    if i < len(body):
        out += b"%x\r\n%s\r\n" % (len(body) - i, body[i:])
    return out + b"0\r\n\r\n"


EXTRA_NAMES = [
    "Transfer_Encoding", "Content_Length", "X-Keygate-User", "TE", "Trailer", "Expect",
    "X-Forwarded-For",
]  # fmt: skip
CASES = st.builds(
    Case,
    front=st.sampled_from(["edge", "aiohttp"]),
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]),
    connection=st.lists(TOKENS, max_size=4).map(tuple),
    framing=st.sampled_from(
        ["none", "length", "chunked", "both", "two-lengths", "gzip-chunked", "length-wrong"]
    ),
    extra=st.lists(
        st.tuples(
            st.sampled_from(EXTRA_NAMES),
            st.sampled_from(["chunked", "0", "5", "admin", "trailers", "100-continue", "1.2.3.4"]),
        ),
        max_size=2,
    ).map(tuple),
    body=BODIES,
    chunks=st.lists(st.integers(1, 64), max_size=4).map(tuple),
)


async def _send(port: int, request: bytes, method: str) -> Reply | None:
    """Send a request; the final answer (its body read by its framing, or to EOF), or
    None when the connection ended without one."""
    async with connect(port) as conn:
        await conn.send(request)
        try:
            return await conn.reply(method=method, within=TIMEOUT)
        except (asyncio.IncompleteReadError, ConnectionError):
            return None


_counter = iter(range(1, 1 << 30))


@settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=CASES)
def test_a_forwarded_request_is_exactly_one_request_upstream(world: World, case: Case) -> None:
    n = next(_counter)
    before = len(world.seen)
    reply = world.run(_send(world.ports[case.front], case.raw(n), case.method))
    assert reply is not None  # every request gets an answer
    status, answer = reply.status, (reply.status_line, reply.headers)

    async def settled() -> list[Exchange]:
        # The gateway has answered; what it forwarded for this case is on
        # connections opened since, each closed after its one answer.
        await wait_for(
            lambda: all(x.closed for x in world.seen[before:]),
            within=TIMEOUT,
            every=0.005,
            what="the upstream connections to close",
        )
        return [x for x in world.seen[before:] if f"/case/{n} ".encode() in x.data[:200]]

    exchanges = world.run(settled())
    assert isinstance(exchanges, list)
    event(f"{case.front}: {'forwarded' if exchanges else f'answered {status}'}")
    if not exchanges:
        assert status != 200, answer  # answered 200 without asking the upstream?
        return
    assert len(exchanges) == 1, exchanges
    x = exchanges[0]
    assert x.error is None, (x.error, x.data)
    assert (x.begun, x.completed) == (1, 1), x.data  # one request, nothing behind it
    assert status == 200, answer
    first = x.requests[0]
    declared = first.values("Content-Length")
    coded = first.values("Transfer-Encoding")
    assert not (declared and coded), first.headers
    if declared:
        assert declared == [str(len(first.body or b""))]
    elif not coded:
        assert first.body == b""
    # The body the upstream got is the body the client sent (never less or more).
    sent = {
        "length": case.body,
        "chunked": case.body,
        "length-wrong": case.body[: max(0, len(case.body) - 3)],
    }.get(case.framing, b"")  # "none": what follows the head is the next request
    assert first.body == sent, (first.body, sent)
    names = {k.lower() for k, _ in first.headers}
    assert "content_length" not in names and "transfer_encoding" not in names
