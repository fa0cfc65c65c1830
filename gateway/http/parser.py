"""aiohttp's request parser, made to answer the requests before a bad byte.

See :class:`RecoveringParser`; the edge (``keygate.gateway.http.edge``)
behaves the same way by construction, and the parity suite holds them to it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httptools
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.streams import EMPTY_PAYLOAD
from aiohttp.web_protocol import RequestHandler, _ErrInfo


class _Boundaries:
    """httptools callbacks: how many messages are begun and not yet complete,
    and the targets of those begun in the current read (the first one may
    have begun before it)."""

    __slots__ = ("open", "targets")

    def __init__(self) -> None:
        self.open = 0
        self.targets: list[bytearray] = []

    def on_message_begin(self) -> None:
        self.open += 1
        self.targets.append(bytearray())

    def on_url(self, url: bytes) -> None:
        target = self.targets[-1]
        if len(target) < _TARGET_KEPT:
            target += url[: _TARGET_KEPT - len(target)]

    def on_message_complete(self) -> None:
        self.open -= 1

    def next_read(self) -> None:
        """Forget the targets of messages a read completed; keep an open one's."""
        targets = self.targets
        if targets:
            self.targets = targets[-1:] if self.open else []


class _Inert:
    """A protocol for the trial parsers of :class:`RecoveringParser`: reads nothing."""

    def pause_reading(self) -> None:
        pass

    def resume_reading(self, resume_parser: bool = True) -> None:
        pass


_AFTER_CLOSE = "Data after `Connection: close`"
# How much of a refused request's target is kept: enough to see whether it is
# forward-auth's endpoint (its parser refusals follow nginx_compat).
_TARGET_KEPT = 1024
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

    def __init__(
        self,
        inner: Any,
        fresh: Any,
        protocol: RequestHandler,
        on_refused: Callable[[str], None] | None = None,
    ) -> None:
        self._inner = inner
        self._fresh = fresh  # (protocol, ...) -> a new parser like inner
        self._protocol = protocol
        # Told the target of a request refused, when known (:meth:`_refused`).
        self._on_refused = on_refused
        self._boundaries = _Boundaries()
        self._shadow: httptools.HttpRequestParser | None = httptools.HttpRequestParser(
            self._boundaries
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def feed_data(self, data: bytes) -> Any:
        shadow = self._shadow
        boundaries = self._boundaries
        at_boundary = shadow is not None and boundaries.open == 0
        if shadow is not None:
            boundaries.next_read()
            try:
                shadow.feed_data(data)
            except (httptools.HttpParserError, httptools.HttpParserUpgrade):
                self._shadow = None  # no more boundaries known: aiohttp's rules from here
        try:
            return self._inner.feed_data(data)
        except HttpProcessingError as exc:
            known = shadow is not None  # this read's targets, up to any bad byte
            if not at_boundary or len(data) > _RECOVER_MAX:
                self._refused(known, 0, certain=False)
                raise
            messages = self._complete_requests(data)
            self._refused(known, len(messages), certain=True)  # the one after those answered
            if not messages:
                raise
            if not str(exc.message).startswith(_AFTER_CLOSE):
                messages.append((_ErrInfo(status=400, exc=exc, message=exc.message), EMPTY_PAYLOAD))
            return messages, False, b""

    def _refused(self, known: bool, index: int, *, certain: bool) -> None:
        """Tell ``on_refused`` the target of the request refused: the message
        ``index`` of those this read began (or continued); when not
        ``certain`` which one it is, only if this read holds no other."""
        targets = self._boundaries.targets
        if self._on_refused is None or not known or len(targets) <= index:
            return
        if certain or len(targets) == 1:
            self._on_refused(targets[index].decode("latin-1"))

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
