"""The lean upstream exchange for plain-http upstreams (SPEC §5 step 5).

Used by :func:`gateway.forward.forward` for every ``http://`` upstream except
WebSocket upgrades, which stay with aiohttp's client. The request head is
written as bytes in one go; the response is parsed by httptools on a pooled
keep-alive connection (:mod:`gateway.upstream_conn`). Per request there is no
URL object, no client request or response object and no header multidict
besides the one aiohttp's server response builds.

Framing and errors follow :mod:`gateway.forward`: a request with
Content-Length goes upstream with it, one without goes chunked, never both. A
response with a Content-Length of at most ``SMALL_BODY`` bytes (and every
bodiless one) is answered with one :class:`aiohttp.web.Response`; any other is
streamed, keeping the upstream's Content-Length, else chunked to HTTP/1.1
clients. Until the client's response starts, failures raise a
:class:`~gateway.errors.KeygateError`; afterwards the client connection is
aborted and the error is raised for the log only.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

import yarl
from aiohttp import hdrs, web
from aiohttp.http import HttpVersion11
from keygate.gateway.errors import KeygateError, UpstreamTimeout, UpstreamUnavailable
from keygate.gateway.request.body import RequestBody, failure
from keygate.gateway.request.headers import HOP_BY_HOP
from keygate.gateway.upstream.connection import OriginKey, UpstreamConnection, UpstreamError
from keygate.gateway.upstream.head import CHUNKED, request_head
from keygate.gateway.upstream.head import HeaderSource as Headers
from keygate.gateway.upstream.pool import UpstreamPool

# Fixed-length bodies up to this size are read whole and answered in one piece.
SMALL_BODY: Final = 64 * 1024

# RFC 9110 §9.2.2: only these may be retried on a fresh connection.
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


def abort_client(request: web.BaseRequest) -> None:
    """Cut the client connection mid-response (no final chunk, short of length)."""
    transport = request.transport
    if transport is not None:
        # abort(), not close(): a stalled client must not keep the socket open
        # while the rest of a response that is already broken drains.
        transport.abort()


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


def response_headers(raw: list[tuple[bytes, bytes]]) -> tuple[list[tuple[str, str]], int | None]:
    """(headers for the client, Content-Length) of an upstream response head.

    The same rule as :func:`gateway.headers.downstream_response_headers`:
    hop-by-hop headers and those named in Connection go; Content-Length goes
    too when the upstream also sent Transfer-Encoding; order and repeats stay.
    """
    out: list[tuple[str, str]] = []
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


@contextlib.contextmanager
def mapped_errors(body: RequestBody | None) -> Iterator[None]:
    """Upstream failures as the client's error: a timeout 504, anything else 502.

    Refused, DNS, reset, malformed status line or headers: all 502; a failed
    request body keeps its own error (see :func:`~gateway.request_body.failure`).
    """
    try:
        yield
    except (TimeoutError, UpstreamError, OSError) as exc:
        raise failure(body, client_error(exc)) from exc


def client_error(exc: TimeoutError | UpstreamError | OSError) -> KeygateError:
    """What the client is told of an upstream failure."""
    # TimeoutError is an OSError: test it first.
    return UpstreamTimeout() if isinstance(exc, TimeoutError) else UpstreamUnavailable()


async def open_exchange(
    pool: UpstreamPool,
    origin: Origin,
    method: str,
    head: bytes,
    body: RequestBody | None,
    length: int | None,
    deadline: float,
    *,
    fresh: bool = False,
) -> tuple[UpstreamConnection, asyncio.Task[None] | None]:
    """Send a request head (and start its body) and wait for the response head.

    ``length`` is the framing ``head`` declares for ``body`` (see
    :func:`~gateway.upstream_head.request_head`). Returns the connection, its
    response head read, and the task still sending the body, if any. Raises
    UpstreamError, OSError or TimeoutError; the caller maps them to 502/504
    and must end the connection (``finish`` or ``abort``) and the task. Both
    the aiohttp handler and the edge protocol (:mod:`gateway.edge`) take this
    one road upstream. ``fresh``: a retry already (the edge's first try failed
    stale): a new connection, no further retry.
    """
    conn: UpstreamConnection | None = None
    sender: asyncio.Task[None] | None = None
    idempotent = method in IDEMPOTENT
    retried = fresh
    try:
        while True:
            # A retry takes a new connection: the next idle one may be as stale.
            conn = None if retried else pool.take(origin.key)
            reused = conn is not None
            if conn is None:
                conn = await pool.connect(origin.key, deadline)
            conn.start(head, deadline, method == hdrs.METH_HEAD)
            if body is not None:
                sender = asyncio.create_task(_send_body(conn, body, length))
            try:
                while not conn.head_done:
                    await conn.wait()
                return conn, sender
            except UpstreamError as exc:
                # The keep-alive race (RFC 9112 §9.3.1): the upstream closed
                # an idle connection as we wrote. Nothing was answered, so an
                # idempotent request whose body is still whole goes again.
                if retried or not (reused and idempotent and exc.stale):
                    raise
                if body is not None and body.consumed:
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


def is_bodiless(method: str, status: int) -> bool:
    """RFC 9110 §6.4.1: no content, whatever the framing headers say."""
    return method == hdrs.METH_HEAD or status == 204 or status == 304


async def read_small(conn: UpstreamConnection, bodiless: bool, length: int | None) -> bytes | None:
    """The whole body when it is short enough to answer in one piece, else None.

    ``b""`` for a bodiless response; None means "stream it".
    """
    if bodiless:
        return b""
    if length is None or length > SMALL_BODY:
        return None
    while not conn.complete:
        await conn.wait()
    return conn.take_body()


async def exchange(
    request: web.Request,
    *,
    pool: UpstreamPool,
    origin: Origin,
    target: str,
    headers: Headers,
    body: RequestBody | None,
    route_timeout: float,
) -> web.StreamResponse:
    """Send ``request`` to ``origin`` as ``target`` (encoded path and query) and relay the answer.

    ``route_timeout`` covers connecting, sending and the whole response.
    """
    method = request.method
    length = body_length(request) if body is not None else None
    head = request_head(method, target, origin.host, headers, length)
    deadline = pool.loop.time() + route_timeout
    conn: UpstreamConnection | None = None
    sender: asyncio.Task[None] | None = None
    try:
        with mapped_errors(body):
            conn, sender = await open_exchange(pool, origin, method, head, body, length, deadline)
            status = conn.status
            out_headers, length = response_headers(conn.headers)
            reason = conn.reason.decode("utf-8", "surrogateescape") or None
            bodiless = is_bodiless(method, status)
            data = await read_small(conn, bodiless, length)
            if data is not None:
                conn.finish(reuse=body is None or body.sent)
                conn = None
                return web.Response(
                    status=status,
                    reason=reason,
                    headers=out_headers,
                    body=None if bodiless else data,
                )
        return await _stream(request, conn, status, reason, out_headers, body)
    finally:
        if conn is not None and conn.active:
            conn.abort()  # not read to its end: never reused
        if sender is not None and not sender.done():
            sender.cancel()


def close_if_unframed(request: web.BaseRequest, response: web.StreamResponse) -> None:
    """An HTTP/1.0 answer of unknown length ends with the connection (RFC 9112 §6.3).

    aiohttp sends no chunks to HTTP/1.0 but keeps a keep-alive connection open
    after such a body, so the client could never tell where it ends.
    """
    if request.version < HttpVersion11 and hdrs.CONTENT_LENGTH not in response.headers:
        response.force_close()


async def _stream(
    request: web.Request,
    conn: UpstreamConnection,
    status: int,
    reason: str | None,
    headers: list[tuple[str, str]],
    body: RequestBody | None,
) -> web.StreamResponse:
    response = web.StreamResponse(status=status, reason=reason, headers=headers)
    close_if_unframed(request, response)
    await response.prepare(request)
    while True:
        try:
            chunk = await conn.read_body()
        except TimeoutError as exc:
            abort_client(request)
            raise UpstreamTimeout() from exc
        except (UpstreamError, OSError) as exc:
            abort_client(request)
            raise failure(body, UpstreamUnavailable()) from exc
        if not chunk:
            break
        try:
            await response.write(chunk)
        except ConnectionError:
            return response  # client gone; nobody to tell, the caller closes upstream
    conn.finish(reuse=body is None or body.sent)
    # A client that left now is aiohttp's to notice: it drops the connection.
    with contextlib.suppress(ConnectionError):
        await response.write_eof()
    return response


def body_length(request: web.BaseRequest) -> int:
    """The framing of a request body as aiohttp's parser read it: its length, or
    :data:`~gateway.upstream_head.CHUNKED` (the only coding the front ends admit)."""
    length = request.content_length
    if hdrs.TRANSFER_ENCODING in request.headers or length is None:
        return CHUNKED
    return length


async def _send_body(conn: UpstreamConnection, body: RequestBody, length: int | None) -> None:
    """Stream the client's body upstream; on failure, break the upstream exchange.

    Exactly the bytes the head declared go out: with a Content-Length, a body
    that would run longer or end shorter breaks the exchange instead (the
    framing invariant holds here whatever the body source does).
    """
    chunked = length == CHUNKED
    sent = 0
    try:
        async for chunk in body:
            sent += len(chunk)
            if not chunked and length is not None and sent > length:
                raise UpstreamError("the request body ran past its declared length")
            conn.write(b"".join((b"%x\r\n" % len(chunk), chunk, b"\r\n")) if chunked else chunk)
            await conn.drain()
        if chunked:
            conn.write(b"0\r\n\r\n")
        elif sent != (length or 0):
            raise UpstreamError("the request body ended short of its declared length")
        body.sent = True
    except (KeygateError, UpstreamError, OSError) as exc:
        # The upstream must see a broken request, never a short one that looks whole.
        conn.fail(UpstreamError(f"the request body failed: {exc}"))
