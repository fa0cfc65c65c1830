"""Fixtures for the core gateway tests: a recording upstream, a counting store, raw HTTP.

The counting store is a real :class:`SQLiteStore` subclass that only counts
calls before doing the real work, so "no store query" can be asserted on the
store itself rather than on the verifier's own bookkeeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from keygate.config.loader import sqlite_path
from keygate.config.settings import Route
from keygate.gateway.http.app import build_app
from keygate.gateway.service import ServiceContext
from keygate.gateway.service.bootstrap import create_first_admin
from keygate.gateway.state import gateway_key
from keygate.gateway.store.records import AuthRecord, Change, KeyAuth
from keygate.gateway.store.sqlite.store import SQLiteStore

from tests.conftest import Keygate, KeygateTestServer, make_settings

POLL = 0.02


async def wait_for(
    predicate: Callable[[], Any], *, within: float = 2.0, what: str = "condition"
) -> float:
    """Poll ``predicate`` (sync or async) every 20 ms until truthy; return the seconds waited."""
    start = time.monotonic()
    deadline = start + within
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return time.monotonic() - start
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} not reached within {within} s")
        await asyncio.sleep(POLL)


# --- upstreams --------------------------------------------------------------
@dataclass
class Upstream:
    """A real aiohttp echo server that also keeps what it received."""

    name: str
    server: TestServer
    received: list[dict[str, Any]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return str(self.server.make_url("/"))


def recording_app(upstream_name: str, received: list[dict[str, Any]]) -> web.Application:
    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        raw_target = request.raw_path
        path, _, query = raw_target.partition("?")
        seen = {
            "upstream": upstream_name,
            "method": request.method,
            "raw_target": raw_target,
            "path": path,
            "query": query,
            "headers": [[k, v] for k, v in request.headers.items()],
            "body_len": len(body),
        }
        received.append(seen)
        return web.json_response(seen, headers={"X-Upstream": upstream_name})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


UpstreamFactory = Callable[[str], Awaitable[Upstream]]


@pytest.fixture
async def upstream_factory(
    aiohttp_server: Callable[..., Awaitable[TestServer]],
) -> UpstreamFactory:
    async def factory(name: str) -> Upstream:
        received: list[dict[str, Any]] = []
        server = await aiohttp_server(recording_app(name, received), host="127.0.0.1")
        return Upstream(name, server, received)

    return factory


@dataclass
class SlowUpstream:
    server: TestServer
    arrived: asyncio.Event

    @property
    def url(self) -> str:
        return str(self.server.make_url("/"))


@pytest.fixture
async def slow_upstream(
    aiohttp_server: Callable[..., Awaitable[TestServer]],
) -> AsyncIterator[SlowUpstream]:
    """An upstream that answers only when the test ends (or after 10 s)."""
    release = asyncio.Event()
    arrived = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        arrived.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(release.wait(), 10)
        return web.Response(text="late")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", hang)
    server = await aiohttp_server(app, host="127.0.0.1")
    yield SlowUpstream(server, arrived)
    release.set()


def closed_port() -> int:
    """A localhost port nobody listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- a store that counts ------------------------------------------------------
class CountingStore(SQLiteStore):
    """The real SQLite store, counting the calls the tests care about."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(path)
        self.auth_lookups = 0  # verification queries: by digest or by key id
        self.touch_batches: list[dict[str, float]] = []
        self.changes_reads = 0
        self.version_probes = 0

    async def auth_lookup(self, digest: bytes) -> AuthRecord | None:
        self.auth_lookups += 1
        return await super().auth_lookup(digest)

    async def auth_lookup_key(self, key_id: str, digest: bytes) -> KeyAuth:
        # The same verification query, by key id: counted with auth_lookup.
        self.auth_lookups += 1
        return await super().auth_lookup_key(key_id, digest)

    async def touch_last_used(self, stamps: Mapping[str, float]) -> None:
        self.touch_batches.append(dict(stamps))
        await super().touch_last_used(stamps)

    async def changes_since(self, seq: int) -> list[Change]:
        self.changes_reads += 1
        return await super().changes_since(seq)

    async def data_version(self) -> int:
        self.version_probes += 1
        return await super().data_version()


async def settle(st: CountingStore) -> None:
    """Wait until the app's change watcher has applied every notice written so far.

    The watcher also sees this process's own notices and evicts again: a test
    that counts lookups must not warm the cache before that echo has passed.
    Two more probes mean the probe that saw the change has finished its poll.
    """
    probes = st.version_probes
    await wait_for(
        lambda: st.version_probes >= probes + 2, within=2.0, what="the change feed to settle"
    )


def store_path(kg: Keygate) -> str:
    return sqlite_path(kg.settings.store.url)


CountingFactory = Callable[..., Awaitable[tuple[Keygate, CountingStore]]]


@pytest.fixture
async def counting_keygate_factory(
    tmp_path: Path, aiohttp_client: Callable[..., Awaitable[TestClient]]
) -> AsyncIterator[CountingFactory]:
    """Like ``keygate_factory``, but the app runs on a :class:`CountingStore`."""
    opened: list[tuple[TestClient, CountingStore]] = []

    async def factory(routes: tuple[Route, ...], **auth: Any) -> tuple[Keygate, CountingStore]:
        settings = make_settings(tmp_path, routes, **auth)
        st = CountingStore(sqlite_path(settings.store.url))
        await st.open()
        app = build_app(settings, store=st)
        client = await aiohttp_client(KeygateTestServer(app))
        opened.append((client, st))
        gw = app[gateway_key]
        issued = await create_first_admin(ServiceContext(gw.store, settings.auth))
        return Keygate(client, settings, issued.token), st

    yield factory
    # The app first (its watcher and batcher use the store until they stop),
    # then the store it was lent; aiohttp_client's own teardown comes later.
    for client, st in opened:
        await client.close()
        await st.close()


# --- raw HTTP -----------------------------------------------------------------
@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes


async def raw_request(port: int | None, head: bytes) -> RawResponse:
    """Send ``head`` (a whole request) on a fresh connection; read the answer to EOF.

    aiohttp's client normalises paths and targets; a raw socket sends exactly
    these bytes, as aiohttp's own parser tests do.
    """
    assert port is not None, "the server is not started"
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        await writer.drain()
        async with asyncio.timeout(5.0):
            data = await reader.read(-1)
    finally:
        writer.close()
        await writer.wait_closed()
    return parse_response(data)


def parse_response(data: bytes) -> RawResponse:
    head, sep, body = data.partition(b"\r\n\r\n")
    assert sep, f"no complete response head in {data[:200]!r}"
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = _dechunk(body)
    elif "content-length" in headers:
        body = body[: int(headers["content-length"])]
    return RawResponse(status, headers, body)


def _dechunk(data: bytes) -> bytes:
    out = bytearray()
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += data[:size]
        data = data[size + 2 :]
    return bytes(out)


def get_request(target: str, *, headers: Mapping[str, str] | None = None) -> bytes:
    """A GET with ``target`` exactly as given (latin-1 bytes), closing the connection."""
    lines = [f"GET {target} HTTP/1.1", "Host: keygate.test", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
