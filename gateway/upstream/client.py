"""``https://`` upstreams (and WebSocket upgrades): aiohttp's client behind the same
:class:`~keygate.gateway.upstream.exchange.Answer` as the pooled plain-http road.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Final

import aiohttp
import yarl
from aiohttp import hdrs

from keygate.gateway.errors import UpstreamUnavailable
from keygate.gateway.request.body import RequestBody
from keygate.gateway.request.headers import Pairs
from keygate.gateway.upstream.exchange import (
    Answer,
    is_bodiless,
    mapped_errors,
    response_headers,
)
from keygate.gateway.upstream.head import CHUNKED

# aiohttp's client adds these when absent; a proxy sends only what the client
# sent (an unasked Accept-Encoding would get the client a gzip body).
SKIP_AUTO_HEADERS: Final = frozenset(
    {hdrs.ACCEPT, hdrs.ACCEPT_ENCODING, hdrs.USER_AGENT, hdrs.CONTENT_TYPE}
)


class ClientAnswer(Answer):
    """An answer from aiohttp's client (``https://`` upstreams)."""

    __slots__ = ("response",)

    def __init__(
        self, response: aiohttp.ClientResponse, method: str, request_body: RequestBody | None
    ) -> None:
        headers, length = response_headers(list(response.raw_headers))
        super().__init__(
            response.status,
            response.reason,
            headers,
            length,
            is_bodiless(method, response.status),
            request_body,
        )
        self.response = response

    @property
    def arrived(self) -> bool:
        return self.response.content.is_eof()

    def whole_body(self) -> bytes | None:
        if self.bodiless:
            return b""
        content = self.response.content
        with mapped_errors(self.request_body):
            error = content.exception()
            if error is not None:
                raise error
            return content.read_nowait() if self.whole else None

    async def chunks(self) -> AsyncIterator[bytes]:
        content = self.response.content
        while True:
            with mapped_errors(self.request_body):
                chunk = await content.readany()
            if not chunk:
                return
            yield chunk

    def close(self) -> None:
        response = self.response
        if response.content.is_eof() and (self.request_body is None or self.request_body.sent):
            response.release()  # fully read: the connection goes back to aiohttp's pool
        else:
            response.close()


def upstream_session(*, keepalive_timeout: float = 15.0) -> aiohttp.ClientSession:
    """The aiohttp client for ``https://`` upstreams and WebSocket upgrades.

    Per request, :func:`open_https_answer` passes what it can (no redirects,
    no decompression, no auto headers, the route's timeout); what only a
    session can hold is set here: a cookie jar that keeps nothing (upstream
    cookies belong to each client, never to the gateway), no connection limit
    (the route gates bound concurrency), no default timeout, no proxy
    environment.
    """
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=keepalive_timeout),
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        skip_auto_headers=SKIP_AUTO_HEADERS,
        timeout=aiohttp.ClientTimeout(total=None),
        trust_env=False,
    )


async def open_https_answer(
    session: aiohttp.ClientSession,
    url: yarl.URL,
    method: str,
    pairs: Pairs,
    body: RequestBody | None,
    timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109 - the route's, passed to aiohttp's client
) -> ClientAnswer:
    """Send a request through aiohttp's client; wait for the response head.

    The framing is keygate's here too: a body of declared length goes with
    that Content-Length, any other chunked (aiohttp's client chunks a stream).
    """
    if body is not None and body.length != CHUNKED:
        pairs = [*pairs, (hdrs.CONTENT_LENGTH, str(body.length))]
    with mapped_errors(body):
        response = await session.request(
            method,
            url,
            headers=pairs,
            data=body,
            allow_redirects=False,  # 3xx pass through with Location untouched
            compress=None,
            auto_decompress=False,  # gzip bodies pass through byte for byte
            skip_auto_headers=SKIP_AUTO_HEADERS,
            timeout=timeout,
        )
    if response.status == 101:
        # Upgrade is hop-by-hop and was not sent: a 101 here is bogus.
        response.close()
        raise UpstreamUnavailable()
    return ClientAnswer(response, method, body)
