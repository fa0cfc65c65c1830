"""The recording upstream: a real aiohttp server that answers what it received.

Every request is kept as a :class:`Seen` (method, raw target, header pairs in
order, body length and SHA-256 once the whole body arrived) before any handler
runs, so a test asserts on what reached the upstream as well as on what the
client got. Any path outside ``/_up/`` is echoed as JSON (httpx's echo app,
aiohttp style); paths under ``/_up/`` are levers that make the upstream
misbehave or answer something precise:

=========================  ========================================================
``/_up/hold…``             wait for ``rec.release`` (30 s at most), then ``late``;
                           ``rec.holding`` counts the waiting, ``rec.dropped`` the
                           ones whose client (keygate) hung up
``/_up/big[/{mib}]``       ``mib`` MiB (1) of :data:`BLOCK`, streamed with a length
                           (``?chunked``: chunked); ``rec.streams_finished`` counts
``/_up/cut/{framing}``     64 KiB of a 4 MiB ``length`` or ``chunked`` body, then RST
``/_up/trickle``           64 KiB of 128 KiB, the rest after ``rec.release``
``/_up/drip…``             ``****`` (Content-Length 4) as httpbin's ``/drip``: the head
                           and ``*`` (none with ``?first=0``), the rest after
                           ``rec.release`` or ``?wait=`` seconds (30)
``/_up/endless``           writes until the client goes (``rec.endless_stopped``)
``/_up/{code}``            that status, ``ETag: "v1"``, ``X-Kept: yes``
``/_up/small``             ``hello``; ``/_up/empty``: no body; ``/_up/json``: the query
``/_up/chunked``           three chunks; ``/_up/head``: text with an ETag
``/_up/reqid``             its own ``X-Request-Id``; ``/_up/cookies``: two Set-Cookie
``/_up/redirect``          302 to :data:`REDIRECT`; ``/_up/gzip``: :data:`GZIP_BODY`
``/_up/hop``               hop-by-hop and repeated fields in the answer
``/_up/ws``                WebSocket echo (``echo:`` + text, bytes reversed, ``big``,
                           ``close:N``); ``/_up/ws-refuse``: 403 to the handshake
``/_up/…`` (other)         ``METHOD target`` as text (nothing request-specific)
=========================  ========================================================
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import hdrs, web
from aiohttp.test_utils import TestServer

MIB = 1 << 20
BLOCK = random.Random(0).randbytes(MIB)  # 1 MiB, built once; what /_up/big streams
GZIP_BODY = gzip.compress(b"hello " * 100, mtime=0)  # fixed bytes, compared byte for byte
REDIRECT = "http://elsewhere.invalid/landing?next=%2F_keygate%2F&x=1"  # raw, never normalised

ServerFactory = Callable[..., Awaitable[TestServer]]


@dataclass
class Seen:
    """One request as an upstream received it."""

    method: str
    target: str  # the raw request target: path and query as sent
    headers: list[tuple[str, str]]
    upstream: str = ""
    body_len: int | None = None  # None until (unless) the whole body arrived
    body_sha256: str | None = None
    peer: int | None = None  # the client port: which (pooled) connection carried it
    body: bytes | None = None  # the bytes themselves: raw upstreams only

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]

    @property
    def query(self) -> str:
        return self.target.partition("?")[2]

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    def values(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def echo(self) -> dict[str, Any]:
        """What the echo answers: this record as JSON."""
        return {
            "upstream": self.upstream,
            "method": self.method,
            "raw_target": self.target,
            "path": self.path,
            "query": self.query,
            "headers": [[k, v] for k, v in self.headers],
            "body_len": self.body_len,
            "body_sha256": self.body_sha256,
        }


@dataclass
class Recorder:
    """What the upstream got, and the levers to make it misbehave."""

    name: str = "recorder"
    seen: list[Seen] = field(default_factory=list)
    server: TestServer | None = None
    release: asyncio.Event = field(default_factory=asyncio.Event)
    holding: int = 0
    dropped: int = 0
    broken_bodies: int = 0  # bodies that never completed (cut, reset, cancelled)
    streams_finished: int = 0
    endless_stopped: int = 0
    ws_handlers: int = 0
    ws_closes: list[int | None] = field(default_factory=list)

    @property
    def url(self) -> str:
        """The base URL, without a trailing slash."""
        assert self.server is not None, "the recorder is not started"
        return str(self.server.make_url("/")).rstrip("/")

    def at(self, path: str) -> str:
        """The URL of ``path`` here: a route upstream with a base path (``/_up/hold``)."""
        return self.url + path

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

    async def start(self, aiohttp_server: ServerFactory | None = None) -> Recorder:
        """Serve on 127.0.0.1 through pytest-aiohttp's ``aiohttp_server`` (closed with the
        test), or, for a fixture wider than a test, on a server :meth:`close` stops."""
        app = recorder_app(self)
        # No access log: every aiohttp.access line a test captures is keygate's.
        # No decoding: the body as it arrived is what the upstream was sent.
        options: dict[str, Any] = {"access_log": None, "auto_decompress": False}
        if aiohttp_server is not None:
            self.server = await aiohttp_server(app, host="127.0.0.1", **options)
        else:
            self.server = TestServer(app, host="127.0.0.1")
            await self.server.start_server(**options)
        return self

    async def close(self) -> None:
        self.release.set()
        if self.server is not None:
            await self.server.close()


# The recorder_factory fixture: a started recorder of the given name.
RecorderFactory = Callable[[str], Awaitable[Recorder]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SEEN = web.RequestKey("seen", Seen)


def recorder_app(rec: Recorder) -> web.Application:
    @web.middleware
    async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        seen = Seen(
            request.method,
            request.raw_path,
            list(request.headers.items()),
            rec.name,
            peer=peer[1] if peer else None,
        )
        rec.seen.append(seen)
        request[SEEN] = seen
        digest, size = hashlib.sha256(), 0
        if request.body_exists:
            try:
                async for chunk in request.content.iter_any():
                    digest.update(chunk)
                    size += len(chunk)
            except BaseException:  # cancelled or reset: the body never completed
                rec.broken_bodies += 1
                raise
        seen.body_len, seen.body_sha256 = size, digest.hexdigest()
        return await handler(request)

    async def echo(request: web.Request) -> web.Response:
        return web.json_response(request[SEEN].echo(), headers={"X-Upstream": rec.name})

    async def hold(request: web.Request) -> web.Response:
        rec.holding += 1
        try:
            await asyncio.wait_for(rec.release.wait(), 30)
        except asyncio.CancelledError:
            rec.dropped += 1
            raise
        finally:
            rec.holding -= 1
        return web.Response(text="late")

    async def big(request: web.Request) -> web.StreamResponse:
        mib = int(request.match_info.get("mib", "1"))
        response = web.StreamResponse()
        if "chunked" in request.query:
            response.enable_chunked_encoding()
        else:
            response.content_length = mib * MIB
        await response.prepare(request)
        if request.method != hdrs.METH_HEAD:
            for _ in range(mib):
                await response.write(BLOCK)
        await response.write_eof()
        rec.streams_finished += 1
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

    async def trickle(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = 2 * 65536
        await response.prepare(request)
        await response.write(BLOCK[:65536])
        await asyncio.wait_for(rec.release.wait(), 30)
        await response.write(BLOCK[65536 : 2 * 65536])
        return response

    async def drip(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = 4
        await response.prepare(request)  # a StreamResponse sends its head at once
        first = request.query.get("first") != "0"
        if first:
            await response.write(b"*")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(rec.release.wait(), float(request.query.get("wait", 30)))
        await response.write(b"***" if first else b"****")
        return response

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        try:
            while True:
                await response.write(BLOCK[:65536])
        except ConnectionError:
            return response
        finally:  # a write failed, or (test servers) the handler was cancelled
            rec.endless_stopped += 1

    async def status(request: web.Request) -> web.Response:
        code = int(request.match_info["code"])
        text = None if code in (204, 304) else f"status {code}"
        return web.Response(status=code, text=text, headers={hdrs.ETAG: '"v1"', "X-Kept": "yes"})

    async def small(request: web.Request) -> web.Response:
        return web.Response(text="hello", headers={"X-Upstream": rec.name})

    async def empty(request: web.Request) -> web.Response:
        return web.Response(status=200, body=b"")

    async def json_(request: web.Request) -> web.Response:
        return web.json_response({"query": request.query_string})

    async def chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={hdrs.CONTENT_TYPE: "text/plain"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for part in (b"first,", b"second,", b"third"):
            await response.write(part)
        await response.write_eof()
        return response

    async def head_able(request: web.Request) -> web.Response:
        return web.Response(text="head-able resource", headers={hdrs.ETAG: '"h"'})

    async def request_id(request: web.Request) -> web.Response:
        return web.Response(text="id", headers={hdrs.X_REQUEST_ID: "chosen-by-upstream"})

    async def cookies(request: web.Request) -> web.Response:
        response = web.Response(text="ok")
        response.headers.add(hdrs.SET_COOKIE, "a=1; Path=/")
        response.headers.add(hdrs.SET_COOKIE, "b=2; HttpOnly")
        return response

    async def redirect(request: web.Request) -> web.Response:
        # Not HTTPFound: it would normalise the URL; the raw value is the point.
        return web.Response(status=302, headers={hdrs.LOCATION: REDIRECT})

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
        socket = web.WebSocketResponse(protocols=("chat",))
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

    async def ws_refuse(request: web.Request) -> web.Response:
        return web.Response(status=403, text="no sockets here")

    async def canned(request: web.Request) -> web.Response:
        return web.Response(text=f"{request.method} {request.raw_path}")

    app = web.Application(middlewares=[record])
    levers: list[tuple[str, Handler]] = [
        ("/_up/hold{tail:.*}", hold),
        ("/_up/big", big),
        ("/_up/big/{mib:[0-9]+}", big),
        ("/_up/cut/{framing}", cut),
        ("/_up/trickle", trickle),
        ("/_up/drip{tail:.*}", drip),
        ("/_up/endless", endless),
        ("/_up/{code:[1-5][0-9][0-9]}", status),
        ("/_up/small", small),
        ("/_up/empty", empty),
        ("/_up/json", json_),
        ("/_up/chunked", chunked),
        ("/_up/head", head_able),
        ("/_up/reqid", request_id),
        ("/_up/cookies", cookies),
        ("/_up/redirect", redirect),
        ("/_up/gzip", gzipped),
        ("/_up/hop", hop),
        ("/_up/ws", ws),
        ("/_up/ws-refuse", ws_refuse),
        ("/_up/{tail:.*}", canned),
        ("/{tail:.*}", echo),
    ]
    for path, handler in levers:
        app.router.add_route("*", path, handler)
    return app


def header_values(echoed: dict[str, Any], name: str) -> list[str]:
    """The values of header ``name`` in an echo's JSON, in order."""
    return [v for k, v in echoed["headers"] if k.lower() == name.lower()]
