"""The server glue: aiohttp's runner and connection handler, keygate's way.

aiohttp answers parser errors (bad framing, oversized heads) with a text/plain
body that quotes the offending input and logs a traceback. A quoted header may
be a credential, so we answer with the JSON error, a fixed message, and log
one line naming only the kind of error.

:class:`FrontDoor` decides, per accepted connection, whether it starts on the
edge protocol or on aiohttp's handler.

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

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMethod, LineTooLong
from aiohttp.http_parser import HttpRequestParser
from aiohttp.log import access_logger
from aiohttp.web_protocol import RequestHandler, RequestPayloadError
from aiohttp.web_request import BaseRequest

from keygate.config.settings import ServerSettings, Settings
from keygate.gateway import forwardauth
from keygate.gateway.errors import BadRequest, HeadersTooLarge, KeygateError, TooLarge
from keygate.gateway.http.accesslog import AccessLogger
from keygate.gateway.http.edge.protocol import EdgeProtocol
from keygate.gateway.http.edge.server import Edge
from keygate.gateway.http.parser import RecoveringParser
from keygate.gateway.request.headers import X_REQUEST_ID, RequestIds
from keygate.gateway.state import Gateway, gateway_key, pool_key, request_ids_key

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


def handler_limits(server: ServerSettings) -> dict[str, float | int]:
    """aiohttp's connection handler options the server settings set (a reload
    gives new connections new ones: :meth:`FrontDoor.reconfigure`)."""
    return {
        # aiohttp arms this timer at connection start and re-arms it after
        # each response; partial data does not reset it, so it is also the
        # deadline for a complete request head (slowloris).
        "keepalive_timeout": server.header_timeout,
        # After a refusal aiohttp reads and discards the rest of the body
        # (so closing does not reset the answer away) for up to this long;
        # a body that stalls is bounded here as when it is forwarded.
        "lingering_time": min(10.0, server.body_idle_timeout),
        "max_line_size": server.max_line_bytes,
        "max_field_size": server.max_header_bytes,
        "max_headers": server.max_header_count,
    }


class KeygateRequestHandler(RequestHandler):
    """aiohttp's connection handler, answering malformed requests with the JSON
    error and reading past a bad byte as the edge does (:class:`RecoveringParser`)."""

    __slots__ = ("_field_limit", "_gw", "_ids", "_line_limit", "refused_target")

    def __init__(
        self, *args: Any, ids: RequestIds, gw: Gateway | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self._ids = ids
        self._gw = gw
        # The target of the request the parser refused, when it could tell
        # (RecoveringParser): forward-auth's refusals follow nginx_compat.
        self.refused_target: str | None = None
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

        # Duck-typed: every parser method aiohttp calls is the wrapped one's.
        self._parser = RecoveringParser(  # type: ignore[assignment]
            self._parser, fresh, self, self._note_refused
        )

    def _note_refused(self, target: str) -> None:
        if self.refused_target is None:  # the first refusal is the one answered
            self.refused_target = target

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
        target = self.refused_target
        if target is not None and self._gw is not None and 400 <= error.status < 500:
            error = forwardauth.parser_refusal(self._gw, target, error)
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
            status=error.status,
            body=error.body(),
            content_type="application/json",
            headers=error.headers,
        )
        # An X-Request-Id on every response, even one to a request too
        # malformed to have had its own read (docs/reference.md#forwarding).
        response.headers[X_REQUEST_ID] = self._ids.new()
        response.force_close()
        return response


class Handlers:
    """Makes aiohttp's connection handlers, as aiohttp's own ``web.Server``
    does (from its ``_loop`` and ``_kwargs``), but keygate's class."""

    def __init__(self, server: web.Server, ids: RequestIds, gw: Gateway | None = None) -> None:
        self._server = server
        self._ids = ids
        self._gw = gw

    def __call__(self) -> RequestHandler:
        server = self._server
        return KeygateRequestHandler(
            server, ids=self._ids, gw=self._gw, loop=server._loop, **server._kwargs
        )


class FrontDoor:
    """What a listening socket makes for each connection it accepts.

    With the edge on (``server.fast_path``), a connection starts on the edge
    protocol, which hands it to aiohttp's handler when a request is not its
    own; otherwise aiohttp's handler takes it from the start. Composed around
    the ``web.Server`` aiohttp built for the app: everything else is that
    server's.
    """

    def __init__(self, server: web.Server, handlers: Handlers, edge: Edge | None) -> None:
        self.server = server
        self.new_handler = handlers
        self.edge = edge

    def __call__(self) -> asyncio.Protocol:
        edge = self.edge
        if edge is None or edge.closing:
            return self.new_handler()
        return EdgeProtocol(edge)

    def reconfigure(self, settings: Settings) -> None:
        """New connections get the limits of ``settings`` (a reload); open ones
        keep theirs."""
        self.server._kwargs.update(handler_limits(settings.server))
        if self.edge is not None:
            self.edge.reconfigure(settings)

    def pre_shutdown(self) -> None:
        self.server.pre_shutdown()
        if self.edge is not None:
            self.edge.pre_shutdown()

    async def shutdown(self, timeout: float | None = None) -> None:  # noqa: ASYNC109 - aiohttp's
        if self.edge is None:
            await self.server.shutdown(timeout)
            return
        await asyncio.gather(self.server.shutdown(timeout), self.edge.shutdown(timeout))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.server, name)


class KeygateRunner(web.AppRunner):
    """An AppRunner whose connections use :class:`KeygateRequestHandler`, and the
    edge protocol (:mod:`keygate.gateway.http.edge`) for plain proxied requests."""

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
        app = self.app
        ids = app.get(request_ids_key) or RequestIds()
        gw = app.get(gateway_key)
        handlers = Handlers(server, ids, gw)
        edge = None
        if gw is not None and gw.settings.server.fast_path and pool_key in app:
            access = self._kwargs.get("access_log", access_logger)
            edge = Edge(gw, app[pool_key], handlers, access, ids)
        # Everything aiohttp asks of its server, the front door answers.
        return FrontDoor(server, handlers, edge)  # type: ignore[return-value]
