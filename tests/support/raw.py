"""HTTP/1.1 over plain sockets: requests byte for byte, responses as the wire framed them.

aiohttp's client normalises targets, headers and framing; these helpers send
exactly the bytes a test wrote (as aiohttp's own parser tests do) and read
answers without interpreting more than the framing.

- :func:`http` writes a request; :func:`bearer` is its credential header.
- :class:`Raw` is one client connection (:func:`connect` for ``async with``):
  send bytes, read each :class:`Reply`, see whether and when the server closes.
- :func:`exchange` is one request on a fresh connection; :func:`fetch` also
  waits for the server to close it (requests that say ``Connection: close``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

IO_TIMEOUT = 5.0
CUT = "cut"  # Reply.error when the connection ended (or was reset) before the body did


def free_port() -> int:
    """A localhost port nobody listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http(
    method: str,
    target: str,
    headers: Iterable[tuple[str, str]] | Mapping[str, str] = (),
    body: bytes = b"",
    *,
    host: str | None = "keygate.test",
    version: str = "HTTP/1.1",
) -> bytes:
    """A request exactly as written (latin-1), no normalisation of anything.

    ``Host`` comes first unless ``host`` is None; no framing header is added.
    """
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
    """One response as the bytes on the wire said it."""

    status_line: str
    headers: list[tuple[str, str]]
    body: bytes = b""  # de-chunked
    # "none" (bodiless), "length", "chunked", "eof", or "eof-delimited, but
    # still open after N s" when the server failed to close in time.
    framing: str = "none"
    interim: list[str] = field(default_factory=list)  # 1xx status lines before it
    trailers: list[tuple[str, str]] = field(default_factory=list)
    # None when the body arrived whole; CUT when the connection ended first;
    # "malformed: ..." when the chunked framing itself was broken.
    error: str | None = None

    @property
    def status(self) -> int:
        return int(self.status_line.split(" ", 2)[1])

    @property
    def reason(self) -> str:
        parts = self.status_line.split(" ", 2)
        return parts[2] if len(parts) > 2 else ""

    @property
    def complete(self) -> bool:
        return self.error is None

    def header(self, name: str) -> str | None:
        values = self.values(name)
        return values[0] if values else None

    def values(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def code(self) -> str:
        """The ``error.code`` of keygate's JSON error body."""
        return str(self.json()["error"]["code"])


def _head(head: bytes) -> tuple[str, list[tuple[str, str]]]:
    lines = head.decode("latin-1").split("\r\n")
    pairs: list[tuple[str, str]] = []
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            pairs.append((name, value.strip(" \t")))
    return lines[0], pairs


async def read_reply(
    reader: asyncio.StreamReader, *, method: str = "GET", eof_wait: float | None = None
) -> Reply:
    """Read one response (a 1xx is one too). IncompleteReadError if the head never ends.

    A body cut short is kept as far as it came, with ``error`` set. A body
    delimited by the end of the connection is read to EOF, or for at most
    ``eof_wait`` seconds when given (then ``framing`` says it stayed open).
    """
    reply = Reply(*_head(await reader.readuntil(b"\r\n\r\n")))
    status = reply.status
    if status < 200 or status in (204, 304) or method == "HEAD":
        return reply
    codings = [v.strip().lower() for v in reply.values("Transfer-Encoding")]
    length = reply.header("Content-Length")
    body = bytearray()
    try:
        if codings and codings[-1] == "chunked":
            reply.framing = "chunked"
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
                if size == 0:
                    break
                body += (await reader.readexactly(size + 2))[:-2]
            while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
                name, _, value = line.decode("latin-1").partition(":")
                reply.trailers.append((name, value.strip()))
        elif length is not None:
            reply.framing = "length"
            body += await reader.readexactly(int(length))
        else:
            reply.framing = "eof"
            try:
                async with asyncio.timeout(eof_wait):
                    while chunk := await reader.read(65536):
                        body += chunk
            except TimeoutError:
                reply.framing = f"eof-delimited, but still open after {eof_wait} s"
    except asyncio.IncompleteReadError as exc:
        body += exc.partial
        reply.error = CUT
    except ConnectionError:
        reply.error = CUT
    except ValueError as exc:
        reply.error = f"malformed: {exc}"
    reply.body = bytes(body)
    return reply


async def read_final(
    reader: asyncio.StreamReader, *, method: str = "GET", eof_wait: float | None = None
) -> Reply:
    """The next final response; the 1xx before it (101 is final) go to ``interim``."""
    interim: list[str] = []
    while True:
        reply = await read_reply(reader, method=method, eof_wait=eof_wait)
        if 100 <= reply.status < 200 and reply.status != 101:
            interim.append(reply.status_line)
            continue
        reply.interim = interim
        return reply


class Raw:
    """One client connection, bytes in and out."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int, *, rcvbuf: int | None = None) -> Raw:
        """Connect to 127.0.0.1:``port``; ``rcvbuf`` shrinks the receive buffer (slow readers)."""
        if rcvbuf is None:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
            return cls(reader, writer)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        except BaseException:
            sock.close()
            raise
        reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 20)
        return cls(reader, writer)

    @property
    def sockname(self) -> tuple[str, int]:
        """This end's address: what the server sees as the peer."""
        host, port = self.writer.get_extra_info("sockname")[:2]
        return str(host), int(port)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def reply(
        self,
        *,
        within: float = IO_TIMEOUT,
        method: str = "GET",
        interim: bool = False,
        eof_wait: float | None = None,
    ) -> Reply:
        """The next final response; with ``interim``, the next response even if a 1xx."""
        read = read_reply if interim else read_final
        async with asyncio.timeout(within):
            return await read(self.reader, method=method, eof_wait=eof_wait)

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

    async def eof(self, *, within: float = IO_TIMEOUT) -> bool:
        """Whether the server closes the connection, sending nothing more, within ``within``."""
        try:
            async with asyncio.timeout(within):
                data = await self.reader.read(1)
        except TimeoutError:
            return False
        except ConnectionError:
            return True
        assert data == b"", f"unexpected bytes {data!r}"
        return True

    def abort(self) -> None:
        self.writer.transport.abort()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()


@contextlib.asynccontextmanager
async def connect(port: int, *, rcvbuf: int | None = None) -> AsyncIterator[Raw]:
    """``async with connect(port) as conn``: a :class:`Raw` connection, closed after."""
    conn = await Raw.open(port, rcvbuf=rcvbuf)
    try:
        yield conn
    finally:
        await conn.close()


async def exchange(
    port: int, request: bytes, *, within: float = IO_TIMEOUT, method: str = "GET"
) -> Reply:
    """``request`` on a fresh connection; the first final reply."""
    async with connect(port) as conn:
        await conn.send(request)
        return await conn.reply(within=within, method=method)


async def fetch(port: int | None, request: bytes, *, within: float = IO_TIMEOUT) -> Reply:
    """Like :func:`exchange`, and the server must then close the connection (within the
    same ``within``): for requests that say ``Connection: close``."""
    assert port is not None, "the server is not started"
    async with connect(port) as conn, asyncio.timeout(within):
        await conn.send(request)
        reply = await read_final(conn.reader)
        with contextlib.suppress(ConnectionError):
            while await conn.reader.read(65536):
                pass
    return reply
