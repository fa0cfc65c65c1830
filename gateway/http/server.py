"""Our HTTP server protocol: aiohttp's, with refusals of malformed requests as JSON.

aiohttp answers parser errors (bad framing, oversized heads) with a text/plain
body that quotes the offending input and logs a traceback. A quoted header may
be a credential, so we answer with SPEC's JSON error, a fixed message, and log
one line naming only the kind of error.

:class:`KeygateRunner` also fixes two runner defaults wherever it is used
(``keygate serve``, tests, embedding): keygate's access log format, because
aiohttp's prints the query string and a query may carry a key; and handler
cancellation, so a client that goes away mid-request releases its upstream
connection and its route slot at once instead of after the route timeout.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httptools
from aiohttp import hdrs, web
from aiohttp.http import HttpVersion10, HttpVersion11
from aiohttp.http_exceptions import BadHttpMethod, HttpProcessingError, LineTooLong
from aiohttp.http_parser import HttpRequestParser
from aiohttp.log import access_logger
from aiohttp.streams import EMPTY_PAYLOAD
from aiohttp.web_protocol import RequestHandler, RequestPayloadError, _ErrInfo
from aiohttp.web_request import BaseRequest
from keygate.gateway.errors import BadFraming, BadRequest, HeadersTooLarge, KeygateError, TooLarge
from keygate.gateway.http.accesslog import AccessLogger
from keygate.gateway.http.edge.protocol import Edge, EdgeProtocol
from keygate.gateway.request.headers import HOST_FIELD, RequestIds, connection_nominates_framing
from keygate.gateway.state import gateway_key

log = logging.getLogger("keygate.protocol")



class UriTooLong(KeygateError):
    status = 414
    default_code = "uri_too_long"
    default_message = "The request line is too long."


def error_for(
    status: int,
    exc: BaseException | None,
    *,
    line_limit: int | None = None,
    field_limit: int | None = None,
) -> KeygateError:
    if isinstance(exc, LineTooLong):
        # RFC 9110 §15.5.15 / RFC 6585 §5: a long request line is 414, a long
        # header 431. aiohttp's C parser words both alike; they differ in the
        # limit they report (max_line_size or max_field_size) and, when the two
        # are equal, in the buffer type it quotes (the target's is a bytearray).
        text = str(exc).lower()
        if "status line" in text or "request line" in text:
            return UriTooLong()
        limit = exc.args[1] if len(exc.args) > 1 else None
        if (
            line_limit is not None
            and limit == line_limit
            and (limit != field_limit or isinstance(exc.args[0], bytearray))
        ):
            return UriTooLong()
        return HeadersTooLarge()
    if exc is not None and "too many headers" in str(exc).lower():
        return HeadersTooLarge()
    if status == 413:
        return TooLarge()
    if status == 400 or exc is not None:
        return BadRequest("The request is not valid HTTP.")
    return KeygateError()


def check_framing(request: web.BaseRequest) -> None:
    """Refuse what aiohttp's parser lets through but a proxy must not relay.

    - Only HTTP/1.0 and 1.1: a request line without a version parses as
      HTTP/0.9, which has no header block, yet the headers after it are kept.
    - Exactly one valid Host (HTTP/1.0 may go without).
    - Transfer-Encoding must be exactly ``chunked`` (RFC 9112 §6.1): the
      parser removes the chunked coding and ignores any other, and hop-by-hop
      removal would drop the header, so ``gzip, chunked`` would reach the
      upstream as a plain body. HTTP/1.0 has no transfer codings at all: such
      framing is faulty (RFC 9112 §6.1).
    - No Connection header may name Content-Length or Transfer-Encoding
      (:func:`gateway.headers.connection_nominates_framing`).

    Each refusal is a :class:`BadFraming`: the connection closes after it.
    """
    if request.version not in (HttpVersion10, HttpVersion11):
        raise BadFraming()
    # RFC 9112 §3.2: an HTTP/1.1 request without Host, or any request with two
    # Host lines or an invalid one, is a 400: keygate sends Host on as
    # X-Forwarded-Host, which upstreams use to build links.
    hosts = request.headers.getall(hdrs.HOST, ())
    if (
        len(hosts) > 1
        or (not hosts and request.version == HttpVersion11)
        or (hosts and not HOST_FIELD.fullmatch(hosts[0]))
    ):
        raise BadFraming("The request needs exactly one valid Host header.")
    codings = request.headers.getall(hdrs.TRANSFER_ENCODING, ())
    if codings:
        tokens = [t.strip().lower() for v in codings for t in v.split(",")]
        if request.version == HttpVersion10 or tokens != ["chunked"]:
            raise BadFraming()
    if connection_nominates_framing(request.headers):
        raise BadFraming()


class _Boundaries:
    """httptools callbacks: how many messages are begun and not yet complete."""

    __slots__ = ("open",)

    def __init__(self) -> None:
        self.open = 0

    def on_message_begin(self) -> None:
        self.open += 1

    def on_message_complete(self) -> None:
        self.open -= 1


class _Inert:
    """A protocol for the trial parsers of :class:`RecoveringParser`: reads nothing."""

    def pause_reading(self) -> None:
        pass

    def resume_reading(self, resume_parser: bool = True) -> None:
        pass


_AFTER_CLOSE = "Data after `Connection: close`"
# A read larger than this that fails is not searched for requests before its error.
_RECOVER_MAX = 256 * 1024


class RecoveringParser:
    """aiohttp's request parser, except that a read holding complete requests
    followed by bytes that are not HTTP answers those requests first.

    aiohttp's C parser raises on the first bad byte of a read and loses the
    requests it completed in that same read, so a valid request followed by
    garbage in one packet got only a 400, while the edge serves the request
    and then refuses the garbage. Here, when the bytes before the read ended
    on a message boundary (tracked by a second, httptools, parser), the
    longest prefix that parses is found by bisection with fresh parsers, its
    complete requests are handed over, and then the 400 — or nothing, when
    the garbage followed a request that ends the connection (RFC 9112 §9.6:
    the rest is never read), which is what the edge does too.
    """

    def __init__(self, inner: Any, fresh: Any, protocol: RequestHandler) -> None:
        self._inner = inner
        self._fresh = fresh  # (protocol, ...) -> a new parser like inner
        self._protocol = protocol
        self._boundaries = _Boundaries()
        self._shadow: httptools.HttpRequestParser | None = httptools.HttpRequestParser(
            self._boundaries
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def feed_data(self, data: bytes) -> Any:
        shadow = self._shadow
        at_boundary = shadow is not None and self._boundaries.open == 0
        if shadow is not None:
            try:
                shadow.feed_data(data)
            except (httptools.HttpParserError, httptools.HttpParserUpgrade):
                self._shadow = None  # no more boundaries known: aiohttp's rules from here
        try:
            return self._inner.feed_data(data)
        except HttpProcessingError as exc:
            if not at_boundary or len(data) > _RECOVER_MAX:
                raise
            messages = self._complete_requests(data)
            if not messages:
                raise
            if not str(exc.message).startswith(_AFTER_CLOSE):
                messages.append((_ErrInfo(status=400, exc=exc, message=exc.message), EMPTY_PAYLOAD))
            return messages, False, b""

    def _complete_requests(self, data: bytes) -> list[Any]:
        good, bad = 0, len(data)  # a prefix of `good` bytes parses, of `bad` bytes fails
        inert = _Inert()
        while bad - good > 1:
            middle = (good + bad) // 2
            try:
                self._fresh(inert).feed_data(data[:middle])
            except HttpProcessingError:
                bad = middle
            else:
                good = middle
        if not good:
            return []
        messages = self._fresh(self._protocol).feed_data(data[:good])[0]
        # A request whose body the bad byte cut short is not answered.
        return [(message, payload) for message, payload in messages if payload.is_eof()]


class KeygateRequestHandler(RequestHandler):
    __slots__ = ("_field_limit", "_line_limit")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # aiohttp's own defaults when the app sets none.
        self._line_limit: int = kwargs.get("max_line_size", 8190)
        self._field_limit: int = kwargs.get("max_field_size", 8190)
        loop = kwargs["loop"]

        def fresh(protocol: Any) -> Any:
            return HttpRequestParser(
                protocol,
                loop,
                kwargs.get("read_bufsize", 2**16),
                max_line_size=self._line_limit,
                max_field_size=self._field_limit,
                max_headers=kwargs.get("max_headers", 128),
                payload_exception=RequestPayloadError,
                auto_decompress=kwargs.get("auto_decompress", True),
            )

        self._parser = RecoveringParser(self._parser, fresh, self)

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            raise ConnectionError("Response is sent already; the connection is dropped.")
        error = error_for(status, exc, line_limit=self._line_limit, field_limit=self._field_limit)
        if error.status >= 500:
            log.error("internal error", exc_info=exc)
        elif not isinstance(exc, BadHttpMethod):
            log.info(
                "refused malformed request from %s: %s (%d)",
                request.remote,
                type(exc).__name__ if exc else "error",
                error.status,
            )
        response = web.Response(
            status=error.status, body=error.body(), content_type="application/json"
        )
        ids = getattr(self._manager, "ids", None)
        if ids is not None:
            # SPEC §5: an X-Request-Id on every response, even one to a
            # request too malformed to have had its own read.
            response.headers[hdrs.X_REQUEST_ID] = ids.new()
        response.force_close()
        return response


class KeygateServer(web.Server):
    """aiohttp's server whose connections start on the edge protocol when it is on.

    ``edge`` is set by :class:`KeygateRunner` once the app has started (the
    gateway state exists then); until then, and with ``server.fast_path``
    off, every connection is aiohttp's from the start.
    """

    edge: Edge | None = None
    # Request ids for the edge's answers and for those to requests aiohttp's
    # parser refused (the app's middleware has its own: one per app).
    ids: RequestIds | None = None

    def new_handler(self) -> RequestHandler:
        return KeygateRequestHandler(self, loop=self._loop, **self._kwargs)

    def __call__(self) -> asyncio.Protocol:  # type: ignore[override]
        edge = self.edge
        if edge is None or edge.closing:
            return self.new_handler()
        return EdgeProtocol(edge)

    def pre_shutdown(self) -> None:
        super().pre_shutdown()
        if self.edge is not None:
            self.edge.pre_shutdown()

    async def shutdown(self, timeout: float | None = None) -> None:  # noqa: ASYNC109 - aiohttp's
        if self.edge is None:
            await super().shutdown(timeout)
            return
        await asyncio.gather(super().shutdown(timeout), self.edge.shutdown(timeout))


class KeygateRunner(web.AppRunner):
    """An AppRunner whose connections use :class:`KeygateRequestHandler`, and the
    edge protocol (:mod:`gateway.edge`) for plain proxied requests."""

    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        # SECURITY: aiohttp's default access log prints the request line,
        # query string included (a "query:<name>" source puts the key there).
        kwargs.setdefault("access_log_class", AccessLogger)
        # A proxy drops the upstream exchange when its client leaves (nginx's
        # proxy_ignore_client_abort off); otherwise an abandoned request holds
        # an upstream connection and a max_connections slot until the timeout.
        kwargs.setdefault("handler_cancellation", True)
        super().__init__(app, **kwargs)

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()  # runs the app's startup: the gateway exists
        # aiohttp builds the Server itself; ours differs only in the protocol it
        # instantiates, and web.Server has no __slots__.
        server.__class__ = KeygateServer
        assert isinstance(server, KeygateServer)
        server.ids = RequestIds()
        gw = self.app.get(gateway_key)
        if gw is not None and gw.settings.server.fast_path and gw.session is not None:
            pool = getattr(gw.session.connector, "upstream_pool", None)
            if pool is not None:
                access = self._kwargs.get("access_log", access_logger)
                server.edge = Edge(gw, pool, server.new_handler, access, server.ids)
        return server
