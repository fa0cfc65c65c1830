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
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import httptools
import pytest
from aiohttp import web
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from keygate.config.settings import Route
from keygate.gateway.http.app import build_app
from keygate.gateway.http.server import KeygateRunner

from tests.conftest import make_settings

TIMEOUT = 5.0


@dataclass
class Exchange:
    """Everything one upstream connection received, parsed strictly."""

    data: bytes = b""
    begun: int = 0
    completed: int = 0
    error: str | None = None
    target: bytes = b""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    closed: bool = False


class _Strict(asyncio.Protocol):
    """One upstream connection: parse everything, answer the first request, keep reading."""

    def __init__(self, seen: list[Exchange]) -> None:
        self.x = Exchange()
        seen.append(self.x)
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.x.data += data
        if self.x.error is not None:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.x.error = f"{type(exc).__name__}: {exc}"

    def connection_lost(self, exc: Exception | None) -> None:
        self.x.closed = True

    def on_message_begin(self) -> None:
        self.x.begun += 1

    def on_url(self, url: bytes) -> None:
        if self.x.begun == 1:
            self.x.target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.x.begun == 1:
            self.x.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        if self.x.begun == 1:
            self.x.body += body

    def on_message_complete(self) -> None:
        self.x.completed += 1
        if self.x.completed == 1 and self.transport is not None:
            # "Connection: close": the gateway drops this connection after the
            # answer, so anything it sent behind the request arrives before EOF.
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
            )


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

    def run(self, coro: object) -> object:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(TIMEOUT * 2)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp: Path = tmp_path_factory.mktemp("invariant")
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    seen: list[Exchange] = []
    runners: list[web.AppRunner] = []

    async def start() -> tuple[asyncio.Server, dict[str, int]]:
        upstream = await loop.create_server(lambda: _Strict(seen), "127.0.0.1", 0)
        url = f"http://127.0.0.1:{upstream.sockets[0].getsockname()[1]}"
        routes = (Route(name="open", prefix="/", upstream=url, public=True),)
        base = make_settings(tmp, routes)
        ports: dict[str, int] = {}
        for name, fast in (("edge", True), ("aiohttp", False)):
            settings = replace(base, server=replace(base.server, fast_path=fast, access_log=False))
            runner = KeygateRunner(build_app(settings), access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            runners.append(runner)
            server = site._server
            assert server is not None
            ports[name] = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return upstream, ports

    upstream, ports = asyncio.run_coroutine_threadsafe(start(), loop).result(30)
    try:
        yield World(loop, seen, ports)
    finally:

        async def stop() -> None:
            for runner in runners:
                await runner.cleanup()
            upstream.close()
            await upstream.wait_closed()

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


def _send(port: int, request: bytes, method: str) -> tuple[int, bytes]:
    """Send a request; the final answer's status and its head (the body is read
    by its framing, or to EOF)."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(request)
        stream = sock.makefile("rb")
        while True:
            head = b""
            while not head.endswith(b"\r\n\r\n"):
                line = stream.readline(65536)
                if not line:
                    return 0, head  # closed without (or in the middle of) an answer
                head += line
            status = int(head.split(b" ", 2)[1])
            if status >= 200:
                break
        lowered = head.lower()
        if method == "HEAD" or status in (204, 304):
            return status, head
        if b"transfer-encoding: chunked" in lowered:
            while (size := int(stream.readline().split(b";")[0], 16)) != 0:
                stream.read(size + 2)
            stream.readline()
        elif b"content-length:" in lowered:
            length = int(lowered.split(b"content-length:")[1].split(b"\r\n")[0])
            stream.read(length)
        else:
            stream.read()
        return status, head


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
    status, answer = _send(world.ports[case.front], case.raw(n), case.method)
    assert status, answer  # every request gets an answer

    async def settled() -> list[Exchange]:
        # The gateway has answered; what it forwarded for this case is on
        # connections opened since, each closed after its one answer.
        async with asyncio.timeout(TIMEOUT):
            while not all(x.closed for x in world.seen[before:]):
                await asyncio.sleep(0.005)
        return [x for x in world.seen[before:] if f"/case/{n} ".encode() in x.data[:200]]

    exchanges = world.run(settled())
    assert isinstance(exchanges, list)
    event(f"{case.front}: {'forwarded' if exchanges else f'answered {status}'}")
    if not exchanges:
        assert status != 200, answer[:300]  # answered 200 without asking the upstream?
        return
    assert len(exchanges) == 1, exchanges
    x = exchanges[0]
    assert x.error is None, (x.error, x.data)
    assert (x.begun, x.completed) == (1, 1), x.data  # one request, nothing behind it
    assert status == 200, answer[:300]
    declared = [v for k, v in x.headers if k.lower() == b"content-length"]
    coded = [v for k, v in x.headers if k.lower() == b"transfer-encoding"]
    assert not (declared and coded), x.headers
    if declared:
        assert declared == [str(len(x.body)).encode()]
    elif not coded:
        assert x.body == b""
    # The body the upstream got is the body the client sent (never less or more).
    sent = {
        "length": case.body,
        "chunked": case.body,
        "length-wrong": case.body[: max(0, len(case.body) - 3)],
    }.get(case.framing, b"")  # "none": what follows the head is the next request
    assert x.body == sent, (x.body, sent)
    names = {k.lower() for k, _ in x.headers}
    assert b"content_length" not in names and b"transfer_encoding" not in names
