"""One upstream exchange on plain values: method, target, header pairs, body.

Both front ends take this road upstream (as httpx's transport API takes
plain values, not a server's request object): :func:`open_answer` speaks to a
plain-http upstream over the keep-alive pool (:mod:`.pool`, :mod:`.connection`),
:func:`~keygate.gateway.upstream.client.open_https_answer` to an ``https://``
one through aiohttp's client. Each returns an :class:`Answer`: the response
head, already filtered for the client (:func:`response_headers`), and its
body to read whole or in chunks.

The request head is keygate's own (:func:`~keygate.gateway.upstream.head.request_head`):
it frames exactly the body sent — a ``bytes`` body whole in the same write, a
:class:`~keygate.gateway.request.body.RequestBody` streamed by a task that
sends exactly what the head declared (docs/security.md, "The framing
invariant").

Errors: until the client's answer starts, failures raise a
:class:`~keygate.gateway.errors.KeygateError` (502, 504, or the request
body's own: 400, 403, 413); the front end then answers it. Afterwards they
are raised for the log only, and the front end cuts the client connection so
the message ends short instead of looking complete.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Final

import aiohttp
import yarl
from aiohttp import hdrs

from keygate.gateway.errors import KeygateError, UpstreamTimeout, UpstreamUnavailable
from keygate.gateway.request.body import RequestBody, failure
from keygate.gateway.request.headers import HOP_BY_HOP, Pairs
from keygate.gateway.upstream.connection import OriginKey, UpstreamConnection, UpstreamError
from keygate.gateway.upstream.head import CHUNKED, request_head
from keygate.gateway.upstream.pool import UpstreamPool

# Fixed-length bodies up to this size, once all here, are answered in one piece.
SMALL_BODY: Final = 64 * 1024

# RFC 9110 §9.2.2: only these may be retried on a fresh connection once
# anything of them may have reached the dead one (see may_retry).
IDEMPOTENT: Final = frozenset(
    {
        hdrs.METH_GET,
        hdrs.METH_HEAD,
        hdrs.METH_OPTIONS,
        hdrs.METH_TRACE,
        hdrs.METH_PUT,
        hdrs.METH_DELETE,
    }
)
_HOP_BY_HOP_BYTES: Final = frozenset(name.encode() for name in HOP_BY_HOP)


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a plain-http upstream is: the pool key and the Host header value."""

    key: OriginKey
    host: str

    @classmethod
    def of(cls, url: yarl.URL) -> Origin | None:
        """The origin of ``url``; None unless it is plain http without credentials."""
        if url.scheme != "http" or not url.raw_host or url.raw_user or url.raw_password:
            return None
        host = url.host_port_subcomponent
        assert host is not None and url.port is not None
        return cls((url.raw_host, url.port), host)


# --- the response head rule ------------------------------------------------------------------
# What a response header name means here, by its raw bytes (names repeat from
# response to response; the cache is bounded all the same).
_PLAIN, _HOP, _CONNECTION, _CODED, _LENGTH = range(5)
_NAMES: dict[bytes, tuple[str, int]] = {}
_MAX_NAMES: Final = 4096


def _name(raw: bytes) -> tuple[str, int]:
    low = raw.lower()
    if low == b"connection":
        kind = _CONNECTION
    elif low == b"transfer-encoding":
        kind = _CODED
    elif low in _HOP_BY_HOP_BYTES:
        kind = _HOP
    elif low == b"content-length":
        kind = _LENGTH
    else:
        kind = _PLAIN
    info = (raw.decode("latin-1"), kind)
    if len(_NAMES) < _MAX_NAMES:
        _NAMES[raw] = info
    return info


def response_headers(raw: list[tuple[bytes, bytes]]) -> tuple[Pairs, int | None]:
    """(headers for the client, Content-Length) of an upstream response head.

    The one rule for both front ends and both upstream kinds: hop-by-hop
    headers and those named in Connection go (RFC 9110 §7.6.1);
    Content-Length goes too when the upstream also sent Transfer-Encoding
    (RFC 9112 §6.3: the body is re-framed); order and repeats stay.
    """
    out: Pairs = []
    length: int | None = None
    named: set[str] | None = None
    transfer_coded = False
    names = _NAMES
    for name, value in raw:
        text, kind = names.get(name) or _name(name)
        if kind == _PLAIN:
            out.append((text, value.decode("utf-8", "surrogateescape")))
        elif kind == _LENGTH:
            try:
                length = int(value)
            except ValueError:
                length = None
            out.append((text, value.decode("utf-8", "surrogateescape")))
        elif kind == _CONNECTION:
            tokens = {t.strip().lower() for t in value.decode("latin-1").split(",")}
            named = tokens if named is None else named | tokens
        elif kind == _CODED:
            transfer_coded = True
    if named is not None:
        named -= HOP_BY_HOP
        named.discard("")
    if transfer_coded:
        length = None
        named = named or set()
        named.add("content-length")
    if named:
        out = [(n, v) for n, v in out if n.lower() not in named]
    return out, length


def is_bodiless(method: str, status: int) -> bool:
    """RFC 9110 §6.4.1: no content, whatever the framing headers say."""
    return method == hdrs.METH_HEAD or status == 204 or status == 304


def client_error(exc: BaseException) -> KeygateError:
    """What the client is told of an upstream failure: a timeout 504, else 502."""
    # TimeoutError is an OSError: test it first.
    return UpstreamTimeout() if isinstance(exc, TimeoutError) else UpstreamUnavailable()


@contextlib.contextmanager
def mapped_errors(body: RequestBody | None) -> Iterator[None]:
    """Upstream failures as the client's error (:func:`client_error`); a failed
    request body keeps its own (see :func:`~keygate.gateway.request.body.failure`)."""
    try:
        yield
    except (TimeoutError, UpstreamError, OSError, aiohttp.ClientError) as exc:
        raise failure(body, client_error(exc)) from exc


# --- the answer -----------------------------------------------------------------------------
class Answer:
    """An upstream's response, its head read: what a front end relays.

    ``headers`` are already filtered for the client; ``length`` is the
    upstream's Content-Length (None: unknown); ``bodiless`` says the response
    has no content whatever its framing says. The front end takes the body
    with :meth:`whole_body` or :meth:`chunks`, then calls :meth:`close`.
    """

    __slots__ = ("bodiless", "headers", "length", "reason", "request_body", "status")

    def __init__(
        self,
        status: int,
        reason: str | None,
        headers: Pairs,
        length: int | None,
        bodiless: bool,
        request_body: RequestBody | None,
    ) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.length = length
        self.bodiless = bodiless
        self.request_body = request_body

    @property
    def whole(self) -> bool:
        """Whether the answer goes to the client in one piece: no body, or a
        declared one of at most :data:`SMALL_BODY` bytes that is all here
        already. Otherwise the head goes at once and the body streams as it
        comes (keeping its Content-Length): a small body that trickles in must
        not hold its head back (time to first byte as direct)."""
        if self.bodiless:
            return True
        length = self.length
        return length is not None and length <= SMALL_BODY and self.arrived

    @property
    def arrived(self) -> bool:
        """Whether the whole body is here (read, not yet taken)."""
        raise NotImplementedError

    def whole_body(self) -> bytes | None:
        """The whole body when :attr:`whole`, else None ("stream it");
        ``b""`` for a bodiless response. Raises the client's error when the
        upstream already broke the body (nothing was sent to the client yet)."""
        raise NotImplementedError

    def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives (failures raise the client's error)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the connection: kept for reuse only after a complete body."""
        raise NotImplementedError


class PooledAnswer(Answer):
    """An answer on a pooled plain-http connection."""

    __slots__ = ("conn", "sender")

    def __init__(
        self,
        conn: UpstreamConnection,
        method: str,
        sender: asyncio.Task[None] | None,
        request_body: RequestBody | None,
    ) -> None:
        headers, length = response_headers(conn.headers)
        status = conn.status
        super().__init__(
            status,
            conn.reason.decode("utf-8", "surrogateescape") or None,
            headers,
            length,
            is_bodiless(method, status),
            request_body,
        )
        self.conn = conn
        self.sender = sender

    @property
    def arrived(self) -> bool:
        return self.conn.complete

    def whole_body(self) -> bytes | None:
        if self.bodiless:
            return b""
        conn = self.conn
        if not self.whole:
            error = conn.error
            if error is not None and not conn.complete:
                with mapped_errors(self.request_body):
                    raise error
            return None
        return conn.take_body()

    async def chunks(self) -> AsyncIterator[bytes]:
        conn = self.conn
        while True:
            with mapped_errors(self.request_body):
                chunk = await conn.read_body()
            if not chunk:
                return
            yield chunk

    def close(self) -> None:
        body = self.request_body
        conn = self.conn
        if conn.active:
            # Reused only when read to its end and the request body went whole.
            conn.finish(reuse=conn.complete and (body is None or body.sent))
        if self.sender is not None and not self.sender.done():
            self.sender.cancel()


async def open_answer(
    pool: UpstreamPool,
    origin: Origin,
    method: str,
    target: str,
    pairs: Pairs,
    body: bytes | RequestBody | None,
    deadline: float,
    *,
    fresh: bool = False,
) -> PooledAnswer:
    """Send a request to a plain-http upstream and wait for its response head.

    ``target`` is the encoded path and query; ``body`` is sent whole
    (``bytes``, with the head in one write) or streamed (a RequestBody,
    framed as it declares). ``fresh``: take a new connection, never retry
    (the edge's first try already failed stale).
    """
    if isinstance(body, bytes):
        head = request_head(method, target, origin.host, pairs, len(body) or None)
        stream = None
        if body:
            head += body
    else:
        length = None if body is None else body.length
        head = request_head(method, target, origin.host, pairs, length)
        stream = body
    with mapped_errors(stream):
        conn, sender = await open_exchange(
            pool, origin, method, head, stream, deadline, fresh=fresh
        )
    return PooledAnswer(conn, method, sender, stream)


async def open_exchange(
    pool: UpstreamPool,
    origin: Origin,
    method: str,
    head: bytes,
    body: RequestBody | None,
    deadline: float,
    *,
    fresh: bool = False,
) -> tuple[UpstreamConnection, asyncio.Task[None] | None]:
    """Write a request head (and start its streamed body); wait for the response head.

    Returns the connection and the task still sending the body, if any;
    raises UpstreamError, OSError or TimeoutError (see :func:`mapped_errors`).

    The keep-alive race (RFC 9112 §9.3.1): an upstream may close an idle
    connection just as a request is taken to it. The request goes once more,
    on a fresh connection, when :func:`may_retry` says so.
    """
    conn: UpstreamConnection | None = None
    sender: asyncio.Task[None] | None = None
    retried = fresh
    try:
        while True:
            # A retry takes a new connection: the next idle one may be as stale.
            conn = None if retried else pool.take(origin.key)
            reused = conn is not None
            if conn is None:
                conn = await pool.connect(origin.key, deadline)
            try:
                conn.start(head, deadline, method == hdrs.METH_HEAD)
                if body is not None:
                    sender = asyncio.create_task(_send_body(conn, body))
                while not conn.head_done:
                    await conn.wait()
                return conn, sender
            except UpstreamError as exc:
                consumed = body is not None and body.consumed
                if retried or not may_retry(
                    exc, method, reused=reused, sent=conn.sent, consumed=consumed
                ):
                    raise
                retried = True
                conn.abort()
                if sender is not None:
                    sender.cancel()
                    await asyncio.gather(sender, return_exceptions=True)
                    sender = None
    except BaseException:
        if conn is not None and conn.active:
            conn.abort()
        if sender is not None and not sender.done():
            sender.cancel()
        raise


def may_retry(
    exc: UpstreamError, method: str, *, reused: bool, sent: bool, consumed: bool = False
) -> bool:
    """Whether a request whose connection failed goes once more on a fresh one.

    Only before any byte of an answer (``exc.stale``) and while the request
    body is still whole (not ``consumed``). Then: any request of which no
    byte went out (``sent`` false: the connection was closing, or lost,
    before the write) — the upstream cannot have seen it; and an idempotent
    one (RFC 9110 §9.2.2) on a pooled connection, whose close raced with our
    write (the keep-alive race, RFC 9112 §9.3.1).
    """
    if not exc.stale or consumed:
        return False
    return not sent or (reused and method in IDEMPOTENT)


async def _send_body(conn: UpstreamConnection, body: RequestBody) -> None:
    """Stream the client's body upstream; on failure, break the upstream exchange.

    Exactly the bytes the head declared go out: with a Content-Length, a body
    that would run longer or end shorter breaks the exchange instead (the
    framing invariant holds here whatever the body source does).
    """
    length = body.length
    chunked = length == CHUNKED
    sent = 0
    try:
        async for chunk in body:
            sent += len(chunk)
            if not chunked and sent > length:
                raise UpstreamError("the request body ran past its declared length")
            conn.write(b"".join((b"%x\r\n" % len(chunk), chunk, b"\r\n")) if chunked else chunk)
            await conn.drain()
        if chunked:
            conn.write(b"0\r\n\r\n")
        elif sent != length:
            raise UpstreamError("the request body ended short of its declared length")
        body.sent = True
    except (KeygateError, UpstreamError, OSError) as exc:
        # The upstream must see a broken request, never a short one that looks whole.
        conn.fail(UpstreamError(f"the request body failed: {exc}"))
