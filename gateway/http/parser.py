"""aiohttp's request parser, made to answer the requests before a bad byte.

See :class:`RecoveringParser`; the edge (``keygate.gateway.http.edge``)
behaves the same way by construction, and the parity suite holds them to it.
"""

from __future__ import annotations

from typing import Any

import httptools
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.streams import EMPTY_PAYLOAD
from aiohttp.web_protocol import RequestHandler, _ErrInfo


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
