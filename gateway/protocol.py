"""Our HTTP server protocol: aiohttp's, with refusals of malformed requests as JSON.

aiohttp answers parser errors (bad framing, oversized heads) with a text/plain
body that quotes the offending input and logs a traceback. A quoted header may
be a credential, so we answer with SPEC's JSON error, a fixed message, and log
one line naming only the kind of error.
"""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMethod, LineTooLong
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from .errors import BadRequest, HeadersTooLarge, KeygateError, TooLarge

log = logging.getLogger("keygate.protocol")


class UriTooLong(KeygateError):
    status = 414
    default_code = "uri_too_long"
    default_message = "The request line is too long."


def error_for(status: int, exc: BaseException | None) -> KeygateError:
    if isinstance(exc, LineTooLong):
        # RFC 9110 §15.5.15 / RFC 6585 §5: a long request line is 414, a long
        # header 431.
        if "status line" in str(exc).lower() or "request line" in str(exc).lower():
            return UriTooLong()
        return HeadersTooLarge()
    if exc is not None and "too many headers" in str(exc).lower():
        return HeadersTooLarge()
    if status == 413:
        return TooLarge()
    if status == 400 or exc is not None:
        return BadRequest("The request is not valid HTTP.")
    return KeygateError()


class KeygateRequestHandler(RequestHandler):
    __slots__ = ()

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            raise ConnectionError("Response is sent already; the connection is dropped.")
        error = error_for(status, exc)
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
        response.force_close()
        return response


class KeygateServer(web.Server):
    def __call__(self) -> RequestHandler:
        return KeygateRequestHandler(self, loop=self._loop, **self._kwargs)


class KeygateRunner(web.AppRunner):
    """An AppRunner whose connections use :class:`KeygateRequestHandler`."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # aiohttp builds the Server itself; ours differs only in the handler
        # class it instantiates, and web.Server has no __slots__.
        server.__class__ = KeygateServer
        return server
