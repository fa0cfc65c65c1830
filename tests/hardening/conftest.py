"""The adversarial rig: hostile clients and faulty upstreams on both sides of a real gateway.

- :class:`Recorder` is a real aiohttp upstream that keeps every request it got
  (method, raw target, headers, body) and can hold, stream, cut or redirect.
- :func:`rig_factory` starts the real keygate app on a real port, with the
  same runner defaults as ``keygate serve`` (no test-only handler options), in
  front of a recorder.
- :class:`Raw` talks to it over a plain socket, byte for byte, for framing.
- Every log line of every test (aiohttp's loggers and keygate's at DEBUG) is
  captured; a test fails at teardown if one carries a credential it used.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import inspect
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import hdrs, web
from aiohttp.test_utils import TestClient, TestServer
from keygate.config.settings import Route, Settings
from keygate.gateway.http.app import build_app
from keygate.gateway.http.server import KeygateRunner
from keygate.gateway.service import ServiceContext
from keygate.gateway.service.bootstrap import create_first_admin
from keygate.gateway.state import gateway_key

from tests.conftest import Keygate, KeygateTestServer, make_settings

MIB = 1 << 20
BLOCK = bytes(range(256)) * 4096  # 1 MiB, built once

# --- secrets and the log capture ------------------------------------------------

# Every credential a test presented (tokens, Authorization values, sentinels).
SECRETS: set[str] = set()
# Anything shaped like a keygate token, valid or not, must never be logged.
TOKEN_SHAPE = re.compile(r"[A-Za-z0-9]{1,16}_[0-9a-z]{12}_[0-9A-Za-z]{38}")
CAPTURED_LOGGERS = ("aiohttp", "keygate", "gateway", "admin", "config", "asyncio")


def secret(value: str) -> str:
    """Register ``value`` as something no log line may contain; return it."""
    if len(value) >= 8:
        SECRETS.add(value)
    return value


class LineCapture(logging.Handler):
    """Keeps every formatted record, exception text included."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record))
        except Exception:  # a record that cannot be formatted is still a line
            self.lines.append(f"{record.name} {record.msg!r} {record.args!r}")


def leaks(lines: Iterable[str]) -> list[str]:
    found = []
    for line in lines:
        if TOKEN_SHAPE.search(line) or any(s in line for s in SECRETS):
            found.append(line[:300])
    return found


@pytest.fixture(scope="session")
def log_capture() -> Iterator[LineCapture]:
    """One handler on the root logger for the whole session; the loggers at DEBUG."""
    handler = LineCapture()
    root = logging.getLogger()
    root.addHandler(handler)
    saved = {name: logging.getLogger(name).level for name in CAPTURED_LOGGERS}
    for name in CAPTURED_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG)
    yield handler
    root.removeHandler(handler)
    for name, level in saved.items():
        logging.getLogger(name).setLevel(level)


@pytest.fixture(autouse=True)
def no_secret_in_logs(log_capture: LineCapture) -> Iterator[None]:
    start = len(log_capture.lines)
    yield
    bad = leaks(log_capture.lines[start:])
    assert not bad, f"credentials in log lines: {bad[:5]}"


# --- polling ----------------------------------------------------------------------


async def wait_for(
    predicate: Callable[[], Any], *, within: float = 3.0, what: str = "condition"
) -> float:
    """Poll ``predicate`` (sync or async) every 10 ms until truthy; return the seconds waited."""
    start = time.monotonic()
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return time.monotonic() - start
        if time.monotonic() - start >= within:
            raise AssertionError(f"{what} not reached within {within} s")
        await asyncio.sleep(0.01)


# --- the recording upstream -------------------------------------------------------


@dataclass
class Seen:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body_len: int | None = None  # None until (unless) the whole body arrived
    body_sha256: str | None = None

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]

    @property
    def query(self) -> str:
        return self.target.partition("?")[2]

    def values(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


@dataclass
class Recorder:
    """What the upstream got, and the levers to make it misbehave."""

    server: TestServer | None = None
    seen: list[Seen] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    holding: int = 0
    broken_bodies: int = 0
    ws_closes: list[int | None] = field(default_factory=list)
    ws_handlers: int = 0

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("/")).rstrip("/")

    def open_connections(self) -> int:
        assert self.server is not None and self.server.runner is not None
        server = self.server.runner.server
        assert server is not None
        return len(server.connections)

    def paths(self) -> list[str]:
        return [s.path for s in self.seen]

    def last(self) -> Seen:
        assert self.seen, "the upstream received nothing"
        return self.seen[-1]


def recorder_app(rec: Recorder) -> web.Application:
    @web.middleware
    async def record(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        rec.seen.append(Seen(request.method, request.raw_path, list(request.headers.items())))
        return await handler(request)

    async def echo(request: web.Request) -> web.Response:
        seen = rec.seen[-1]
        digest, size = hashlib.sha256(), 0
        try:
            async for chunk in request.content.iter_any():
                digest.update(chunk)
                size += len(chunk)
        except BaseException:
            rec.broken_bodies += 1
            raise
        seen.body_len, seen.body_sha256 = size, digest.hexdigest()
        return web.json_response(
            {"path": seen.path, "query": seen.query, "headers": seen.headers, "body_len": size},
            headers={"X-Upstream": "recorder"},
        )

    async def hold(request: web.Request) -> web.Response:
        rec.holding += 1
        try:
            await asyncio.wait_for(rec.release.wait(), 30)
        finally:
            rec.holding -= 1
        return web.Response(text="released")

    async def big(request: web.Request) -> web.StreamResponse:
        mib = int(request.match_info["mib"])
        response = web.StreamResponse()
        response.content_length = mib * MIB
        await response.prepare(request)
        for _ in range(mib):
            await response.write(BLOCK)
        await response.write_eof()
        return response

    async def cut(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        if request.match_info["framing"] == "length":
            response.content_length = 4 * MIB
        await response.prepare(request)
        await response.write(BLOCK[:65536])
        assert request.transport is not None
        request.transport.abort()
        return response

    async def redirect(request: web.Request) -> web.Response:
        location = "http://elsewhere.invalid/landing?next=%2F_keygate%2F&x=1"
        return web.Response(status=302, headers={hdrs.LOCATION: location})

    async def gzipped(request: web.Request) -> web.Response:
        return web.Response(
            body=GZIP_BODY,
            headers={hdrs.CONTENT_ENCODING: "gzip", hdrs.CONTENT_TYPE: "text/plain"},
        )

    async def hop(request: web.Request) -> web.Response:
        response = web.Response(text="ok")
        response.headers.add(hdrs.CONNECTION, "X-Hop-Secret, x-other-hop")
        response.headers.add("X-Hop-Secret", "1")
        response.headers.add("X-Other-Hop", "2")
        response.headers.add(hdrs.KEEP_ALIVE, "timeout=5")
        response.headers.add(hdrs.PROXY_AUTHENTICATE, 'Basic realm="x"')
        response.headers.add(hdrs.TRAILER, "X-Checksum")
        response.headers.add(hdrs.UPGRADE, "h2c")
        response.headers.add(hdrs.SET_COOKIE, "a=1; Path=/")
        response.headers.add(hdrs.SET_COOKIE, "b=2; HttpOnly")
        response.headers.add(hdrs.SET_COOKIE, "a=3; Path=/x")
        response.headers.add("X-Kept", "yes")
        return response

    async def ws(request: web.Request) -> web.WebSocketResponse:
        rec.ws_handlers += 1
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        async for msg in socket:
            if msg.type is aiohttp.WSMsgType.TEXT and msg.data == "big":
                with contextlib.suppress(ConnectionError):
                    await socket.send_bytes(b"x" * (4 * MIB + 1))
            elif msg.type is aiohttp.WSMsgType.TEXT and msg.data.startswith("close:"):
                await socket.close(code=int(msg.data[6:]), message=b"upstream bye")
            elif msg.type is aiohttp.WSMsgType.TEXT:
                await socket.send_str("echo:" + msg.data)
            elif msg.type is aiohttp.WSMsgType.BINARY:
                await socket.send_bytes(msg.data[::-1])
        rec.ws_closes.append(socket.close_code)
        return socket

    app = web.Application(middlewares=[record])
    app.router.add_get("/_up/hold", hold)
    app.router.add_get("/_up/big/{mib}", big)
    app.router.add_get("/_up/cut/{framing}", cut)
    app.router.add_get("/_up/redirect", redirect)
    app.router.add_get("/_up/gzip", gzipped)
    app.router.add_get("/_up/hop", hop)
    app.router.add_get("/_up/ws", ws)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


# Fixed bytes (mtime=0), checked byte for byte at the client.
GZIP_BODY = gzip.compress(b"hello " * 100, mtime=0)


@pytest.fixture
async def recorder(
    aiohttp_server: Callable[..., Awaitable[TestServer]],
) -> AsyncIterator[Recorder]:
    rec = Recorder()
    # No access log upstream: every captured aiohttp.access line is keygate's.
    # Bodies as they arrived (no decoding): what the upstream was sent, byte for byte.
    rec.server = await aiohttp_server(
        recorder_app(rec), host="127.0.0.1", access_log=None, auto_decompress=False
    )
    yield rec
    rec.release.set()


# --- the gateway ------------------------------------------------------------------


class ServeLikeServer(KeygateTestServer):
    """The real app on a real port with ``keygate serve``'s runner defaults.

    aiohttp's TestServer forces ``handler_cancellation=True``; keygate serve
    passes no such option, so whatever KeygateRunner does by default is what
    production does, and what is tested here.
    """

    async def _make_runner(self, **kwargs: Any) -> KeygateRunner:
        kwargs.pop("handler_cancellation", None)
        return KeygateRunner(self.app, **kwargs)


SERVER_DEFAULTS: Mapping[str, Any] = {"header_timeout": 1.0, "body_idle_timeout": 1.0}


@dataclass
class Rig:
    kg: Keygate
    up: Recorder

    @property
    def gw(self) -> Any:
        return self.kg.gw

    @property
    def port(self) -> int:
        port = self.kg.client.port
        assert port is not None
        return port

    @property
    def settings(self) -> Settings:
        return self.kg.settings

    @property
    def client(self) -> TestClient:
        return self.kg.client

    async def key(self, groups: Iterable[str] = ("default",), **extra: Any) -> str:
        return secret(await self.kg.make_key(list(groups), **extra))

    async def raw(self) -> Raw:
        return await Raw.open(self.port)

    async def exchange(self, request: bytes, *, within: float = 5.0) -> Reply:
        """One request on a fresh connection; the first final reply."""
        conn = await self.raw()
        try:
            await conn.send(request)
            return await conn.reply(within=within)
        finally:
            await conn.close()


RigFactory = Callable[..., Awaitable[Rig]]


@pytest.fixture
async def rig_factory(
    tmp_path: Path,
    aiohttp_client: Callable[..., Awaitable[TestClient]],
    recorder: Recorder,
) -> RigFactory:
    made = 0

    async def make(
        *,
        routes: tuple[Route, ...] | None = None,
        server: Mapping[str, Any] | None = None,
        up: Recorder | None = None,
        **auth: Any,
    ) -> Rig:
        nonlocal made
        made += 1
        upstream = up or recorder
        where = tmp_path / f"gw{made}"
        where.mkdir()
        if routes is None:
            routes = (Route(name="default", prefix="/", upstream=upstream.url),)
        settings = make_settings(where, routes, **auth)
        settings = replace(
            settings, server=replace(settings.server, **{**SERVER_DEFAULTS, **(server or {})})
        )
        client = await aiohttp_client(ServeLikeServer(build_app(settings)))
        gw = client.server.app[gateway_key]
        issued = await create_first_admin(ServiceContext(gw.store, settings.auth))
        secret(issued.token)
        return Rig(Keygate(client, settings, issued.token), upstream)

    return make


@pytest.fixture
async def rig(rig_factory: RigFactory) -> Rig:
    """The gateway with one route ``default`` at ``/`` to the recorder."""
    return await rig_factory()


@pytest.fixture
async def token(rig: Rig) -> str:
    """A valid key of the built-in group ``default`` (every route, every method)."""
    return await rig.key()


# --- raw HTTP ---------------------------------------------------------------------


def http(
    method: str,
    target: str,
    headers: Iterable[tuple[str, str]] | Mapping[str, str] = (),
    body: bytes = b"",
    *,
    host: str | None = "keygate.test",
    version: str = "HTTP/1.1",
) -> bytes:
    """A request exactly as written (latin-1), no normalisation of anything."""
    items = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
    lines = [f"{method} {target} {version}"]
    if host is not None:
        lines.append(f"Host: {host}")
    lines += [f"{k}: {v}" for k, v in items]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def bearer(token: str) -> tuple[str, str]:
    return ("Authorization", f"Bearer {token}")


@dataclass
class Reply:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    # False when the connection ended before the framing said the body ends.
    complete: bool = True

    def header(self, name: str) -> str | None:
        values = self.values(name)
        return values[0] if values else None

    def values(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def code(self) -> str:
        return str(self.json()["error"]["code"])


async def read_reply(reader: asyncio.StreamReader, *, method: str = "GET") -> Reply:
    """Read one response; raises IncompleteReadError when the connection ends first."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    _, status, *reason = lines[0].split(" ", 2)
    headers = []
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers.append((name, value.strip()))
    reply = Reply(int(status), reason[0] if reason else "", headers, b"")
    code = reply.status
    if code < 200 or code in (204, 304) or method == "HEAD":
        return reply
    te = (reply.header("Transfer-Encoding") or "").lower()
    length = reply.header("Content-Length")
    body = bytearray()
    try:
        if te == "chunked":
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")
                    break
                body += await reader.readexactly(size)
                await reader.readexactly(2)
        elif length is not None:
            body += await reader.readexactly(int(length))
        else:
            body += await reader.read(-1)
    except asyncio.IncompleteReadError as exc:
        body += exc.partial
        reply.complete = False
    except (ConnectionError, ValueError):
        reply.complete = False
    reply.body = bytes(body)
    return reply


class Raw:
    """One client connection, bytes in and out."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> Raw:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def reply(
        self, *, within: float = 5.0, method: str = "GET", interim: bool = False
    ) -> Reply:
        """The next response; 1xx are skipped unless ``interim``."""
        async with asyncio.timeout(within):
            while True:
                reply = await read_reply(self.reader, method=method)
                if interim or reply.status >= 200:
                    return reply

    async def closed_within(self, seconds: float) -> bool:
        """True when the server ends the connection within ``seconds`` (data is discarded)."""
        try:
            async with asyncio.timeout(seconds):
                while await self.reader.read(65536):
                    pass
        except TimeoutError:
            return False
        except ConnectionError:
            return True
        return True

    def abort(self) -> None:
        self.writer.transport.abort()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()
