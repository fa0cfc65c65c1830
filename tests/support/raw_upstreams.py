"""Upstreams on plain sockets, for answers no aiohttp handler would write.

- :func:`raw_server` runs a stream handler per connection (anything at all:
  stalls, resets, endless bodies); :class:`Canned` is the usual handler: it
  answers each request head with bytes of the test's choosing.
- :class:`StrictUpstream` parses every byte it receives with httptools
  (llhttp, strict), records each request exactly (:class:`Seen` with the body
  bytes) and each connection (:class:`Exchange`: how many requests began and
  completed, a parse error, every byte), and answers through a callback.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import cast

import httptools

from tests.support.upstreams import Seen

StreamHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class RawServer:
    server: asyncio.Server

    @property
    def port(self) -> int:
        return int(self.server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        """The base URL, without a trailing slash."""
        return f"http://127.0.0.1:{self.port}"


@contextlib.asynccontextmanager
async def raw_server(handler: StreamHandler) -> AsyncIterator[RawServer]:
    """A TCP server on 127.0.0.1 running ``handler`` per connection (a dropped
    connection ends it quietly); on exit every connection is reset."""
    writers: set[asyncio.StreamWriter] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.add(writer)
        try:
            with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
                await handler(reader, writer)
        finally:
            writers.discard(writer)
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield RawServer(server)
    finally:
        server.close()
        for writer in list(writers):
            writer.transport.abort()
        await server.wait_closed()


Reply = Callable[[int, bytes], bytes | None]


@dataclass
class Canned:
    """A stream handler answering each request head with ``reply(n, head)``'s bytes.

    ``n`` counts requests over all connections. ``None`` closes the connection
    without answering; after an answer the connection stays open for the next
    request unless ``close_after``. Request bodies are not read.
    """

    reply: Reply
    close_after: bool = False
    requests: int = 0
    connections: int = 0
    heads: list[bytes] = field(default_factory=list)

    @classmethod
    def always(cls, data: bytes, *, close_after: bool = True) -> Canned:
        """``data`` to every request, then (by default) close."""
        return cls(lambda n, head: data, close_after)

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            self.requests += 1
            self.heads.append(head)
            answer = self.reply(self.requests, head)
            if answer is None:
                return
            writer.write(answer)
            await writer.drain()
            if self.close_after:
                return


@dataclass
class Exchange:
    """Everything one connection to a :class:`StrictUpstream` received."""

    data: bytes = b""
    begun: int = 0
    completed: int = 0
    requests: list[Seen] = field(default_factory=list)  # the completed ones
    error: str | None = None  # the parser's complaint; the connection was then closed
    closed: bool = False


# What to write for a completed request (b"": nothing) and whether to close after it.
Answer = Callable[[Seen, Exchange], tuple[bytes, bool]]


class _Strict(asyncio.Protocol):
    def __init__(self, upstream: StrictUpstream) -> None:
        self.upstream = upstream
        self.x = Exchange()
        upstream.connections.append(self.x)
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.headers: list[tuple[str, str]] = []
        self.body = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = cast(asyncio.Transport, transport)
        self.upstream.transports.add(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.x.closed = True
        if self.transport is not None:
            self.upstream.transports.discard(self.transport)

    def data_received(self, data: bytes) -> None:
        self.x.data += data
        if self.x.error is not None:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.x.error = f"{type(exc).__name__}: {exc}"
            assert self.transport is not None
            self.transport.close()

    def on_message_begin(self) -> None:
        self.x.begun += 1
        self.url, self.headers, self.body = b"", [], b""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.x.completed += 1
        seen = Seen(
            self.parser.get_method().decode("latin-1"),
            self.url.decode("latin-1"),
            self.headers,
            self.upstream.name,
            len(self.body),
            hashlib.sha256(self.body).hexdigest(),
            body=self.body,
        )
        self.x.requests.append(seen)
        self.upstream.seen.append(seen)
        answer, close = self.upstream.answer(seen, self.x)
        assert self.transport is not None
        if answer:
            self.transport.write(answer)
        if close:
            self.transport.close()


class StrictUpstream:
    """A raw HTTP/1.1 server: parses strictly, records everything, answers ``answer``'s bytes.

    ``seen`` may be a list shared with another upstream (one record of a
    case's requests, in order, wherever they went).
    """

    def __init__(self, answer: Answer, *, name: str = "raw", seen: list[Seen] | None = None):
        self.answer = answer
        self.name = name
        self.seen: list[Seen] = [] if seen is None else seen
        self.connections: list[Exchange] = []
        self.transports: set[asyncio.Transport] = set()
        self.server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        """The base URL, without a trailing slash."""
        assert self.server is not None, "the upstream is not started"
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def start(self) -> StrictUpstream:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _Strict(self), "127.0.0.1", 0)
        return self

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            for transport in list(self.transports):
                transport.abort()
            await self.server.wait_closed()
